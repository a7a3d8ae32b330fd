"""Chunked-prefill settings and the planner (rule: fast; measured sweep: real engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec
from aot_vllm.chunked_prefill import (
    Workload,
    chunked_prefill_settings,
    plan_chunked_prefill,
    rule_plan,
)


def test_settings_validate_and_apply() -> None:
    s = chunked_prefill_settings(max_num_batched_tokens=512, max_num_seqs=16)
    spec = s.apply(CompileSpec())
    assert spec.chunked_prefill and spec.max_num_batched_tokens == 512 and spec.max_num_seqs == 16
    assert s.engine_kwargs() == {
        "enable_chunked_prefill": True,
        "max_num_batched_tokens": 512,
        "max_num_seqs": 16,
    }
    with pytest.raises(SpecError, match="below max_model_len"):
        chunked_prefill_settings(enabled=False, max_num_batched_tokens=256, max_model_len=512)
    with pytest.raises(SpecError, match="below max_num_seqs"):
        chunked_prefill_settings(max_num_batched_tokens=8, max_num_seqs=16)
    with pytest.raises(SpecError, match="needs chunked_prefill"):
        chunked_prefill_settings(enabled=False, long_prefill_token_threshold=64)


def test_workloads() -> None:
    w = Workload.from_prompts([[1] * 10, [2] * 300, "abc"], max_new_tokens=5)
    assert w.prompt_lengths == (10, 300, 3) and w.output_lengths == (5, 5, 5)
    d = Workload.from_distribution(
        num_requests=10, prompt_mean=100, prompt_max=1000, output_mean=20
    )
    assert len(d.prompt_lengths) == 10 and max(d.prompt_lengths) <= 1000
    assert sum(d.prompt_lengths) / 10 == pytest.approx(100, rel=0.1)
    with pytest.raises(SpecError):
        Workload(prompt_lengths=(), output_lengths=())


def test_rule_plan_is_documented_and_sensible() -> None:
    short = rule_plan(Workload.from_prompts([[1] * 20] * 4, max_new_tokens=8))
    assert short.method == "rule" and not short.measurements
    assert short.max_num_seqs == 4 and short.max_num_batched_tokens == 256
    long = rule_plan(Workload(prompt_lengths=(3000,) * 100, output_lengths=(50,) * 100))
    assert long.max_num_seqs == 128 and long.max_num_batched_tokens == 4096
    off = rule_plan(Workload(prompt_lengths=(100, 5000), output_lengths=(10, 10)), enabled=False)
    assert off.max_num_batched_tokens >= 5010
    assert "budget" in long.rationale and "rule" in long.describe()
    # The plan always yields valid settings.
    long.settings().apply(CompileSpec())


def test_measure_needs_a_model() -> None:
    with pytest.raises(SpecError, match="needs the model"):
        plan_chunked_prefill(Workload.from_prompts([[1, 2]]), measure=True)


@pytest.mark.slow
def test_measured_sweep_runs_the_engine(tiny_model: Path, store: Path) -> None:
    workload = Workload.from_prompts(
        [[(i * 7) % 200 + 1 for i in range(n)] for n in (120, 30, 60)], max_new_tokens=8
    )
    spec = CompileSpec(
        compile_mode="none",
        cuda_graphs=False,
        max_model_len=256,
        cache_dir=str(store),
        backend_options={"kv_cache_memory_bytes": 64 << 20},
    )
    plan = plan_chunked_prefill(
        workload, measure=True, model=tiny_model, spec=spec, budgets=(64, 256)
    )
    assert plan.method == "measured sweep"
    assert [p.max_num_batched_tokens for p in plan.measurements] == [64, 256]
    assert all(p.total_tokens_per_s > 0 and p.wall_s > 0 for p in plan.measurements)
    assert plan.max_num_batched_tokens in (64, 256)
    assert "measured" in plan.rationale and "tok/s" in plan.describe()
