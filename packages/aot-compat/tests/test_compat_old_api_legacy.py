"""The old pattern with ``use_vllm_native=False`` where both backends can run.

Where only legacy can run, test_compat_old_api.py already runs it on legacy; here the point
is that the flag picks legacy even though vLLM is available. One legacy compile serves the
module.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aot_compat import BackendFallbackWarning, LegacyConfigWarning
from aot_core import OptimizationStats
from engines.shared import create_enhanced_compiler

pytestmark = pytest.mark.slow

PROMPTS = [list(b"Hello"), list(b"World")]


@pytest.fixture(scope="module")
def legacy_run(
    tiny_model_dir: Path, unusable: dict[str, str | None]
) -> Iterator[tuple[Any, Any, list[Any], list[warnings.WarningMessage]]]:
    if unusable["legacy"] is not None or unusable["vllm"] is not None:
        pytest.skip(
            "needs both backends usable; the single-backend runs are in test_compat_old_api"
        )
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiler = create_enhanced_compiler(enable_cuda_graphs=True, use_vllm_native=False)
        compiled_model = compiler.compile_model_aot(
            str(tiny_model_dir),
            (torch.tensor(PROMPTS),),
            {"max_seq_len": 128, "gpu_memory_utilization": 0.9},
        )
    outputs = compiled_model.generate(PROMPTS, max_tokens=8)
    yield compiler, compiled_model, outputs, list(caught)
    compiler.close()


def test_flag_picks_legacy_without_a_fallback_warning(legacy_run: Any) -> None:
    compiler, _, _, caught = legacy_run
    assert type(compiler).__name__ == "EnhancedAOTCompiler"
    assert compiler.backend_id == "legacy"
    assert not [w for w in caught if w.category is BackendFallbackWarning]


def test_vllm_only_key_is_reported_on_legacy(legacy_run: Any) -> None:
    _, _, _, caught = legacy_run
    messages = [str(w.message) for w in caught if w.category is LegacyConfigWarning]
    assert any("gpu_memory_utilization" in m and "legacy backend" in m for m in messages)


def test_generates_and_reports_stats(legacy_run: Any) -> None:
    compiler, compiled_model, outputs, _ = legacy_run
    assert [list(o.prompt_token_ids) for o in outputs] == PROMPTS
    assert all(1 <= len(o.token_ids) <= 8 for o in outputs)
    stats = compiler.get_optimization_stats()
    assert stats["backend"] == "legacy"
    assert stats["vllm_available"] is False
    assert isinstance(stats.optimization_stats, OptimizationStats)
    assert compiled_model.stats.backend == "legacy"
