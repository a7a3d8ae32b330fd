"""The old chunked-prefill helper: its settings become CompileSpec fields, nothing is lost."""

from __future__ import annotations

import warnings

import pytest
from aot_compat import LegacyConfigWarning, translate
from engines.shared.vllm_chunked_prefill import (
    VLLMChunkedPrefillConfig,
    VLLMChunkedPrefillOptimizer,
)


def test_config_translates_to_spec_fields() -> None:
    config = VLLMChunkedPrefillConfig(long_prefill_token_threshold=64, max_num_batched_tokens=512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = translate(config.to_config()).spec
    assert spec.chunked_prefill is True
    assert spec.long_prefill_token_threshold == 64
    assert spec.max_num_batched_tokens == 512


def test_old_partial_prefill_values_warn() -> None:
    config = VLLMChunkedPrefillConfig(max_num_partial_prefills=4, max_long_partial_prefills=2)
    with pytest.warns(LegacyConfigWarning, match="partial prefills") as record:
        translate(config.to_config())
    assert len(record) == 2


def test_chunking_off() -> None:
    config = VLLMChunkedPrefillConfig(enable_chunked_prefill=False)
    assert translate(config.to_config()).spec.chunked_prefill is False


def test_to_engine_args_is_deprecated_and_drops_partial_prefills_loudly() -> None:
    config = VLLMChunkedPrefillConfig(max_num_partial_prefills=4)
    with pytest.warns(DeprecationWarning), pytest.warns(LegacyConfigWarning):
        args = config.to_engine_args()
    assert "max_num_partial_prefills" not in args
    assert args["enable_chunked_prefill"] is True


def test_optimizer_decides_by_threshold() -> None:
    opt = VLLMChunkedPrefillOptimizer(VLLMChunkedPrefillConfig(long_prefill_token_threshold=8))
    assert not opt.should_enable_for_model([[1] * 4, [2] * 8])
    assert opt.should_enable_for_model([[1] * 9])
    assert opt.should_enable_for_model([[1] * 2], {"max_tokens_est": 100})
    stats = opt.get_statistics()
    assert stats["current_threshold"] == 8
    assert stats["sequences_analyzed"] == 4
    merged = opt.get_vllm_engine_config({"tensor_parallel_size": 1})
    assert merged["tensor_parallel_size"] == 1
    assert merged["long_prefill_token_threshold"] == 8


def test_removed_wrapper_explains() -> None:
    import engines.shared.vllm_chunked_prefill as module

    with pytest.raises(AttributeError, match="resolved_config"):
        module.VLLMChunkedModelWrapper  # noqa: B018


def test_plan_uses_aot_vllm_planner(installed: set[str]) -> None:
    opt = VLLMChunkedPrefillOptimizer()
    if "vllm" not in installed:
        with pytest.raises(ImportError, match="pip install aot-vllm"):
            opt.plan([[1] * 10])
        return
    from engines.shared import plan_chunked_prefill

    plan = opt.plan([[1] * 300, [2] * 20], max_new_tokens=8)
    direct = plan_chunked_prefill(
        __import__("aot_vllm").Workload.from_prompts([[1] * 300, [2] * 20], max_new_tokens=8)
    )
    assert plan == direct
    assert plan.max_num_batched_tokens >= plan.max_num_seqs


def test_old_threshold_guess_is_deprecated() -> None:
    opt = VLLMChunkedPrefillOptimizer(VLLMChunkedPrefillConfig(long_prefill_token_threshold=5))
    with pytest.warns(DeprecationWarning, match="plan"):
        assert opt.analyze_dataset_for_optimal_threshold([{"max_tokens_est": 9000}]) == 5
