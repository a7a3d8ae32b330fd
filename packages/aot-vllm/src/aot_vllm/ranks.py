"""Each rank of a multi-process start, from its own evidence: which process was which rank,
what that process compiled or loaded, how long it took, how much memory it held.

Every worker process writes to the start's log capture (``vllm_logs``) with its pid. vLLM's
``init_distributed_environment`` logs "world_size=N rank=R local_rank=L" in each, which maps
pids to ranks; each rank's cache verdict comes from its own lines: vLLM's (graph or AOT
artifact loaded, compiled, failed to load) and Inductor's and AOTAutograd's ("fx graph cache
hit for key ..."), which are the only ones on CPU, where all compiled code is Inductor's.
A start with several ranks is a hit only when every rank's evidence says hit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aot_core.stats import CacheOutcome, RankStats

from aot_vllm import evidence
from aot_vllm.parallel import World
from aot_vllm.vllm_logs import LogRecordLine, first, last

RANK_LINE = r"world_size=(\d+) rank=(\d+) local_rank=(\d+)"
FX_HIT = r"fx graph cache hit for key (\S+)"
FX_MISS = r"fx graph cache miss for key (\S+)"
AUTOGRAD_HIT = r"AOTAutograd cache hit for key (\S+)"
AUTOGRAD_MISS = r"AOTAutograd cache miss for key (\S+)"
WARMUP_START = r"Warming up model for the compilation"
WARMUP_DONE = r"Warming up done"
VLLM_RANK_DIR = "rank_{rank}_0"


@dataclass(frozen=True, kw_only=True)
class RankReading:
    """One rank as its process showed it."""

    stats: RankStats
    """Its pid, cache verdict, compile time and peak memory."""

    files: tuple[str, ...]
    """The entry's files (relative to ``files/``) this rank compiled or loaded."""


def rank_pids(records: Sequence[LogRecordLine]) -> dict[int, int]:
    """pid -> global rank, from each worker's "world_size=N rank=R" line."""
    out: dict[int, int] = {}
    for record in records:
        found = first([record], RANK_LINE)
        if found is not None:
            out[record.pid] = int(found[1].group(2))
    return out


def rank_pids_from_titles(titles: Mapping[int, str], world: World) -> dict[int, int]:
    """pid -> global rank from vLLM's worker titles ("VLLM::Worker_PP1_TP0"), which every
    release sets; the fallback where the "rank=R" line is logged at debug only (<=0.11.0)."""
    out: dict[int, int] = {}
    for pid, title in titles.items():
        if "::Worker" not in title:
            continue
        tp = re.search(r"_TP(\d+)", title)
        pp = re.search(r"_PP(\d+)", title)
        tp_rank = int(tp.group(1)) if tp else 0
        pp_rank = int(pp.group(1)) if pp else 0
        if (tp or world.tensor_parallel_size == 1) and (pp or world.pipeline_parallel_size == 1):
            out[pid] = pp_rank * world.tensor_parallel_size + tp_rank
    return out


def _all(records: Sequence[LogRecordLine], pattern: str) -> list[str]:
    out = []
    for record in records:
        found = first([record], pattern)
        if found is not None:
            out.append(found[1].group(1))
    return out


def rank_cache(records: Sequence[LogRecordLine], *, load_time_s: float | None) -> CacheOutcome:
    """One rank's verdict from its own log lines (vLLM's first, then Inductor's)."""
    listed = list(records)
    failure = evidence.aot_load_failure(listed)
    if failure is not None:
        return CacheOutcome(status="miss", reason=f"its AOT artifact failed to load: {failure[1]}")
    if first(listed, evidence.AOT_LOADED) is not None:
        return CacheOutcome(status="hit", reason="AOT artifact loaded", load_time_s=load_time_s)
    graph_loaded = first(listed, evidence.GRAPH_LOADED) is not None
    graph_compiled = first(listed, evidence.GRAPH_COMPILED) is not None
    fx_hits, fx_misses = _all(listed, FX_HIT), _all(listed, FX_MISS)
    if graph_compiled or fx_misses:
        what = f"{len(fx_misses)} Inductor graph(s)" if fx_misses else "vLLM graph(s)"
        return CacheOutcome(status="miss", reason=f"compiled {what}")
    if graph_loaded or fx_hits:
        what = (
            f"{len(fx_hits)} Inductor graph(s) loaded from the FX-graph cache, none compiled"
            if fx_hits
            else "vLLM loaded its compiled graphs"
        )
        return CacheOutcome(status="hit", reason=what, load_time_s=load_time_s)
    return CacheOutcome(status="unknown", reason="its process logged no compile-cache line")


def rank_compile_time(records: Sequence[LogRecordLine]) -> float | None:
    """Seconds the rank spent compiling or loading: vLLM's own figure, else its warm-up."""
    listed = list(records)
    for pattern in (evidence.TORCH_COMPILE_TOTAL, evidence.COMPILATION_IN_INIT):
        value = evidence.logged_number(listed, pattern)
        if value is not None and value > 0:
            return value
    start, done = first(listed, WARMUP_START), last(listed, WARMUP_DONE)
    if start is not None and done is not None and done[0].time >= start[0].time:
        return round(done[0].time - start[0].time, 4)
    return None


def rank_files(
    records: Sequence[LogRecordLine], rank: int, present: Sequence[str]
) -> tuple[str, ...]:
    """Files (relative to ``files/``) of this rank: the Inductor and AOTAutograd entries its
    lines name by key, and vLLM's own ``rank_<r>_0`` directory."""
    listed = list(records)
    keys = {*_all(listed, FX_HIT), *_all(listed, FX_MISS)}
    autograd = {*_all(listed, AUTOGRAD_HIT), *_all(listed, AUTOGRAD_MISS)}
    prefixes = [f"inductor{os.sep}fxgraph{os.sep}{k[1:3]}{os.sep}{k}{os.sep}" for k in keys]
    prefixes += [f"inductor{os.sep}aotautograd{os.sep}{k}{os.sep}" for k in autograd]
    own_dir = f"{os.sep}{VLLM_RANK_DIR.format(rank=rank)}{os.sep}"
    return tuple(
        sorted(
            rel
            for rel in present
            if any(rel.startswith(p) for p in prefixes)
            or (rel.startswith(f"vllm{os.sep}") and own_dir in rel)
        )
    )


def read_ranks(
    records: Sequence[LogRecordLine],
    world: World,
    *,
    peaks: Mapping[int, int],
    present: Sequence[str],
    titles: Mapping[int, str] | None = None,
) -> tuple[RankReading, ...]:
    """Every rank of ``world`` with its own evidence (a rank no process claimed: unknown)."""
    pids = {**rank_pids_from_titles(titles or {}, world), **rank_pids(records)}
    by_rank = {rank: pid for pid, rank in pids.items()}
    out = []
    for rank in range(world.size):
        pid = by_rank.get(rank)
        own = [r for r in records if r.pid == pid] if pid is not None else []
        tp_rank, pp_rank = world.coords(rank)
        compile_s = rank_compile_time(own)
        cache = (
            rank_cache(own, load_time_s=compile_s)
            if pid is not None
            else CacheOutcome(status="unknown", reason="no process logged this rank")
        )
        files = rank_files(own, rank, present)
        stats = RankStats(
            rank=rank,
            tensor_parallel_rank=tp_rank,
            pipeline_parallel_rank=pp_rank,
            pid=pid,
            cache=cache,
            compile_time_s=compile_s,
            peak_memory_bytes=peaks.get(pid) if pid is not None else None,
            files=files,
        )
        out.append(RankReading(stats=stats, files=files))
    return tuple(out)


def combined_outcome(ranks: Sequence[RankStats], entry: CacheOutcome) -> CacheOutcome:
    """The start's verdict: a hit only when every rank's own evidence says hit."""
    if not ranks:
        return entry
    statuses = {r.cache.status for r in ranks}
    detail = "; ".join(f"rank {r.rank}: {r.cache.describe()}" for r in ranks)
    if statuses == {"hit"}:
        load = max((r.cache.load_time_s or 0.0) for r in ranks) or entry.load_time_s
        return CacheOutcome(
            status="hit",
            reason=f"every rank ({len(ranks)}) loaded its compiled code: {detail}",
            load_time_s=load,
            path=entry.path,
        )
    if "miss" in statuses:
        missed = ", ".join(str(r.rank) for r in ranks if r.cache.status == "miss")
        prefix = "" if entry.status != "miss" else f"{entry.reason}; "
        return CacheOutcome(
            status="miss",
            reason=f"{prefix}rank(s) {missed} compiled: {detail}",
            path=entry.path,
        )
    return CacheOutcome(
        status=entry.status,
        reason=f"{entry.reason}; per rank: {detail}" if entry.reason else detail,
        load_time_s=entry.load_time_s,
        path=entry.path,
    )


def describe_death(
    gone: Mapping[int, float], pids: Mapping[int, int], world: World, *, t_start: float
) -> str:
    """Which rank's process exited first while the engine was starting, as one sentence;
    "" when no rank's process is known to have exited."""
    dead = sorted((t, pid) for pid, t in gone.items() if pid in pids)
    if not dead:
        return ""
    t, pid = dead[0]
    rank = pids[pid]
    tp_rank, pp_rank = world.coords(rank)
    return (
        f"rank {rank} (tensor-parallel rank {tp_rank}, pipeline stage {pp_rank}, pid {pid}) "
        f"exited {t - t_start:.1f} s into the start, before the engine failed"
    )
