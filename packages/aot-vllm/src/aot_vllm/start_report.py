"""What a started engine showed, and the ``OptimizationStats`` made from it.

``read_start`` gathers everything observable once ``vllm.LLM`` has returned (vLLM's log
records, the cache entry's files and the counters before and after, the configuration
the engine resolved) into a ``StartReading``; ``start_stats`` turns a setup and a
reading into stats, and ``manifest_extra`` into the cache entry's record for later starts.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aot_core.artifacts import RankRecord, rank_records
from aot_core.stats import CacheOutcome, OptimizationStats

from aot_vllm import engine_env, evidence, ranks
from aot_vllm.cache import OpenedEntry, Snapshot
from aot_vllm.engine import RunningEngine
from aot_vllm.ranks import RankReading
from aot_vllm.readback import read_resolved_config, resolution_notes
from aot_vllm.start_setup import EngineSetup
from aot_vllm.vllm_logs import LogRecordLine


@dataclass(frozen=True, kw_only=True)
class Launch:
    """A started engine, and what was recorded just before it started."""

    running: RunningEngine
    """The engine."""

    opened: OpenedEntry
    """The cache entry as found (absent, intact or refused) and its earlier record."""

    compile_cache: engine_env.CompileCacheChoice
    """The compile cache the engine was pointed at."""

    engine_env: dict[str, str]
    """Every variable set for the engine (besides the log capture's)."""

    before: Snapshot
    """The entry's files before the start."""

    counters_before: evidence.Counters | None
    """In-process counters before the start (None: the engine is another process)."""

    t_engine: float
    """Wall-clock time ``vllm.LLM(...)`` was called."""

    t_ready: float
    """Wall-clock time it returned."""


@dataclass(frozen=True, kw_only=True)
class StartReading:
    """What one start showed: timings, the cache verdict, what vLLM resolved."""

    launch: Launch
    """The start this reading is of."""

    records: tuple[LogRecordLine, ...]
    """vLLM's log records of the start."""

    phases: dict[str, float]
    """Start-up phases in seconds (import, engine_setup, model_load, compile_warmup, ...)."""

    compile_s: float | None
    """Compile (or compiled-code load) time; None without compilation."""

    outcome: CacheOutcome
    """Hit, miss, disabled or unknown, with the evidence."""

    aot_failure: str | None
    """vLLM's reason when it logged that its AOT artifact failed to load."""

    resolved: dict[str, Any]
    """What the engine resolved (``readback.read_resolved_config``)."""

    counters: dict[str, int]
    """Counters that moved during the start (in-process engines only)."""

    kv_cache_tokens: int | None
    """KV-cache capacity in tokens, from the engine's config or its log line."""

    peak_memory: int
    """Peak RSS of this process and its children during the start, in bytes."""

    counters_after: evidence.Counters | None = None
    """In-process counters after the start (None when the engine ran in another process)."""

    ranks: tuple[RankReading, ...] = ()
    """Each rank's own evidence, for a model split over several processes."""


def read_start(
    setup: EngineSetup,
    launch: Launch,
    *,
    records: Sequence[LogRecordLine],
    peak_memory: int,
    peaks_by_pid: Mapping[int, int] | None = None,
    titles: Mapping[int, str] | None = None,
) -> StartReading:
    """Read the start back: phases, compile time, cache verdict, resolved configuration."""
    request = setup.request
    counters_after = evidence.read_counters() if setup.inline else None
    compiles = setup.engine_spec.compiles
    phases = evidence.startup_phases(
        records, t_start=request.t_start, t_imported=setup.t_imported, t_ready=launch.t_ready
    )
    compile_s = _compile_time(records, phases, compiles)
    ev = evidence.StartEvidence(
        compiles=compiles,
        cache_disabled=engine_env.compile_cache_disabled(),
        entry_state=launch.opened.state,
        entry_problem=launch.opened.problem,
        path=str(request.entry.path),
        before=launch.before,
        after=request.entry.snapshot(),
        records=records,
        counters_before=launch.counters_before,
        counters_after=counters_after,
    )
    failure = evidence.aot_load_failure(records)
    outcome = evidence.decide_cache_outcome(ev, load_time_s=compile_s if compiles else None)
    per_rank: tuple[RankReading, ...] = ()
    if setup.world.size > 1:
        per_rank = ranks.read_ranks(
            records,
            setup.world,
            peaks=peaks_by_pid or {},
            present=sorted(ev.after),
            titles=titles,
        )
        if outcome.status not in ("disabled",):
            outcome = ranks.combined_outcome([r.stats for r in per_rank], outcome)
    return StartReading(
        launch=launch,
        records=tuple(records),
        phases=phases,
        compile_s=compile_s,
        ranks=per_rank,
        outcome=outcome,
        aot_failure=failure[1] if failure is not None else None,
        resolved=read_resolved_config(launch.running.llm),
        counters=evidence.counter_deltas(launch.counters_before, counters_after),
        counters_after=counters_after,
        kv_cache_tokens=_kv_cache_tokens(launch.running.llm, records),
        peak_memory=peak_memory,
    )


def start_stats(setup: EngineSetup, reading: StartReading) -> OptimizationStats:
    """The stats of a start: versions, device, compile mode and time, cache, memory, phases."""
    resolved, launch = reading.resolved, reading.launch
    sizes, graph_note = _cuda_graphs(setup, resolved)
    torch = sys.modules.get("torch")
    return OptimizationStats(
        backend="vllm",
        backend_version=setup.translation.vllm_version,
        torch_version=str(getattr(torch, "__version__", "")),
        device=device_name(setup.is_cpu),
        compile_mode=_compile_mode_label(resolved),
        compile_time_s=reading.compile_s,
        cache=reading.outcome,
        cuda_graph_sizes=sizes,
        cuda_graph_capture_time_s=evidence.logged_number(reading.records, evidence.GRAPH_CAPTURE),
        cuda_graphs_note=graph_note,
        peak_host_memory_bytes=reading.peak_memory or None,
        kv_cache_tokens=reading.kv_cache_tokens,
        startup_s=round(launch.t_ready - setup.request.t_start, 4),
        startup_phases=reading.phases,
        resolved_config={
            **resolved,
            "cache_path": launch.compile_cache.cache.value,
            "engine_process": "inline" if setup.inline else "subprocess",
            "cache_entry": str(setup.request.entry.path),
            "engine_start_s": round(launch.t_ready - launch.t_engine, 4),
            "counters": reading.counters,
            "compile_warmup_split": evidence.compile_warmup_split(
                launch.counters_before,
                reading.counters_after,
                reading.phases.get("compile_warmup"),
            ),
            **_parallel_config(setup),
        },
        start_config=setup.start_config,
        notes=_notes(setup, reading),
        ranks=tuple(r.stats for r in reading.ranks),
    )


def _parallel_config(setup: EngineSetup) -> dict[str, Any]:
    """The world and how its ranks were placed (nothing for a single process)."""
    if setup.world.size == 1:
        return {}
    bind = setup.threads_bind
    return {
        "tensor_parallel_size": setup.world.tensor_parallel_size,
        "pipeline_parallel_size": setup.world.pipeline_parallel_size,
        "distributed_executor_backend": setup.llm_kwargs.get("distributed_executor_backend"),
        "cpu_threads_bind": None if bind is None else bind.value,
        "cpu_threads_bind_chosen_by": None if bind is None else bind.chosen_by,
    }


def manifest_ranks(setup: EngineSetup, reading: StartReading) -> tuple[RankRecord, ...]:
    """Each rank's files, for the cache entry's manifest (paths as the manifest has them)."""
    return rank_records(r.stats for r in reading.ranks)


def _notes(setup: EngineSetup, reading: StartReading) -> tuple[str, ...]:
    notes = [*setup.request.notes, *setup.notes]
    if reading.launch.compile_cache.note:
        notes.append(reading.launch.compile_cache.note)
    if reading.aot_failure is not None:
        notes.append(f"AOT artifact failed to load: {reading.aot_failure}")
    # Where vLLM resolved something else than the spec asked (the CPU backend's mode 2, no
    # CUDA graphs, ...): the read-back module knows why.
    notes.extend(n for n in resolution_notes(setup.engine_spec, reading.resolved) if n not in notes)
    return tuple(notes)


def manifest_extra(setup: EngineSetup, reading: StartReading) -> dict[str, Any]:
    """The cache entry's record of this start, read by later starts of the entry."""
    version = setup.translation.vllm_version
    extra = dict(reading.launch.opened.extra)
    extra.update(
        {
            "vllm_version": version,
            "cache_path": reading.launch.compile_cache.cache.value,
            "last_outcome": reading.outcome.describe(),
        }
    )
    if reading.aot_failure is not None:
        extra["aot_load_failure"] = {"vllm_version": version, "reason": reading.aot_failure}
    return extra


def device_name(is_cpu: bool) -> str:
    """The device the engine runs on, for stats and the cache manifest."""
    if is_cpu:
        return "cpu"
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return f"cuda:0 ({torch.cuda.get_device_name(0)})"
    except Exception:
        pass
    return "accelerator"


def _compile_time(
    records: Sequence[LogRecordLine], phases: Mapping[str, float], compiles: bool
) -> float | None:
    if not compiles:
        return None
    for pattern in (evidence.TORCH_COMPILE_TOTAL, evidence.COMPILATION_IN_INIT):
        value = evidence.logged_number(records, pattern)
        if value is not None and value > 0:
            return value
    return phases.get("compile_warmup")


def _kv_cache_tokens(llm: Any, records: Sequence[LogRecordLine]) -> int | None:
    vllm_config = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    cache_config = getattr(vllm_config, "cache_config", None)
    blocks = getattr(cache_config, "num_gpu_blocks", None)
    block_size = getattr(cache_config, "block_size", None)
    if isinstance(blocks, int) and isinstance(block_size, int) and blocks > 0:
        return blocks * block_size
    logged = evidence.logged_number(records, evidence.KV_TOKENS)
    return int(logged) if logged is not None else None


def _cuda_graphs(setup: EngineSetup, resolved: Mapping[str, Any]) -> tuple[tuple[int, ...], str]:
    """The captured sizes, and why there are none when there are none."""
    graph_mode = resolved.get("cudagraph_mode")
    sizes = tuple(resolved.get("cudagraph_capture_sizes") or ())
    if setup.is_cpu:
        return (), "disabled: vLLM's CPU backend has no CUDA graphs"
    if not setup.engine_spec.cuda_graphs:
        return sizes, "disabled by the spec (cuda_graphs = false)"
    if graph_mode in (None, "NONE"):
        return (), f"disabled by vLLM: cudagraph_mode resolved to {graph_mode}"
    return sizes, ""


def _compile_mode_label(resolved: Mapping[str, Any]) -> str:
    mode_name = resolved.get("mode_name") or resolved.get("mode")
    backend = resolved.get("compile_backend")
    return f"{mode_name} ({backend})" if backend and resolved.get("mode") else str(mode_name)
