"""The old calling pattern, unchanged, on the backend this install combination provides.

    compiler = create_enhanced_compiler(enable_cuda_graphs=True)
    compiled_model = compiler.compile_model_aot(model, inputs, config)
    outputs = compiled_model.generate(prompts, max_tokens=8)
    stats = compiler.get_optimization_stats()

One real compile (and, on vLLM, one engine) serves the whole module.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aot_compat import BackendFallbackWarning, LegacyConfigWarning
from aot_core import GenerationParams, OptimizationStats
from aot_core.models.tiny import TINY
from engines.shared import create_enhanced_compiler

pytestmark = pytest.mark.slow

# "Hello" and "World": the tiny model's tokenizer is byte-level, so bytes are token ids.
PROMPTS = [list(b"Hello"), list(b"World")]
MAX_TOKENS = 8

# What old callers passed: a dict with keys the old vLLM wrapper read. The KV-cache size is a
# vLLM setting (the legacy backend warns it has no effect there); without it vLLM on CPU
# reserves a fraction of the node's memory, too much for a shared 2-core test machine.
OLD_CONFIG = {
    "tensor_parallel_size": 1,
    "max_seq_len": 128,
    "max_seq_len_to_capture": 8192,
    "kv_cache_memory_bytes": 64 << 20,
}


@dataclass
class OldRun:
    compiler: Any
    compiled_model: Any
    outputs: list[Any]
    stats: Any
    warnings: list[warnings.WarningMessage]
    model: str


@pytest.fixture(scope="module")
def old_run(tiny_model_dir: Path, expected_default: str | None) -> Iterator[OldRun]:
    if expected_default is None:
        pytest.skip("no backend can run here; test_compat_choice checks the error path")
    import torch

    # The model as old evaluation scripts held it: a transformers model loaded from disk
    # (test_compat_snippet.py compiles the same one again, and an in-memory one). Where
    # transformers is missing the path itself is what the old call gets.
    model: Any = str(tiny_model_dir)
    if importlib.util.find_spec("transformers") is not None:
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(tiny_model_dir, torch_dtype="float32").eval()
    inputs = (torch.tensor(PROMPTS),)  # old callers handed over a tuple of input-id tensors
    config = dict(OLD_CONFIG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # --- the old code, verbatim ---
        compiler = create_enhanced_compiler(enable_cuda_graphs=True)
        compiled_model = compiler.compile_model_aot(model, inputs, config)
        # ------------------------------
    outputs = compiled_model.generate(PROMPTS, max_tokens=MAX_TOKENS)
    stats = compiler.get_optimization_stats()
    run = OldRun(
        compiler=compiler,
        compiled_model=compiled_model,
        outputs=outputs,
        stats=stats,
        warnings=list(caught),
        model=str(tiny_model_dir),  # what identifies it: the directory it was loaded from
    )
    yield run
    compiler.close()


def test_runs_on_the_expected_backend(old_run: OldRun, expected_default: str) -> None:
    names = {"vllm": "VLLMNativeAOTCompiler", "legacy": "EnhancedAOTCompiler"}
    assert type(old_run.compiler).__name__ == names[expected_default]
    assert old_run.compiler.backend_id == expected_default


def test_warnings_say_what_happened(
    old_run: OldRun, unusable: dict[str, str | None], expected_default: str
) -> None:
    config_warnings = [w for w in old_run.warnings if w.category is LegacyConfigWarning]
    assert any("max_seq_len_to_capture" in str(w.message) for w in config_warnings)
    fallbacks = [w for w in old_run.warnings if w.category is BackendFallbackWarning]
    if expected_default == "vllm":
        assert not fallbacks
    else:
        assert len(fallbacks) == 1
        assert str(unusable["vllm"]) in str(fallbacks[0].message)


def test_generation(old_run: OldRun) -> None:
    assert len(old_run.outputs) == len(PROMPTS)
    for prompt, out in zip(PROMPTS, old_run.outputs, strict=True):
        assert isinstance(out, str)  # old callers got strings
        assert list(out.prompt_token_ids) == prompt
        assert 0 < len(out.token_ids) <= MAX_TOKENS
        assert all(0 <= t < TINY.vocab_size for t in out.token_ids)
        assert out.finish_reason in ("length", "stop")


def test_greedy_generation_is_repeatable(old_run: OldRun) -> None:
    again = old_run.compiled_model.generate(PROMPTS, max_tokens=MAX_TOKENS)
    assert [o.token_ids for o in again] == [o.token_ids for o in old_run.outputs]


def test_same_tokens_as_the_backend_api(old_run: OldRun) -> None:
    direct = old_run.compiled_model.compiled.generate(
        PROMPTS, GenerationParams(max_new_tokens=MAX_TOKENS)
    )
    assert [g.token_ids for g in direct] == [o.token_ids for o in old_run.outputs]


def test_old_stats_dict(old_run: OldRun, expected_default: str) -> None:
    stats = old_run.stats
    assert stats["backend"] == expected_default
    assert stats["vllm_available"] is (expected_default == "vllm")
    assert stats["total_models"] == 1
    assert stats["compilation_config"]["max_model_len"] == 128
    typed = stats.optimization_stats
    assert isinstance(typed, OptimizationStats)
    assert typed.backend == expected_default
    assert stats["compile_time_s"] == typed.compile_time_s
    assert stats["cache"]["status"] in ("hit", "miss", "disabled", "unknown")


def test_recompiling_the_same_model_reuses_it(old_run: OldRun) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyConfigWarning)
        again = old_run.compiler.compile_model_aot(old_run.model, None, dict(OLD_CONFIG))
    assert again is old_run.compiled_model
    # the old compile_model(model, example_inputs, model_id, **config) reaches the same model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyConfigWarning)
        same = old_run.compiler.compile_model(old_run.model, None, None, **OLD_CONFIG)
    assert same is old_run.compiled_model
    info = old_run.compiler.get_model_info(old_run.model)
    assert info["backend"] == old_run.compiler.backend_id
    assert "max_seq_len_to_capture" in " ".join(info["config_notes"])


def test_generate_accepts_old_keyword_styles(old_run: OldRun) -> None:
    out = old_run.compiled_model.generate(PROMPTS[:1], {"max_tokens": 2, "temperature": 0.0})
    assert len(out[0].token_ids) <= 2
    with pytest.raises(TypeError, match="unknown keyword 'max_length'"):
        old_run.compiled_model.generate(PROMPTS, max_length=3)


def test_cuda_graphs_where_cuda_exists(old_run: OldRun) -> None:
    import torch

    typed = old_run.stats.optimization_stats
    if not torch.cuda.is_available():
        assert typed.cuda_graph_sizes == ()  # enable_cuda_graphs=True cannot capture on CPU
        assert typed.cuda_graphs_note, "stats must say why CUDA graphs are off"
        pytest.skip("no CUDA device: checked that the stats say why graphs are off")
    if old_run.compiler.backend_id == "legacy":
        assert typed.cuda_graph_sizes, f"no CUDA graphs captured: {typed.cuda_graphs_note}"


def test_results_pickle(old_run: OldRun) -> None:
    import pickle

    out = old_run.outputs[0]
    back = pickle.loads(pickle.dumps(out))
    assert back == out
    assert back.token_ids == out.token_ids


def test_close_releases_the_model(old_run: OldRun) -> None:
    old_run.compiler.close()
    assert old_run.compiled_model.closed
    assert old_run.compiler.get_optimization_stats()["total_models"] == 0
    with pytest.raises(RuntimeError, match="closed"):
        old_run.compiled_model.generate(PROMPTS)
