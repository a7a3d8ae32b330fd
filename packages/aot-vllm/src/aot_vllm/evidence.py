"""Reading a start: which phases took how long, and whether compiled code came from cache.

The verdict uses every kind of evidence there is, strongest first: vLLM's own log lines
(AOT artifact loaded, or failed to load and why), in-process counters (vLLM's
``compilation_counter`` and Inductor's FX-graph cache counters, live only when the
engine runs in this process), and the cache directory before and after the start (new
compiled files mean something was compiled). It never guesses: with no evidence the
status is "unknown".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aot_core.stats import CacheOutcome

from aot_vllm.cache import Snapshot, compiled_files, written_files
from aot_vllm.vllm_logs import LogRecordLine, first, last

# Log lines, as vLLM has spelled them across releases (see the package README).
AOT_LOADED = r"Directly load AOT compilation from path (\S+)"
AOT_LOAD_FAILED = (
    r"(?:Compiling model again due to a load failure from (?P<p1>\S+), reason: (?P<r1>.*)"
    r"|Cannot load aot compilation from path (?P<p2>\S+), error: (?P<r2>.*))"
)
GRAPH_LOADED = r"Directly load the compiled graph\(s\)"
GRAPH_COMPILED = r"Compiling a graph for"
CACHE_DISABLED = r"torch\.compile cache is disabled"
TORCH_COMPILE_TOTAL = r"torch\.compile (?:takes|took) ([\d.]+) s in total"
INIT_ENGINE = r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+)"
COMPILATION_IN_INIT = r"\(compilation: ([\d.]+) s\)"
KV_TOKENS = r"KV cache size: ([\d,]+) tokens"
GRAPH_CAPTURE = r"Graph capturing finished in ([\d.]+) secs"

# (pattern, phase that starts at the first record matching it)
PHASE_MARKERS: tuple[tuple[str, str], ...] = (
    (r"Starting to load model|Loading model from scratch|Loading weights", "model_load"),
    (
        r"Warming up model for the compilation|Starting torch\.compile|"
        r"Dynamo bytecode transform time|Directly load AOT|Compiling model again|"
        r"Using cache directory: .* for vLLM's torch\.compile",
        "compile_warmup",
    ),
    (
        r"Warming up done|Available KV cache memory|for KV cache on node|"
        r"KV cache memory: ",
        "kv_cache",
    ),
    (r"Capturing CUDA graph|Graph capturing finished", "cuda_graphs"),
    (INIT_ENGINE, "engine_ready"),
)


@dataclass(frozen=True, kw_only=True)
class Counters:
    """Compilation counters read in this process before or after a start."""

    vllm: Mapping[str, int] = field(default_factory=dict)
    """vLLM's ``compilation_counter`` fields."""

    inductor: Mapping[str, int] = field(default_factory=dict)
    """torch._dynamo ``counters['inductor']`` and ``counters['aot_autograd']``."""

    compile_seconds: Mapping[str, float] = field(default_factory=dict)
    """Seconds torch spent so far in ``_compile.compile_inner`` (Dynamo's whole compile of a
    frame) and ``OutputGraph.call_user_compiler`` (the backend: vLLM's Inductor compile, or
    its load from the cache), summed from ``torch._dynamo.utils.compilation_time_metrics``."""


@dataclass(frozen=True, kw_only=True)
class StartEvidence:
    """Everything observed around one engine start."""

    compiles: bool
    """The spec asked for compilation at all."""

    cache_disabled: bool
    """vLLM's compile cache was switched off by configuration."""

    entry_state: str
    """absent, intact or refused (see ``cache.OpenedEntry``)."""

    entry_problem: str
    """Why a refused entry was refused."""

    path: str
    """The cache entry directory."""

    before: Snapshot
    """Cache files before the start."""

    after: Snapshot
    """Cache files after the start."""

    records: Sequence[LogRecordLine]
    """vLLM log records emitted during the start."""

    counters_before: Counters | None
    """In-process counters before the start (None when the engine is another process)."""

    counters_after: Counters | None
    """In-process counters after the start."""


def counter_deltas(before: Counters | None, after: Counters | None) -> dict[str, int]:
    """Counters that moved during a start, as ``{"vllm.name": n, "inductor.name": n}``."""
    if before is None or after is None:
        return {}
    out: dict[str, int] = {}
    for group in ("vllm", "inductor"):
        b, a = getattr(before, group), getattr(after, group)
        for key, value in a.items():
            diff = int(value) - int(b.get(key, 0))
            if diff:
                out[f"{group}.{key}"] = diff
    return out


# compilation_time_metrics keys (torch 2.4-2.13): Dynamo's whole compile of a frame, and
# the backend call inside it.
DYNAMO_TOTAL = "_compile.compile_inner"
BACKEND_COMPILE = "OutputGraph.call_user_compiler"


def compile_warmup_split(
    before: Counters | None, after: Counters | None, compile_warmup_s: float | None
) -> dict[str, float]:
    """vLLM's compile_warmup phase as torch timed it: Dynamo tracing, the Inductor compile
    or cache load (the backend call), and the rest, which is the warm-up runs themselves.
    Empty when the engine ran in another process (torch's timers are per process) or the
    phase was not seen. vLLM on CPU logs no Dynamo or Inductor lines at INFO, so the split
    comes from torch's own timers rather than from log lines."""
    if before is None or after is None or compile_warmup_s is None:
        return {}

    def moved(key: str) -> float:
        return max(0.0, after.compile_seconds.get(key, 0.0) - before.compile_seconds.get(key, 0.0))

    total, backend = moved(DYNAMO_TOTAL), moved(BACKEND_COMPILE)
    return {
        "dynamo_trace_s": round(max(0.0, total - backend), 4),
        "inductor_compile_or_load_s": round(backend, 4),
        "warmup_runs_s": round(max(0.0, compile_warmup_s - total), 4),
    }


def _delta(before: Counters | None, after: Counters | None, group: str, name: str) -> int:
    return counter_deltas(before, after).get(f"{group}.{name}", 0)


def aot_load_failure(records: Sequence[LogRecordLine]) -> tuple[str, str] | None:
    """(artifact path, vLLM's reason) when vLLM logged that an AOT artifact failed to load."""
    found = last(list(records), AOT_LOAD_FAILED)
    if found is None:
        return None
    _, m = found
    return (m.group("p1") or m.group("p2") or "", (m.group("r1") or m.group("r2") or "").strip())


def decide_cache_outcome(ev: StartEvidence, *, load_time_s: float | None) -> CacheOutcome:
    """The cache verdict for one start, with the evidence named in the reason."""
    records = list(ev.records)
    if not ev.compiles:
        return CacheOutcome(
            status="disabled", reason="compile_mode 'none': nothing is compiled", path=ev.path
        )
    if ev.cache_disabled or first(records, CACHE_DISABLED):
        return CacheOutcome(
            status="disabled",
            reason="vLLM's compile cache is disabled (VLLM_DISABLE_COMPILE_CACHE=1)",
            path=ev.path,
        )
    refused = f"cache entry refused ({ev.entry_problem}); " if ev.entry_state == "refused" else ""
    logged = _from_log_lines(ev, records, refused, load_time_s)
    if logged is not None:
        return logged
    return _from_counters_and_files(ev, records, refused, load_time_s)


def _from_log_lines(
    ev: StartEvidence, records: list[LogRecordLine], refused: str, load_time_s: float | None
) -> CacheOutcome | None:
    """The verdict vLLM's own lines (or its AOT counter) give, if any: the strongest evidence."""
    failure = aot_load_failure(records)
    if failure is not None:
        path, reason = failure
        return CacheOutcome(
            status="miss",
            reason=f"{refused}the AOT artifact failed to load: {reason}; vLLM compiled the "
            "model again (log line 'Compiling model again due to a load failure')",
            path=path or ev.path,
        )
    loaded = first(records, AOT_LOADED)
    aot_loaded = _delta(ev.counters_before, ev.counters_after, "vllm", "num_aot_artifacts_loaded")
    if loaded is not None or aot_loaded > 0:
        # The outcome names the cache entry, whatever path vLLM read inside it, so a warm
        # start's path is the cold start's on either compile cache.
        where = f" from {loaded[1].group(1)}" if loaded is not None else ""
        return CacheOutcome(
            status="hit",
            reason=f"AOT artifact loaded{where} ("
            + ("log line 'Directly load AOT compilation'" if loaded else "vLLM counter")
            + ")",
            load_time_s=load_time_s,
            path=ev.path,
        )
    if first(records, GRAPH_LOADED) and not first(records, GRAPH_COMPILED):
        return CacheOutcome(
            status="hit",
            reason="vLLM loaded its compiled graphs from the cache (log line 'Directly load "
            "the compiled graph(s)')",
            load_time_s=load_time_s,
            path=ev.path,
        )
    return None


def _from_counters_and_files(
    ev: StartEvidence, records: list[LogRecordLine], refused: str, load_time_s: float | None
) -> CacheOutcome:
    """The verdict from Inductor's and vLLM's counters, then the entry's files."""
    fx_hit = _delta(ev.counters_before, ev.counters_after, "inductor", "fxgraph_cache_hit")
    fx_miss = _delta(ev.counters_before, ev.counters_after, "inductor", "fxgraph_cache_miss")
    aot_compiles = _delta(ev.counters_before, ev.counters_after, "vllm", "num_aot_compiles")
    had_code = bool(compiled_files(ev.before))
    written = written_files(ev.before, ev.after)
    first_compile = "first compile" if not had_code else "the cache held no matching code"
    if fx_miss > 0 or aot_compiles > 0 or first(records, GRAPH_COMPILED):
        return CacheOutcome(
            status="miss",
            reason=f"{refused}{first_compile}: compiled "
            + _counted(fx_miss, aot_compiles, len(written)),
            path=ev.path,
        )
    if fx_hit > 0:
        return CacheOutcome(
            status="hit",
            reason=f"Inductor FX-graph cache: {fx_hit} graph(s) loaded, none compiled "
            "(in-process counters)",
            load_time_s=load_time_s,
            path=ev.path,
        )
    if written:
        return CacheOutcome(
            status="miss",
            reason=f"{refused}{first_compile}: {len(written)} compiled file(s) written to the "
            "cache during start-up",
            path=ev.path,
        )
    if had_code:
        return CacheOutcome(
            status="hit",
            reason=f"no compiled file written during start-up; {len(compiled_files(ev.before))} "
            "cached file(s) reused",
            load_time_s=load_time_s,
            path=ev.path,
        )
    return CacheOutcome(
        status="unknown", reason="no log line, counter or cache file tells", path=ev.path
    )


def _counted(fx_miss: int, aot_compiles: int, written: int) -> str:
    parts = []
    if fx_miss:
        parts.append(f"{fx_miss} Inductor graph(s)")
    if aot_compiles:
        parts.append(f"{aot_compiles} AOT compile(s)")
    if written:
        parts.append(f"{written} file(s) written to the cache")
    return ", ".join(parts) or "new code"


def startup_phases(
    records: Sequence[LogRecordLine], *, t_start: float, t_imported: float, t_ready: float
) -> dict[str, float]:
    """Split a start into phases at the first log record of each phase.

    import: importing vLLM; engine_setup: config, model inspection and engine processes;
    model_load; compile_warmup: compiling or loading compiled code and the warm-up run;
    kv_cache: sizing and allocating the KV cache; cuda_graphs: capture; frontend: what
    happens after the engine reports ready. Time before a missing marker stays in the
    phase before it.
    """
    events: list[tuple[float, str]] = [(t_start, "import"), (t_imported, "engine_setup")]
    for pattern, phase in PHASE_MARKERS:
        found = first([r for r in records if r.time >= t_imported], pattern)
        if found is not None:
            events.append((found[0].time, "frontend" if phase == "engine_ready" else phase))
    events.sort()
    phases: dict[str, float] = {}
    for (t, name), (t_next, _) in zip(events, [*events[1:], (t_ready, "end")], strict=True):
        phases[name] = phases.get(name, 0.0) + max(0.0, min(t_next, t_ready) - t)
    return {k: round(v, 4) for k, v in phases.items()}


def logged_number(records: Sequence[LogRecordLine], pattern: str) -> float | None:
    """The first group of the last record matching ``pattern``, as a number."""
    found = last(list(records), pattern)
    if found is None:
        return None
    try:
        return float(found[1].group(1).replace(",", ""))
    except (ValueError, IndexError):
        return None


def read_counters() -> Counters:
    """This process's compilation counters (empty when vLLM or torch is not imported)."""
    import sys

    vllm_counts: dict[str, int] = {}
    inductor: dict[str, int] = {}
    module = sys.modules.get("vllm.compilation.counter")
    if module is None and "vllm" in sys.modules:
        try:
            import importlib

            module = importlib.import_module("vllm.compilation.counter")
        except Exception:
            module = None
    counter = getattr(module, "compilation_counter", None)
    if counter is not None:
        for name, value in vars(counter).items():
            if isinstance(value, int):
                vllm_counts[name] = value
    if "torch" in sys.modules:
        try:
            from torch._dynamo.utils import counters
        except Exception:
            counters = {}
        for group in ("inductor", "aot_autograd"):
            for name, value in dict(counters.get(group, {})).items():
                inductor[name if group == "inductor" else f"aot_autograd.{name}"] = int(value)
    return Counters(vllm=vllm_counts, inductor=inductor, compile_seconds=_compile_seconds())


def _compile_seconds() -> dict[str, float]:
    import sys

    utils = sys.modules.get("torch._dynamo.utils")
    metrics = getattr(utils, "compilation_time_metrics", None)
    if not isinstance(metrics, dict):
        return {}
    out = {}
    for key in (DYNAMO_TOTAL, BACKEND_COMPILE):
        try:
            out[key] = float(sum(metrics.get(key, ())))
        except (TypeError, ValueError):
            continue
    return out
