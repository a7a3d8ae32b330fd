"""OptimizationStats JSON round trip and the direction-aware before/after comparison."""

from __future__ import annotations

import pytest
from aot_core import CacheOutcome, OptimizationStats, RankStats, compare

BEFORE = OptimizationStats(
    backend="legacy",
    backend_version="0.1.0",
    torch_version="2.13.0+cpu",
    device="cpu",
    compile_mode="none",
    compile_time_s=20.0,
    cache=CacheOutcome(status="miss", reason="first compile"),
    peak_host_memory_bytes=400 << 20,
    output_tokens_per_s=100.0,
    prompt_tokens_per_s=1000.0,
    time_to_first_token_s=0.5,
    startup_s=30.0,
    startup_phases={"import": 5.0, "compile_warmup": 25.0},
    resolved_config={"mode": 2, "cudagraph_capture_sizes": []},
    notes=("cuda graphs disabled: no CUDA device",),
)
AFTER = BEFORE.replace(
    compile_time_s=5.0,
    cache=CacheOutcome(status="hit", reason="loaded compiled graph", load_time_s=1.5),
    peak_host_memory_bytes=300 << 20,
    output_tokens_per_s=150.0,
    time_to_first_token_s=0.5,
    startup_s=12.0,
)


def test_json_round_trip() -> None:
    assert OptimizationStats.from_json(AFTER.to_json()) == AFTER
    assert OptimizationStats.from_dict(BEFORE.to_dict()) == BEFORE


def test_per_rank_stats_round_trip() -> None:
    ranks = tuple(
        RankStats(
            rank=r,
            tensor_parallel_rank=r,
            pid=1000 + r,
            cache=CacheOutcome(status="hit", reason="1 Inductor graph loaded"),
            compile_time_s=8.0 + r,
            peak_memory_bytes=700 << 20,
        )
        for r in (0, 1)
    )
    stats = AFTER.replace(ranks=ranks)
    again = OptimizationStats.from_json(stats.to_json())
    assert again == stats
    assert again.ranks[1].cache.status == "hit" and again.ranks[1].pid == 1001
    assert stats.to_dict()["ranks"][0]["cache"]["reason"] == "1 Inductor graph loaded"


def test_unknown_fields_are_rejected() -> None:
    data = BEFORE.to_dict() | {"bogus": 1}
    with pytest.raises(ValueError, match="bogus"):
        OptimizationStats.from_dict(data)


def test_cache_status_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown cache status"):
        CacheOutcome(status="warm")  # type: ignore[arg-type]
    assert CacheOutcome(status="miss", reason="first compile").describe() == "miss (first compile)"


def test_compare_directions() -> None:
    table = compare(BEFORE, AFTER, before_label="eager", after_label="compiled")
    rows = {r.metric: r for r in table.rows}
    # lower is better for memory and times
    assert rows["peak host memory"].improved is True
    assert rows["peak host memory"].change_pct == pytest.approx(-25.0)
    assert rows["compile time"].improved is True
    assert rows["startup"].change_pct == pytest.approx(-60.0)
    # higher is better for throughput
    assert rows["output tokens/s"].improved is True
    assert rows["output tokens/s"].change_pct == pytest.approx(50.0)
    # equal values are neither better nor worse
    assert rows["time to first token"].improved is None
    assert rows["time to first token"].change_pct == 0.0
    # one-sided metrics are shown without a change
    assert rows["cache load time"].before is None and rows["cache load time"].change_pct is None
    # metrics neither side has are left out
    assert "peak device memory" not in rows


def test_compare_flags_regressions() -> None:
    rows = {r.metric: r for r in compare(AFTER, BEFORE).rows}
    assert rows["output tokens/s"].improved is False
    assert rows["peak host memory"].improved is False


def test_table_text() -> None:
    text = compare(BEFORE, AFTER, before_label="eager", after_label="compiled").format()
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "eager", "compiled", "change"]
    assert any(
        line.startswith("output tokens/s (tok/s)") and "+50.0% better" in line for line in lines
    )
    assert any(
        line.startswith("peak host memory (MiB)") and "-25.0% better" in line for line in lines
    )
    assert compare(BEFORE, AFTER).to_dict()["rows"][0]["metric"] == "peak host memory"
