"""How much KV cache a CPU engine needs, so vLLM does not claim most of the machine.

Left alone, vLLM on CPU reserves a share of the node's memory for the KV cache (4 GiB in
0.10.2-0.12, half the free memory in 0.13-0.19, ``gpu_memory_utilization`` x node memory
minus RSS from 0.20). On a shared evaluation box that starves every other process, and a
second engine refuses to start. The scheduler can never hold more than ``max_num_seqs``
sequences of ``max_model_len`` tokens, so a cache of exactly that size costs no throughput;
prefix caching may keep fewer finished prefixes around, which is the only trade.

A job that knows how many requests it sends (``aot eval``) sizes it for fewer
(``CompileSpec.kv_cache_seqs``): vLLM zeroes the whole cache at start (about 2.5 s per GiB
on this project's 2-core machines), and a cache no job can fill is paid for by every start.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.spec import CompileSpec

from aot_vllm.engine_env import EngineVar
from aot_vllm.parallel import layer_split

# vLLM's own default max_num_seqs for the LLM class on CPU, per device, in every release
# from 0.10.2 to 0.33 (EngineArgs._set_default_args / get_batch_defaults).
CPU_DEFAULT_MAX_NUM_SEQS = 256

# Sequences are rounded up to whole blocks. CPU block sizes are 16 or 128 depending on the
# release and attention backend (256 for a few); rounding to 256 over-counts a little and
# never under-counts.
_ROUND_TOKENS = 256

# Sizing above this share of physical memory is no better than vLLM's own default; leave it.
_MAX_SHARE = 0.5

_DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
    "fp8": 1,
}


@dataclass(frozen=True, kw_only=True)
class KVCacheSize:
    """A KV-cache size chosen for a CPU engine, and how it was reached."""

    nbytes: int
    """Bytes to reserve for the KV cache."""

    tokens: int
    """Token slots that many bytes hold (before vLLM rounds to whole blocks)."""

    reason: str
    """One line for the stats notes: the arithmetic behind ``nbytes``."""


def user_sized(spec: CompileSpec) -> bool:
    """True when the spec already says how big the KV cache is (then nothing is sized)."""
    options: Mapping[str, Any] = spec.backend_options
    engine_args: Mapping[str, Any] = options.get("engine_args", {}) or {}
    keys = ("kv_cache_memory_bytes", "gpu_memory_utilization", "num_gpu_blocks_override")
    if any(k in options for k in keys) or any(k in engine_args for k in keys):
        return True
    return bool(os.environ.get(EngineVar.VLLM_CPU_KVCACHE_SPACE.value))


def bytes_per_token(
    config: Mapping[str, Any],
    dtype: str,
    kv_cache_dtype: str | None,
    *,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> int | None:
    """K and V bytes one token takes over all layers of one rank (the largest pipeline stage,
    its share of the KV heads); None for a layout this cannot read."""
    config = _language_model(config)
    layers = config.get("num_hidden_layers")
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads", heads)
    if isinstance(layers, int) and layers >= pipeline_parallel_size > 1:
        layers = max(layer_split(layers, pipeline_parallel_size))
    if isinstance(kv_heads, int) and kv_heads > 0:
        # vLLM gives each rank kv_heads / tp heads, or one replicated head when tp > kv_heads.
        kv_heads = -(-kv_heads // tensor_parallel_size)
    head_dim = config.get("head_dim")
    if head_dim is None and isinstance(heads, int) and heads > 0:
        hidden = config.get("hidden_size")
        head_dim = hidden // heads if isinstance(hidden, int) else None
    # Multi-latent attention (kv_lora_rank) and state-space layers cache something else.
    if any(k in config for k in ("kv_lora_rank", "ssm_state_size", "mamba_d_state")):
        return None
    dims = [v for v in (layers, kv_heads, head_dim) if isinstance(v, int) and v > 0]
    if len(dims) != 3:
        return None
    return 2 * math.prod(dims) * _element_bytes(config, dtype, kv_cache_dtype)


def _element_bytes(config: Mapping[str, Any], dtype: str, kv_cache_dtype: str | None) -> int:
    if kv_cache_dtype and kv_cache_dtype != "auto":
        return 1 if kv_cache_dtype.startswith("fp8") else _DTYPE_BYTES.get(kv_cache_dtype, 4)
    if dtype != "auto":
        return _DTYPE_BYTES.get(dtype, 4)
    declared = config.get("torch_dtype") or config.get("dtype")
    # Unknown means float32: over-reserving is harmless, under-reserving is not.
    return _DTYPE_BYTES.get(str(declared), 4)


def cpu_kv_cache_size(
    spec: CompileSpec, model_dir: Path | None, *, total_memory: int | None = None
) -> KVCacheSize | str:
    """The KV cache ``spec`` can use on CPU, or the reason vLLM's default is kept instead."""
    if model_dir is None:
        return "the model is not a local directory, so its layer shapes were not read"
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its config.json could not be read ({exc})"
    engine_args: Mapping[str, Any] = spec.backend_options.get("engine_args", {}) or {}
    kv_dtype = engine_args.get("kv_cache_dtype")
    per_token = bytes_per_token(
        config,
        spec.dtype,
        kv_dtype if isinstance(kv_dtype, str) else None,
        tensor_parallel_size=spec.tensor_parallel_size,
        pipeline_parallel_size=spec.pipeline_parallel_size,
    )
    if per_token is None:
        return "the model's attention layout is not a plain K/V cache"
    world = spec.tensor_parallel_size * spec.pipeline_parallel_size
    limit = spec.max_num_seqs or CPU_DEFAULT_MAX_NUM_SEQS * world
    seqs, which = limit, "max_num_seqs"
    if spec.kv_cache_seqs is not None and spec.kv_cache_seqs < limit:
        seqs, which = spec.kv_cache_seqs, "kv_cache_seqs"
    length = spec.max_model_len or _declared_length(config)
    if length is None:
        return "neither the spec nor config.json gives a maximum model length"
    per_seq = math.ceil(length / _ROUND_TOKENS) * _ROUND_TOKENS
    tokens = (seqs + 1) * per_seq  # one spare sequence covers vLLM's reserved null block
    nbytes = tokens * per_token
    total = total_memory if total_memory is not None else _physical_memory()
    # kv_cache_memory_bytes is per rank: every worker process reserves that much.
    if total and nbytes * world > _MAX_SHARE * total:
        return (
            f"{seqs} sequences of {length} tokens need {_mib(nbytes * world)}, more than "
            f"half of this machine's {_mib(total)}"
        )
    per_rank = f" per rank (x {world} ranks)" if world > 1 else ""
    reason = (
        f"KV cache sized to {_mib(nbytes)}{per_rank} for {which}={seqs} x "
        f"max_model_len={length} ({per_token} bytes/token) instead of vLLM's CPU default "
        "share of memory; set backend_options.kv_cache_memory_bytes to choose"
    )
    return KVCacheSize(nbytes=nbytes, tokens=tokens, reason=reason)


def size_cpu_kv_cache(spec: CompileSpec, model_dir: Path | None) -> tuple[CompileSpec, str]:
    """``spec`` with the KV cache it can use on CPU, and a note; unchanged if the user sized it.

    The size goes in as ``backend_options.kv_cache_memory_bytes``, which the translation
    spells for the release (an argument from 0.20, ``VLLM_CPU_KVCACHE_SPACE`` before).
    """
    if user_sized(spec):
        return spec, ""
    size = cpu_kv_cache_size(spec, model_dir)
    if isinstance(size, str):
        return spec, f"KV cache left at vLLM's CPU default: {size}"
    options = {**spec.backend_options, "kv_cache_memory_bytes": size.nbytes}
    return spec.replace(backend_options=options), size.reason


def _language_model(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The config of the part that holds the KV cache (a multimodal model's text_config)."""
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def _declared_length(config: Mapping[str, Any]) -> int | None:
    config = _language_model(config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            # vLLM stretches the length by a RoPE scaling factor; follow it (never under).
            scaling = config.get("rope_scaling")
            factor = scaling.get("factor") if isinstance(scaling, Mapping) else None
            if isinstance(factor, (int, float)) and factor > 1:
                return math.ceil(value * factor)
            return value
    return None


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"
