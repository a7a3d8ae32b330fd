"""What ``aot bench`` measured, typed: runs, per-backend summaries and the whole result.

Every class is a frozen dataclass whose ``to_dict`` is the ``--json`` output's shape;
``aot bench`` builds them as it runs, prints them with ``format_report`` and writes
``BenchResult.to_dict()`` as JSON.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aot_core.stats import Comparison, OptimizationStats, compare

PHASES: tuple[str, ...] = ("cold", "warm", "eager")
"""The three starts per repeat, in the order they run (eager last: see ``aot_core.bench.run``)."""

PHASE_LABELS: Mapping[str, str] = {
    "eager": "eager",
    "cold": "AOT cold compile",
    "warm": "AOT warm start",
}

RESULT_FORMAT = 1
"""Version of the JSON result's shape."""

_MEDIAN_FIELDS = (
    "compile_time_s",
    "cuda_graph_capture_time_s",
    "peak_host_memory_bytes",
    "peak_device_memory_bytes",
    "kv_cache_tokens",
    "prompt_tokens_per_s",
    "output_tokens_per_s",
    "time_to_first_token_s",
    "startup_s",
)


@dataclass(frozen=True, kw_only=True)
class Run:
    """One fresh-process start of one backend in one phase."""

    backend: str
    """Registry name of the backend."""

    phase: str
    """"cold", "warm" or "eager"."""

    repeat: int
    """Which repeat (from 1)."""

    ok: bool
    """Whether the start finished and reported a result."""

    error: str = ""
    """Why it failed (with the last lines of its log); empty when ok."""

    wall_s: float | None = None
    """Seconds from launching the process to its exit (None when it never ran)."""

    log: str | None = None
    """The process's log file, while the work directory exists."""

    result: Mapping[str, Any] | None = None
    """What the worker printed: stats, timings, tokens, notes (None when it failed)."""

    @property
    def stats(self) -> OptimizationStats | None:
        """The worker's stats, when it succeeded."""
        return OptimizationStats.from_dict(self.result["stats"]) if self.result else None

    @property
    def tokens(self) -> Any:
        """The generated token ids per prompt, when it succeeded."""
        return self.result["tokens"] if self.result else None

    def to_dict(self) -> dict[str, Any]:
        """The run as it appears in the JSON result."""
        out: dict[str, Any] = {"backend": self.backend, "phase": self.phase}
        if self.log is not None:
            out["log"] = self.log
        if self.wall_s is not None:
            out["wall_s"] = self.wall_s
        out["ok"] = self.ok
        if self.error:
            out["error"] = self.error
        if self.result is not None:
            out["result"] = self.result
        out["repeat"] = self.repeat
        return out


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A run that failed, as listed at the end of the report."""

    backend: str
    """Registry name of the backend."""

    phase: str
    """Which start failed."""

    repeat: int
    """In which repeat."""

    error: str
    """Why."""

    def to_dict(self) -> dict[str, Any]:
        """The failure as it appears in the JSON result."""
        return {
            "backend": self.backend,
            "phase": self.phase,
            "repeat": self.repeat,
            "error": self.error,
        }


@dataclass(frozen=True, kw_only=True)
class BackendSummary:
    """Everything measured for one backend: its runs, medians, comparisons and verdicts."""

    version: str
    """Version of the backend's distribution."""

    runs: tuple[Run, ...]
    """Every run, in the order they ran."""

    median: Mapping[str, OptimizationStats | None]
    """Per phase, stats whose numbers are medians over the phase's successful runs."""

    median_process_wall_s: Mapping[str, float | None]
    """Per phase, the median seconds from process launch to exit."""

    comparisons: Mapping[str, Comparison]
    """"eager_vs_warm", "eager_vs_cold", "cold_vs_warm" (those both sides exist for)."""

    tokens_match_eager: bool | None
    """Whether compiled greedy tokens equal eager's (None: nothing to compare)."""

    tokens_divergence: str
    """Where compiled output first departs from eager, for people; empty when it does not."""

    warm_cache: tuple[str, ...]
    """The cache outcome each warm start reported."""

    latency: Mapping[str, Mapping[str, float | None]] = dataclasses.field(default_factory=dict)
    """Per phase, medians over its runs of time to first token and per-token latency
    (p50 and p95 over the prompts, each run alone); empty when no run measured them."""

    def to_dict(self) -> dict[str, Any]:
        """The summary as it appears in the JSON result."""
        return {
            "latency": {p: dict(v) for p, v in self.latency.items()},
            "version": self.version,
            "runs": [r.to_dict() for r in self.runs],
            "median": {p: (s.to_dict() if s is not None else None) for p, s in self.median.items()},
            "median_process_wall_s": dict(self.median_process_wall_s),
            "comparisons": {k: c.to_dict() for k, c in self.comparisons.items()},
            "tokens_match_eager": self.tokens_match_eager,
            "tokens_divergence": self.tokens_divergence,
            "warm_cache": list(self.warm_cache),
        }


@dataclass(frozen=True, kw_only=True)
class ShownGeneration:
    """One prompt's greedy output on one backend as text, eager beside compiled."""

    backend: str
    """Registry name of the backend."""

    prompt: str
    """What the prompt says (the question, or the prompt's bytes)."""

    eager: str
    """The eager start's output, decoded and cut at the end-of-sequence token."""

    compiled: str
    """The first compiled start's output (the warm start's, else the cold compile's)."""

    identical: bool
    """Whether the two outputs' token ids are equal."""

    def to_dict(self) -> dict[str, Any]:
        """The generation as it appears in the JSON result."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class BenchResult:
    """One ``aot bench`` invocation: where, on what, with which settings, and the results."""

    date_utc: str
    """When it started, ISO 8601."""

    command: str
    """The command line."""

    machine: Mapping[str, Any]
    """Platform, cores, ISA, GPUs, Python, and the versions the backends pin."""

    model: str
    """The model's label ("built-in tiny Llama" or its path)."""

    model_path: str
    """The model directory."""

    settings: Mapping[str, Any]
    """Repeats, tokens, prompts, the base spec, threads."""

    backends: Mapping[str, BackendSummary]
    """Per measured backend, its summary."""

    skipped: Mapping[str, str]
    """Installed backends not measured, with why."""

    failures: tuple[Failure, ...]
    """Every failed run."""

    total_wall_s: float
    """Seconds the whole benchmark took."""

    generations: tuple[ShownGeneration, ...] = ()
    """The outputs ``--show-generations`` shows as text (empty unless asked for)."""

    format: int = RESULT_FORMAT
    """Version of the JSON shape."""

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` output."""
        return {
            "format": self.format,
            "date_utc": self.date_utc,
            "command": self.command,
            "machine": dict(self.machine),
            "model": self.model,
            "model_path": self.model_path,
            "settings": dict(self.settings),
            "backends": {n: b.to_dict() for n, b in self.backends.items()},
            "skipped": dict(self.skipped),
            "failures": [f.to_dict() for f in self.failures],
            "total_wall_s": self.total_wall_s,
            "generations": [g.to_dict() for g in self.generations],
        }


def _median(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def median_stats(runs: Sequence[Run]) -> OptimizationStats | None:
    """Stats whose numbers are medians over ``runs`` (descriptive fields from the first)."""
    stats = [s for r in runs if r.ok and (s := r.stats) is not None]
    if not stats:
        return None
    first = stats[0]
    changes: dict[str, Any] = {}
    for name in _MEDIAN_FIELDS:
        value = _median([getattr(s, name) for s in stats])
        if value is not None and name.endswith(("_bytes", "_tokens")):
            value = round(value)
        changes[name] = value
    phases = sorted({k for s in stats for k in s.startup_phases})
    changes["startup_phases"] = {
        k: v for k in phases if (v := _median([s.startup_phases.get(k) for s in stats])) is not None
    }
    load = _median([s.cache.load_time_s for s in stats])
    changes["cache"] = first.cache.__class__(
        status=first.cache.status,
        reason=first.cache.reason,
        load_time_s=load,
        path=first.cache.path,
    )
    return first.replace(**changes)


_COMPARISONS = (
    ("eager_vs_warm", "eager", "warm", "eager", "AOT warm"),
    ("eager_vs_cold", "eager", "cold", "eager", "AOT cold"),
    ("cold_vs_warm", "cold", "warm", "cold compile", "warm start"),
)


def summarise_backend(version: str, runs: Sequence[Run]) -> BackendSummary:
    """Medians, comparisons and the compiled-vs-eager token verdict of one backend's runs."""
    by_phase = {p: [r for r in runs if r.phase == p] for p in PHASES}
    medians = {p: median_stats(rs) for p, rs in by_phase.items()}
    tokens = {p: [r.tokens for r in rs if r.ok] for p, rs in by_phase.items()}
    reference = tokens["eager"][0] if tokens["eager"] else None
    compiled_tokens = tokens["cold"] + tokens["warm"]
    match = None
    if reference is not None and compiled_tokens:
        match = all(t == reference for t in compiled_tokens)
    comparisons = {
        key: compare(b, a, before_label=lb, after_label=la)
        for key, before, after, lb, la in _COMPARISONS
        if (b := medians[before]) is not None and (a := medians[after]) is not None
    }
    warm_cache = [s.cache for r in by_phase["warm"] if r.ok and (s := r.stats) is not None]
    return BackendSummary(
        version=version,
        runs=tuple(runs),
        median=medians,
        median_process_wall_s={
            p: _median([r.wall_s for r in rs if r.ok]) for p, rs in by_phase.items()
        },
        comparisons=comparisons,
        tokens_match_eager=match,
        tokens_divergence=divergence(reference, compiled_tokens),
        warm_cache=tuple(c.status + (f" ({c.reason})" if c.reason else "") for c in warm_cache),
        latency={p: lat for p, rs in by_phase.items() if (lat := median_latency(rs))},
    )


def median_latency(runs: Sequence[Run]) -> dict[str, float | None]:
    """Medians over ``runs`` of each latency figure the workers measured."""
    found = [r.result.get("latency") or {} for r in runs if r.ok and r.result]
    names = sorted({k for lat in found for k in lat})
    return {k: _median([lat.get(k) for lat in found]) for k in names}


def divergence(reference: Any, candidates: Sequence[Any]) -> str:
    """Where compiled greedy output first departs from eager, for people."""
    if reference is None:
        return ""
    worst = ""
    for cand in candidates:
        same = sum(a == b for a, b in zip(reference, cand, strict=False))
        for i, (a, b) in enumerate(zip(reference, cand, strict=False)):
            if a != b:
                first = next(j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
                worst = (
                    f"{same}/{len(reference)} prompts identical; prompt {i} departs at "
                    f"generated token {first} (numerics of compiled kernels can flip a near-tie "
                    "in greedy decoding)"
                )
                break
    return worst
