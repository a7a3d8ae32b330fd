"""What a compilation bought: ``OptimizationStats`` and the before/after comparison."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

CacheStatus = Literal["hit", "miss", "disabled", "unknown"]
CACHE_STATUSES: tuple[str, ...] = ("hit", "miss", "disabled", "unknown")


@dataclass(frozen=True, kw_only=True)
class CacheOutcome:
    """Whether a start reused compiled code, and the evidence for saying so."""

    status: CacheStatus = "unknown"
    """hit, miss, disabled, or unknown when there was no evidence either way."""

    reason: str = ""
    """Why: e.g. "first compile", "artifact failed to load: <vLLM's reason>"."""

    load_time_s: float | None = None
    """Seconds spent loading cached code on a hit."""

    path: str | None = None
    """The cache directory or artifact the outcome refers to."""

    def __post_init__(self) -> None:
        if self.status not in CACHE_STATUSES:
            raise ValueError(
                f"status: unknown cache status {self.status!r}; "
                f"allowed: {', '.join(CACHE_STATUSES)}"
            )

    def describe(self) -> str:
        """One line for people, e.g. "miss (artifact failed to load: ...)"."""
        return f"{self.status} ({self.reason})" if self.reason else self.status


@dataclass(frozen=True, kw_only=True)
class RankStats:
    """One rank of a model split over several processes (tensor or pipeline parallel)."""

    rank: int
    """Global rank: ``pipeline_parallel_rank * tensor_parallel_size + tensor_parallel_rank``."""

    tensor_parallel_rank: int = 0
    """Position within its tensor-parallel group."""

    pipeline_parallel_rank: int = 0
    """Pipeline stage."""

    pid: int | None = None
    """Process that ran the rank (None when it was not seen)."""

    cache: CacheOutcome = field(default_factory=CacheOutcome)
    """Whether this rank's compiled code came from the cache, from this rank's own evidence."""

    compile_time_s: float | None = None
    """Seconds this rank spent compiling or loading compiled code."""

    peak_memory_bytes: int | None = None
    """Peak resident memory of the rank's process."""

    files: tuple[str, ...] = ()
    """Files under the backend's compile cache (``spec.cache_dir``, relative paths) this
    rank compiled or loaded; what an artifact's manifest records per rank."""

    def __post_init__(self) -> None:
        if isinstance(self.cache, Mapping):
            object.__setattr__(self, "cache", CacheOutcome(**self.cache))
        object.__setattr__(self, "files", tuple(self.files))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class OptimizationStats:
    """Measured facts about one compiled model: how it was built and how fast it runs."""

    backend: str
    """Name of the backend that produced the model."""

    backend_version: str = ""
    """Version of the backend's engine (e.g. vLLM's), or of the aot package."""

    torch_version: str = ""
    """Version of torch in the process that compiled."""

    device: str = "cpu"
    """Device the model runs on, e.g. "cpu" or "cuda:0 (NVIDIA H100, sm_90)"."""

    compile_mode: str = ""
    """The compile mode actually in effect (after the backend resolved the spec)."""

    compile_time_s: float | None = None
    """Seconds spent compiling or loading compiled code (None when not compiled)."""

    cache: CacheOutcome = field(default_factory=CacheOutcome)
    """Whether compiled code came from a cache, and why."""

    cuda_graph_sizes: tuple[int, ...] = ()
    """Batch sizes CUDA graphs were captured for; empty when none were."""

    cuda_graph_capture_time_s: float | None = None
    """Seconds spent capturing CUDA graphs."""

    cuda_graphs_note: str = ""
    """Why CUDA graphs are off, when they are (e.g. "disabled: no CUDA device")."""

    peak_host_memory_bytes: int | None = None
    """Peak resident memory of the process and its engine children."""

    peak_device_memory_bytes: int | None = None
    """Peak accelerator memory allocated, where there is an accelerator."""

    kv_cache_tokens: int | None = None
    """How many tokens the KV cache holds."""

    prompt_tokens_per_s: float | None = None
    """Prompt (prefill) throughput of the last measured generate call."""

    output_tokens_per_s: float | None = None
    """Generated-token throughput of the last measured generate call."""

    time_to_first_token_s: float | None = None
    """Mean seconds from request to first generated token in the last generate call."""

    startup_s: float | None = None
    """Wall seconds from the start of compile_model to a model ready to generate."""

    startup_phases: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """Startup split into named phases (import, model_load, compile_warmup, kv_cache, ...)."""

    resolved_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Settings the engine actually resolved (mode, cudagraph mode, capture sizes, ...)."""

    start_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """What the start ran with before the engine resolved anything: dtype, max_model_len,
    batch limits, KV cache, cache entry; each {"value", "source"}, the source saying where
    it came from ("spec", "model config", "machine", a sizing rule, the engine's default)."""

    notes: tuple[str, ...] = ()
    """Warnings and fallbacks that happened on the way, in order."""

    ranks: tuple[RankStats, ...] = ()
    """Per-rank facts of a multi-process (tensor/pipeline parallel) model; empty for one."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cuda_graph_sizes", tuple(self.cuda_graph_sizes))
        object.__setattr__(
            self,
            "ranks",
            tuple(r if isinstance(r, RankStats) else RankStats(**r) for r in self.ranks),
        )
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "startup_phases", MappingProxyType(dict(self.startup_phases)))
        object.__setattr__(self, "resolved_config", MappingProxyType(dict(self.resolved_config)))
        object.__setattr__(self, "start_config", MappingProxyType(dict(self.start_config)))
        if isinstance(self.cache, Mapping):
            object.__setattr__(self, "cache", CacheOutcome(**self.cache))

    def replace(self, **changes: Any) -> OptimizationStats:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict of every field."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, CacheOutcome):
                value = dataclasses.asdict(value)
            elif f.name == "ranks":
                value = [r.to_dict() for r in value]
            elif isinstance(value, Mapping):
                value = _jsonable(dict(value))
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizationStats:
        """Rebuild stats from ``to_dict`` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown OptimizationStats fields: {', '.join(sorted(unknown))}")
        kwargs = dict(data)
        if isinstance(kwargs.get("cache"), Mapping):
            kwargs["cache"] = CacheOutcome(**kwargs["cache"])
        for name in ("cuda_graph_sizes", "notes", "ranks"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)

    def to_json(self, *, indent: int | None = 2) -> str:
        """The stats as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> OptimizationStats:
        """Parse stats from JSON text."""
        return cls.from_dict(json.loads(text))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# --------------------------------------------------------------------------- comparison

Direction = Literal["lower", "higher"]


@dataclass(frozen=True, kw_only=True)
class Metric:
    """A number that ``compare`` knows how to read off stats."""

    name: str
    """Label shown in the table."""

    attr: str
    """OptimizationStats attribute holding the value."""

    better: Direction
    """Whether lower or higher values are better."""

    unit: str = ""
    """Unit shown after values."""

    scale: float = 1.0
    """Divisor applied before display (e.g. bytes to MiB)."""


METRICS: tuple[Metric, ...] = (
    Metric(
        name="peak host memory",
        attr="peak_host_memory_bytes",
        better="lower",
        unit="MiB",
        scale=float(1 << 20),
    ),
    Metric(
        name="peak device memory",
        attr="peak_device_memory_bytes",
        better="lower",
        unit="MiB",
        scale=float(1 << 20),
    ),
    Metric(name="startup", attr="startup_s", better="lower", unit="s"),
    Metric(name="compile time", attr="compile_time_s", better="lower", unit="s"),
    Metric(name="cache load time", attr="cache_load_time_s", better="lower", unit="s"),
    Metric(name="time to first token", attr="time_to_first_token_s", better="lower", unit="s"),
    Metric(name="prompt tokens/s", attr="prompt_tokens_per_s", better="higher", unit="tok/s"),
    Metric(name="output tokens/s", attr="output_tokens_per_s", better="higher", unit="tok/s"),
    Metric(name="KV cache capacity", attr="kv_cache_tokens", better="higher", unit="tokens"),
)


@dataclass(frozen=True, kw_only=True)
class ComparisonRow:
    """One metric before and after."""

    metric: str
    """Metric label."""

    unit: str
    """Unit of ``before`` and ``after``."""

    before: float | None
    """Value before (scaled to ``unit``)."""

    after: float | None
    """Value after (scaled to ``unit``)."""

    change_pct: float | None
    """Relative change in percent, (after - before) / before * 100."""

    better: Direction
    """Which direction is an improvement for this metric."""

    improved: bool | None
    """True if after is better than before, False if worse, None if unknown or equal."""


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """A before/after table of ``OptimizationStats``."""

    before_label: str
    """Column title for the baseline."""

    after_label: str
    """Column title for the candidate."""

    rows: tuple[ComparisonRow, ...]
    """One row per metric that at least one side has."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict of the table."""
        return {
            "before_label": self.before_label,
            "after_label": self.after_label,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }

    def format(self) -> str:
        """The table as aligned text."""
        header = ("metric", self.before_label, self.after_label, "change")
        body = [
            (
                f"{r.metric} ({r.unit})" if r.unit else r.metric,
                _fmt(r.before),
                _fmt(r.after),
                _fmt_change(r),
            )
            for r in self.rows
        ]
        return format_table(header, body)

    def __str__(self) -> str:
        return self.format()


def _metric_value(stats: OptimizationStats, metric: Metric) -> float | None:
    if metric.attr == "cache_load_time_s":
        value: Any = stats.cache.load_time_s
    else:
        value = getattr(stats, metric.attr)
    return None if value is None else float(value) / metric.scale


def compare(
    before: OptimizationStats,
    after: OptimizationStats,
    *,
    before_label: str = "before",
    after_label: str = "after",
    metrics: Sequence[Metric] = METRICS,
) -> Comparison:
    """Compare two stats metric by metric, knowing which direction is better for each."""
    rows: list[ComparisonRow] = []
    for metric in metrics:
        b = _metric_value(before, metric)
        a = _metric_value(after, metric)
        if a is None and b is None:
            continue
        change = None
        improved = None
        if a is not None and b is not None:
            if b != 0:
                change = (a - b) / abs(b) * 100.0
            if a != b:
                improved = a < b if metric.better == "lower" else a > b
        rows.append(
            ComparisonRow(
                metric=metric.name,
                unit=metric.unit,
                before=b,
                after=a,
                change_pct=change,
                better=metric.better,
                improved=improved,
            )
        )
    return Comparison(before_label=before_label, after_label=after_label, rows=tuple(rows))


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _fmt_change(row: ComparisonRow) -> str:
    if row.change_pct is None:
        return "-"
    mark = "" if row.improved is None else (" better" if row.improved else " worse")
    return f"{row.change_pct:+.1f}%{mark}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Align ``rows`` under ``header`` as a plain-text table."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    sep = "  "
    lines = [sep.join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append(sep.join("-" * w for w in widths))
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append(sep.join(cells))
    return "\n".join(lines)
