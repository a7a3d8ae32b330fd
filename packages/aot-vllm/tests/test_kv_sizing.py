"""KV-cache sizing for CPU engines: the arithmetic, and when vLLM's default is kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aot_core.spec import CompileSpec
from aot_vllm import kv_sizing
from aot_vllm.kv_sizing import KVCacheSize, bytes_per_token, cpu_kv_cache_size, user_sized

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "torch_dtype": "float32",
}
GIB = 1 << 30


def _model(tmp_path: Path, **changes: Any) -> Path:
    config = {**LLAMA, **changes}
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v}))
    return tmp_path


def test_bytes_per_token_counts_k_and_v_over_layers() -> None:
    # 2 (K, V) x 2 layers x 2 kv heads x head_dim 32 x 4 bytes
    assert bytes_per_token(LLAMA, "auto", None) == 1024
    assert bytes_per_token(LLAMA, "bfloat16", None) == 512
    assert bytes_per_token(LLAMA, "float32", "fp8_e4m3") == 256
    assert bytes_per_token({**LLAMA, "head_dim": 64}, "auto", None) == 2048
    # No num_key_value_heads: plain multi-head attention.
    mha = {k: v for k, v in LLAMA.items() if k != "num_key_value_heads"}
    assert bytes_per_token(mha, "auto", None) == 2048
    assert bytes_per_token({"text_config": LLAMA}, "auto", None) == 1024


@pytest.mark.parametrize(
    "config",
    [
        {**LLAMA, "kv_lora_rank": 512},  # multi-latent attention caches a latent, not K/V
        {**LLAMA, "ssm_state_size": 16},
        {"architectures": ["Odd"], "hidden_size": 64},
    ],
)
def test_unreadable_layouts_are_not_sized(config: dict[str, Any]) -> None:
    assert bytes_per_token(config, "auto", None) is None


def test_size_covers_every_sequence_at_full_length(tmp_path: Path) -> None:
    spec = CompileSpec(max_model_len=300, max_num_seqs=4)
    size = cpu_kv_cache_size(spec, _model(tmp_path), total_memory=64 * GIB)
    assert isinstance(size, KVCacheSize)
    # 300 tokens round up to 512; one spare sequence for vLLM's reserved block.
    assert size.tokens == 5 * 512 and size.nbytes == 5 * 512 * 1024
    assert size.tokens >= 4 * 300
    assert "max_num_seqs=4 x max_model_len=300" in size.reason


def test_a_job_sized_cache_holds_its_requests_never_more_than_max_num_seqs(
    tmp_path: Path,
) -> None:
    """``aot eval`` sets kv_cache_seqs from its job's requests: 30 sequences reserve 31,
    not vLLM's 257; above max_num_seqs the scheduler's own limit wins."""
    model = _model(tmp_path)
    job = cpu_kv_cache_size(CompileSpec(kv_cache_seqs=30), model, total_memory=64 * GIB)
    assert isinstance(job, KVCacheSize) and job.tokens == 31 * 512
    assert "kv_cache_seqs=30 x max_model_len=512" in job.reason
    many = CompileSpec(max_num_seqs=4, kv_cache_seqs=30)
    capped = cpu_kv_cache_size(many, model, total_memory=64 * GIB)
    assert isinstance(capped, KVCacheSize) and capped.tokens == 5 * 512
    assert "max_num_seqs=4" in capped.reason


def test_open_fields_use_vllm_defaults_and_the_model_length(tmp_path: Path) -> None:
    size = cpu_kv_cache_size(CompileSpec(), _model(tmp_path), total_memory=64 * GIB)
    assert isinstance(size, KVCacheSize)
    assert size.tokens == (kv_sizing.CPU_DEFAULT_MAX_NUM_SEQS + 1) * 512
    scaled = _model(tmp_path, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    stretched = cpu_kv_cache_size(CompileSpec(max_num_seqs=1), scaled, total_memory=64 * GIB)
    assert isinstance(stretched, KVCacheSize) and stretched.tokens == 2 * 2048


def test_more_than_half_the_machine_keeps_vllms_default(tmp_path: Path) -> None:
    big = _model(tmp_path, num_hidden_layers=80, max_position_embeddings=131072)
    reason = cpu_kv_cache_size(CompileSpec(), big, total_memory=64 * GIB)
    assert isinstance(reason, str) and "more than half" in reason


def test_reasons_when_nothing_can_be_read(tmp_path: Path) -> None:
    assert "not a local directory" in str(cpu_kv_cache_size(CompileSpec(), None))
    assert "could not be read" in str(cpu_kv_cache_size(CompileSpec(), tmp_path))
    no_length = _model(tmp_path, max_position_embeddings=None)
    assert "maximum model length" in str(cpu_kv_cache_size(CompileSpec(), no_length))


@pytest.mark.parametrize(
    "options",
    [
        {"kv_cache_memory_bytes": 1 << 26},
        {"gpu_memory_utilization": 0.3},
        {"engine_args": {"num_gpu_blocks_override": 64}},
    ],
)
def test_a_user_choice_is_never_overridden(options: dict[str, Any]) -> None:
    assert user_sized(CompileSpec(backend_options=options))


def test_the_legacy_env_var_is_a_user_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert not user_sized(CompileSpec())
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert user_sized(CompileSpec())
