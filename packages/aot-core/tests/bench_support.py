"""Bench runs and results for aot-core's tests: made-up inputs to the report's pure
functions (real measurements come from ``aot bench`` itself)."""

from __future__ import annotations

from typing import Any

from aot_core.bench import run as bench
from aot_core.bench.run import BenchResult, Failure, Run
from aot_core.stats import CacheOutcome, CacheStatus, OptimizationStats


def record(
    phase: str,
    *,
    startup: float,
    tps: float,
    mem: int,
    tokens: Any = None,
    ok: bool = True,
    cache: CacheStatus = "hit",
) -> Run:
    """One bench run of ``phase`` with these stats (a failed run when not ``ok``)."""
    if not ok:
        return Run(backend="b", phase=phase, repeat=1, ok=False, wall_s=1.0, error="boom")
    stats = OptimizationStats(
        backend="b",
        startup_s=startup,
        compile_time_s=None if phase == "eager" else startup / 2,
        output_tokens_per_s=tps,
        peak_host_memory_bytes=mem,
        startup_phases={"import": 1.0, "compile": startup / 2},
        cache=CacheOutcome(
            status="disabled" if phase == "eager" else cache, reason="r", load_time_s=0.5
        ),
    )
    return Run(
        backend="b",
        phase=phase,
        repeat=1,
        ok=True,
        wall_s=startup + 3.0,
        result={"stats": stats.to_dict(), "tokens": tokens or [[1, 2, 3]]},
    )


def bench_result(runs: list[Run], failures: tuple[Failure, ...] = ()) -> BenchResult:
    """A whole bench result around ``runs`` of one backend ``b``."""
    return BenchResult(
        date_utc="2026-01-01T00:00:00+00:00",
        command="aot bench",
        model="tiny",
        model_path="/m",
        machine={
            "machine": "x86_64",
            "cpu_count": 2,
            "python": "3.11",
            "torch": "2.13.0",
            "vllm": None,
        },
        settings={"prompts": 4, "prompt_lengths": [5, 6], "max_new_tokens": 8, "repeats": 2},
        backends={"b": bench.summarise_backend("0.1.0", runs)},
        skipped={"other": "needs a GPU"},
        failures=failures,
        total_wall_s=42.0,
    )
