"""``aot bench``: eager vs compiled, cold vs warm, every start in a fresh process.

For each backend and repeat it runs three worker processes (``aot_core.bench.worker``):
a cold compile into a fresh artifact, a warm start from that artifact, and an eager
start. Eager goes last so that it, like the warm start, finds whatever a backend keeps
machine-wide outside its compile cache (vLLM's model-inspection results, as plain vLLM
keeps them in ~/.cache/vllm); the eager baseline is then what a user's second eager
start costs, not a first-ever start. Medians over the repeats go into before/after tables built by
``aot_core.stats.compare``; everything measured goes into the typed ``BenchResult``
(``aot_core.bench.results``), whose ``to_dict`` is the JSON output.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aot_core import artifacts
from aot_core.bench.fresh_process import one_thread_env, run_fresh
from aot_core.bench.prompts import default_prompts
from aot_core.bench.results import (
    PHASE_LABELS,
    PHASES,
    RESULT_FORMAT,
    BackendSummary,
    BenchResult,
    Failure,
    Run,
    median_stats,
    summarise_backend,
)
from aot_core.bench.text import format_generations
from aot_core.spec import CompileSpec
from aot_core.stats import compare

__all__ = [
    "BENCH_SPEC_DEFAULTS",
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_REPEATS",
    "DEFAULT_TIMEOUT_S",
    "MEASURED_CALLS",
    "PHASES",
    "PHASE_LABELS",
    "RESULT_FORMAT",
    "BackendSummary",
    "BenchResult",
    "Failure",
    "Run",
    "bench_prompts",
    "ensure_bench_model",
    "format_report",
    "median_stats",
    "plot",
    "run_bench",
    "run_worker",
    "summarise_backend",
]

# Chosen so that both backends on the tiny Llama finish within 10 minutes on 2 cores:
# a vLLM start costs 30-70 s here, so 2 repeats x 3 starts is the budget.
DEFAULT_REPEATS = 2
# Long enough that decode steps, which compilation speeds up, outweigh the prefill and the
# per-call overhead in tokens/s; 4 prompts x 128 tokens take well under a second.
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_TIMEOUT_S = 300
# Generate calls timed per start (after one untimed call); throughput is their median.
MEASURED_CALLS = 5

# The bench keeps the engine small: four prompts in one batch, short sequences (the
# command's defaults in ``resolve_start``, below what the spec sets).
BENCH_SPEC_DEFAULTS: Mapping[str, Any] = {"max_model_len": 256, "max_num_seqs": 4}


def ensure_bench_model(cache_root: Path | None = None) -> Path:
    """The built-in tiny Llama every backend is benchmarked on, written on first use.

    It lives under ``cache_root`` (the store root ``--cache-dir`` names), else the default.
    """
    from aot_core.models.tiny import ensure_tiny_llama

    return ensure_tiny_llama(cache_root)


def bench_prompts() -> list[list[int]]:
    """The fixed token-id prompts every run generates on."""
    return default_prompts()


def run_worker(
    *,
    backend: str,
    phase: str,
    model: Path,
    artifact: Path,
    spec: CompileSpec,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    timeout_s: float,
    log: Path,
    repeat: int = 1,
    cache_root: Path | None = None,
    measured_calls: int = MEASURED_CALLS,
    latency: bool = True,
) -> Run:
    """Start one worker process and return its run (ok or not); ``aot tune`` times whole
    jobs, so it asks for one measured call and no latency probes."""
    import json

    cmd = [
        sys.executable,
        "-m",
        "aot_core.bench.worker",
        "--backend",
        backend,
        "--model",
        str(model),
        "--phase",
        phase,
        "--artifact",
        str(artifact),
        "--spec-json",
        spec.to_json(indent=None),
        "--prompts-json",
        json.dumps([list(p) for p in prompts]),
        "--max-new-tokens",
        str(max_new_tokens),
        "--measured-calls",
        str(measured_calls),
        *([] if latency else ["--no-latency"]),
    ]
    # What workers and their backends keep outside the run's artifact (aot-vllm's shared
    # model-inspection results, the legacy backend's default cache) goes under cache_root.
    extra = {artifacts.CACHE_ENV_VAR: str(cache_root)} if cache_root is not None else {}
    done = run_fresh(cmd, log=log, timeout_s=timeout_s, env=one_thread_env(**extra))
    return Run(
        backend=backend,
        phase=phase,
        repeat=repeat,
        ok=done.ok,
        error=done.error,
        wall_s=done.wall_s,
        log=str(log),
        result=done.result if done.ok else None,
    )


def _machine() -> dict[str, Any]:
    from aot_core.registry import installed_backends

    # The versions every installed backend pins (torch, vLLM, ...), read by the backends.
    versions: dict[str, str | None] = {"torch": artifacts.torch_version()}
    for cls in sorted(installed_backends().values(), key=lambda c: -c.priority):
        versions.update(cls.pins())
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_isa": list(artifacts.cpu_isa()),
        "cuda_capabilities": list(artifacts.cuda_capabilities()),
        "python": platform.python_version(),
        **versions,
        "aot_core": artifacts.package_version("aot-core"),
        "bytecode_precompiled": bytecode_precompiled(),
    }


def bytecode_precompiled(packages: Sequence[str] = ("vllm", "torch")) -> dict[str, bool | None]:
    """Per package, whether its installed sources have .pyc files (None: not installed).

    Without them (PYTHONDONTWRITEBYTECODE=1, uv's default install) every process compiles
    the sources on import: `import vllm` measured 22 s instead of 8 s here, which every
    start figure then carries. Read from the files, without importing anything.
    """
    import importlib.util

    out: dict[str, bool | None] = {}
    for name in packages:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None or found.origin is None:
            out[name] = None
            continue
        out[name] = Path(importlib.util.cache_from_source(found.origin)).is_file()
    return out


@contextlib.contextmanager
def _work_dir(path: Path | None, cache_root: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    parent = None
    if cache_root is not None:
        parent = cache_root / "tmp"
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aot-bench-", dir=parent) as tmp:
        yield Path(tmp)


def _chosen_backends(
    backends: Sequence[str] | None, progress: Callable[[str], None]
) -> tuple[list[str], dict[str, str]]:
    """The backends to measure, and the installed ones skipped (with why)."""
    from aot_core.registry import get_backend, list_backends

    infos = {i.name: i for i in list_backends()}
    if backends:
        chosen = list(dict.fromkeys(backends))
        for name in chosen:
            get_backend(name)  # raises a clear error for an unknown or unusable backend
        return chosen, {}
    get_backend()  # raises NoBackendInstalledError / NoUsableBackendError
    chosen = [n for n, i in infos.items() if i.availability.usable]
    skipped = {n: i.availability.reason for n, i in infos.items() if n not in chosen}
    for name, reason in skipped.items():
        progress(f"skipping backend {name}: {reason}")
    return chosen, skipped


def run_bench(
    *,
    model: Path,
    model_label: str,
    backends: Sequence[str] | None,
    spec: CompileSpec,
    repeats: int,
    max_new_tokens: int,
    timeout_s: float,
    work_dir: Path | None,
    progress: Callable[[str], None],
    cache_root: Path | None = None,
    notes: Sequence[str] = (),
    prompts: Sequence[Sequence[int]] | None = None,
    workload: str = "",
    decode_limit: float | None = None,
    model_ready: Mapping[str, Any] | None = None,
    resolved: Mapping[str, Any] | None = None,
) -> BenchResult:
    """Run every measurement and return the result (see ``format_report``).

    ``cache_root`` (``aot --cache-dir``) holds everything the runs write outside
    ``work_dir``, which itself defaults to a temporary directory under it; the workers get
    it as ``$AOT_CACHE_DIR``. None keeps the default root and the system's temp directory.
    ``model_ready`` (a GGUF input's ``ModelReady.to_dict()``) goes into the settings.
    ``spec`` is every run's spec but for its compile mode, resolved by the command
    (``BENCH_SPEC_DEFAULTS`` applied by aot-core's ``resolve_start``); ``resolved``, that
    resolution with each value's source (``StartConfig.to_dict()``), goes into the settings.
    """
    from aot_core.registry import installed_backends

    chosen, skipped = _chosen_backends(backends, progress)
    prompts = [list(p) for p in prompts] if prompts is not None else bench_prompts()
    total = len(chosen) * repeats * len(PHASES)
    progress(
        f"benchmarking {', '.join(chosen)} on {model_label}: {repeats} repeat(s) x "
        f"{len(PHASES)} fresh-process starts each ({total} runs); per-run logs kept while running"
    )
    date = datetime.now(UTC).isoformat(timespec="seconds")
    t_all = time.perf_counter()
    summaries: dict[str, BackendSummary] = {}
    counter = _Counter(total=total, progress=progress)
    with _work_dir(work_dir, cache_root) as work:
        (work / "logs").mkdir(exist_ok=True)
        for name in chosen:
            runs = _measure_backend(
                name,
                work=work,
                repeats=repeats,
                counter=counter,
                run=lambda **kw: run_worker(
                    model=model,
                    spec=spec,
                    prompts=prompts,
                    max_new_tokens=max_new_tokens,
                    timeout_s=timeout_s,
                    cache_root=cache_root,
                    **kw,
                ),
            )
            summaries[name] = summarise_backend(installed_backends()[name].version(), runs)
    total_s = time.perf_counter() - t_all
    progress(f"done in {total_s:.0f} s")
    return BenchResult(
        date_utc=date,
        command=" ".join(["aot", *sys.argv[1:]]) if sys.argv else "aot bench",
        machine=_machine(),
        model=model_label,
        model_path=str(model),
        settings={
            "repeats": repeats,
            "max_new_tokens": max_new_tokens,
            "prompts": len(prompts),
            "prompt_lengths": [len(p) for p in prompts],
            "spec": spec.to_dict(),
            "resolved": dict(resolved) if resolved is not None else None,
            "threads": 1,
            "notes": list(notes),
            "workload": workload or "short",
            "decode_limit_tokens_per_s": decode_limit,
            "model_ready": dict(model_ready) if model_ready is not None else None,
        },
        backends=summaries,
        skipped=skipped,
        failures=tuple(
            Failure(backend=r.backend, phase=r.phase, repeat=r.repeat, error=r.error)
            for s in summaries.values()
            for r in s.runs
            if not r.ok
        ),
        total_wall_s=total_s,
    )


class _Counter:
    """Numbers the runs for progress lines: "[3/6] vllm: AOT warm start ..."."""

    def __init__(self, *, total: int, progress: Callable[[str], None]) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def start(self, name: str, phase: str, rep: int, repeats: int) -> str:
        self.done += 1
        prefix = f"[{self.done}/{self.total}] {name}: {PHASE_LABELS[phase]}"
        self.progress(f"{prefix} (repeat {rep}/{repeats}) ...")
        return prefix


def _measure_backend(
    name: str, *, work: Path, repeats: int, counter: _Counter, run: Callable[..., Run]
) -> list[Run]:
    """Every repeat's cold, warm and eager start of one backend, in that order."""
    runs: list[Run] = []
    for rep in range(1, repeats + 1):
        art = work / "artifacts" / name / f"repeat-{rep}"
        for phase in PHASES:
            prefix = counter.start(name, phase, rep, repeats)
            if phase == "warm" and not runs[-1].ok:
                # Without its cold artifact a "warm" start would be a cold one.
                record = Run(
                    backend=name,
                    phase=phase,
                    repeat=rep,
                    ok=False,
                    error="skipped: the cold compile of this repeat failed",
                )
            else:
                record = run(
                    backend=name,
                    phase=phase,
                    artifact=art.with_name(art.name + "-eager") if phase == "eager" else art,
                    log=work / "logs" / f"{name}-{phase}-{rep}.log",
                    repeat=rep,
                )
            runs.append(record)
            counter.progress(f"{prefix}: {_summary(record)}")
    return runs


def _summary(run: Run) -> str:
    if not run.ok or run.result is None:
        return f"FAILED ({run.error.splitlines()[0]})"
    stats = run.result["stats"]
    parts = [f"{run.wall_s:.1f} s in all"]
    if stats.get("startup_s") is not None:
        parts.append(f"startup {stats['startup_s']:.1f} s")
    cache = stats.get("cache") or {}
    if run.phase != "eager":
        parts.append(f"cache {cache.get('status', '?')}")
    if stats.get("output_tokens_per_s") is not None:
        parts.append(f"{stats['output_tokens_per_s']:.0f} output tok/s")
    return ", ".join(parts)


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


_TABLES = (
    ("eager_vs_warm", "eager vs AOT warm start (the saving on every later start)"),
    ("cold_vs_warm", "AOT cold compile vs warm start (what the artifact saves)"),
)


def _limit_line(b: BackendSummary, limit: float | None) -> list[str]:
    """Output tokens/s per phase beside the machine's bandwidth bound for this model."""
    if not limit:
        return []
    parts = []
    for phase in ("eager", "warm"):
        med = b.median.get(phase)
        if med is not None and med.output_tokens_per_s:
            share = med.output_tokens_per_s / limit
            parts.append(f"{PHASE_LABELS[phase]} {med.output_tokens_per_s:.0f} ({share:.0%})")
    if not parts:
        return []
    return [f"output tokens/s vs the bandwidth limit of {limit:.0f}: " + ", ".join(parts)]


def _backend_report(name: str, b: BackendSummary, limit: float | None = None) -> list[str]:
    out = ["", f"== {name} {b.version}"]
    for key, title in _TABLES:
        table = b.comparisons.get(key)
        if table is not None:
            out += [f"-- {title}", table.format()]
    wall = b.median_process_wall_s
    out.append(
        "fresh-process wall time (launch to exit): "
        + ", ".join(f"{PHASE_LABELS[p]} {_fmt_s(wall[p])}" for p in PHASES)
    )
    if b.warm_cache:
        out.append("warm-start cache: " + "; ".join(b.warm_cache))
    out += _latency_lines(b)
    out += _limit_line(b, limit)
    match = b.tokens_match_eager
    verdict = {True: "identical", False: "DIFFERENT", None: "not compared"}[match]
    if match is False and b.tokens_divergence:
        verdict += f" ({b.tokens_divergence})"
    out.append(f"greedy tokens, compiled vs eager: {verdict}")
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _latency_lines(b: BackendSummary) -> list[str]:
    """Time to first token and per-token latency, p50 / p95, per phase that measured them."""
    out = []
    for phase in PHASES:
        lat = b.latency.get(phase)
        if lat:
            out.append(
                f"latency, {PHASE_LABELS[phase]} (each prompt alone): time to first token "
                f"p50 {_ms(lat.get('ttft_p50_s'))} / p95 {_ms(lat.get('ttft_p95_s'))}; per "
                f"token p50 {_ms(lat.get('token_p50_s'))} / p95 {_ms(lat.get('token_p95_s'))}"
            )
    return out


def format_report(result: BenchResult) -> str:
    """The before/after tables and the key facts, for people."""
    m, s = result.machine, result.settings
    fixed = {
        "platform",
        "machine",
        "cpu_count",
        "cpu_isa",
        "cuda_capabilities",
        "python",
        "bytecode_precompiled",
    }
    versions = ", ".join(
        f"{k} {v or '-'}" for k, v in m.items() if k not in fixed and k != "aot_core"
    )
    out = [
        f"aot bench: {result.model}; {s['prompts']} prompts of {s['prompt_lengths']} tokens "
        f"({s.get('workload', 'short')} mix), "
        f"{s['max_new_tokens']} new tokens each; medians of {s['repeats']} fresh-process "
        "start(s)",
        f"machine: {m['machine']}, {m['cpu_count']} cores; {versions}, python {m['python']}",
    ]
    pyc = m.get("bytecode_precompiled") or {}
    if pyc:
        out.append(
            "bytecode precompiled (.pyc present): "
            + ", ".join(f"{k} {'-' if v is None else 'yes' if v else 'NO'}" for k, v in pyc.items())
        )
    out += list(s.get("notes", ()))
    out += [f"skipped {name}: {reason}" for name, reason in result.skipped.items()]
    for name, b in result.backends.items():
        out += _backend_report(name, b, s.get("decode_limit_tokens_per_s"))
    names = [n for n, b in result.backends.items() if b.median.get("warm")]
    if len(names) >= 2:
        first, second = (result.backends[n].median["warm"] for n in names[:2])
        assert first is not None and second is not None
        out += [
            "",
            f"== backends side by side (AOT warm start): {names[0]} vs {names[1]}",
            compare(first, second, before_label=names[0], after_label=names[1]).format(),
        ]
    out += format_generations(result.generations)
    if result.failures:
        out += ["", f"{len(result.failures)} run(s) FAILED:"]
        out += [f"  {f.backend} {f.phase} repeat {f.repeat}: {f.error}" for f in result.failures]
    out += ["", f"total: {result.total_wall_s:.0f} s"]
    return "\n".join(out)


def plot(result: BenchResult, path: Path) -> None:
    """Bar charts of start time and output tokens/s per backend and phase (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.backends)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(PHASES)
    panels = (
        ("fresh-process start to exit (s), lower is better", "wall"),
        ("output tokens/s, higher is better", "output_tokens_per_s"),
    )
    for ax, (title, metric) in zip(axes, panels, strict=True):
        for j, phase in enumerate(PHASES):
            values = []
            for name in names:
                b = result.backends[name]
                if metric == "wall":
                    v = b.median_process_wall_s.get(phase)
                else:
                    med = b.median.get(phase)
                    v = getattr(med, metric) if med else None
                values.append(v or 0.0)
            xs = [i + (j - 1) * width for i in range(len(names))]
            bars = ax.bar(xs, values, width, label=PHASE_LABELS[phase])
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"aot bench: {result.model} ({result.machine['machine']}, "
        f"{result.machine['cpu_count']} cores), medians of {result.settings['repeats']}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
