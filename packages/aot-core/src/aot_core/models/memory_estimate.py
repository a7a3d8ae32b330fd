"""Will a model fit here? Weights + KV cache + runtime overhead vs the memory available.

Checked before any engine starts, so a shape too big for the machine is refused with the
estimate instead of being killed by the kernel half-way through a compile. The estimate
reads only config.json (parameter count from the Llama/Qwen2 family's layer shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Resident cost of a started engine besides weights and KV cache: Python, torch, vLLM or
# transformers imported, Inductor's compile workers and buffers. Measured peaks of the
# tiny model (weights ~0) were 1.3-1.9 GiB RSS per start here; 2.5 GiB leaves headroom for
# compile-time graphs growing with depth.
RUNTIME_OVERHEAD_BYTES = int(2.5 * (1 << 30))

# A compile holds activations and graph copies beside the weights; vLLM's dummy loader and
# the legacy backend's placeholder init both materialise the weights once more while
# building the model. One extra copy of the weights covers both.
WEIGHT_COPIES = 2

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """Peak host memory one start of a model is expected to need."""

    parameters: int
    """Parameter count from config.json."""

    dtype: str
    """The dtype the estimate assumes."""

    weight_bytes: int
    """Parameters x bytes per element."""

    kv_cache_bytes: int
    """K and V for max_num_seqs sequences of max_model_len tokens, every layer."""

    overhead_bytes: int
    """Runtime overhead plus the extra weight copy a build holds."""

    available_bytes: int | None
    """MemAvailable from /proc/meminfo (None where it cannot be read)."""

    @property
    def total_bytes(self) -> int:
        """What one start is expected to need at its peak."""
        return self.weight_bytes + self.kv_cache_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool:
        """True unless the machine is known to have less memory available."""
        return self.available_bytes is None or self.total_bytes <= self.available_bytes

    def describe(self) -> str:
        """One line for people."""
        gib = 1 << 30
        avail = (
            "unknown" if self.available_bytes is None else f"{self.available_bytes / gib:.1f} GiB"
        )
        return (
            f"{self.parameters / 1e6:.{0 if self.parameters >= 10**7 else 2}f}M parameters at "
            f"{self.dtype}: weights "
            f"{self.weight_bytes / gib:.2f} GiB + KV cache {self.kv_cache_bytes / gib:.2f} GiB "
            f"+ runtime and build overhead {self.overhead_bytes / gib:.2f} GiB = "
            f"{self.total_bytes / gib:.1f} GiB needed; available here: {avail}"
        )


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a Llama-family decoder (Llama, Qwen2, Mistral) described by ``config``."""
    h = int(config["hidden_size"])
    inter = int(config["intermediate_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or h // heads)
    vocab = int(config["vocab_size"])
    q, kv = heads * head_dim, kv_heads * head_dim
    attn = h * q + 2 * h * kv + q * h
    # Qwen2 has q/k/v biases; Llama configs say attention_bias.
    if config.get("attention_bias") or config.get("model_type") == "qwen2":
        attn += q + 2 * kv
    mlp = 3 * h * inter + (2 * inter + h if config.get("mlp_bias") else 0)
    per_layer = attn + mlp + 2 * h
    head = 0 if config.get("tie_word_embeddings") else vocab * h
    return vocab * h + layers * per_layer + h + head


def kv_cache_bytes(config: dict[str, Any], *, tokens: int, dtype_bytes: int) -> int:
    """Bytes of K and V for ``tokens`` cached tokens in every layer."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    return 2 * int(config["num_hidden_layers"]) * kv_heads * head_dim * tokens * dtype_bytes


def available_memory_bytes() -> int | None:
    """MemAvailable (what can be allocated without swapping), or None off Linux."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def estimate(
    config: dict[str, Any],
    *,
    dtype: str,
    max_model_len: int,
    max_num_seqs: int,
    available: int | None = None,
) -> MemoryEstimate:
    """The peak-memory estimate of one start; ``dtype`` "auto" counts the config's dtype."""
    if dtype == "auto":
        dtype = str(config.get("torch_dtype") or "float32")
    size = _DTYPE_BYTES.get(dtype, 4)
    params = parameter_count(config)
    weights = params * size
    # One spare sequence, as aot-vllm sizes its CPU KV cache.
    kv = kv_cache_bytes(config, tokens=max_model_len * (max_num_seqs + 1), dtype_bytes=size)
    return MemoryEstimate(
        parameters=params,
        dtype=dtype,
        weight_bytes=weights,
        kv_cache_bytes=kv,
        overhead_bytes=RUNTIME_OVERHEAD_BYTES + (WEIGHT_COPIES - 1) * weights,
        available_bytes=available if available is not None else available_memory_bytes(),
    )
