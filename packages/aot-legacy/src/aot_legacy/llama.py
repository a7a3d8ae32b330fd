"""aot's own Llama-family decoder, built from ``config.json`` and loaded from safetensors.

The compiled path does not need a transformers model object: it needs the graph (which
the config decides) and the weights (which the checkpoint holds). Building the static-KV
decoder directly skips importing transformers and its ``from_pretrained`` machinery, most
of a legacy start on a small model. Parameter names are Hugging Face's
(``model.layers.0.self_attn.q_proj.weight``), so checkpoints load as they are, and the
arithmetic is the same as transformers' (RMSNorm in float32, RoPE from ``inv_freq``), so
greedy tokens equal transformers' ``generate``.

What it cannot build (another RoPE type, another activation, a field it does not know)
is reported by ``native_config`` as a reason, and the caller falls back to transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aot_legacy.decoder import (
    KVLayout,
    StaticKVDecoder,
    decoder_layers,
    gather_last,
    rope_cos_sin,
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")
"""HF ``model_type`` values with the Llama decoder-layer structure the legacy backend drives."""

_NATIVE_ROPE = ("default", "linear", "llama3")
_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)
# transformers' defaults for fields a config.json may leave out (the four config classes agree).
_DEFAULT_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768, "qwen3": 32768}


@dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """The facts of a config.json that decide the decoder's graph."""

    model_type: str
    """HF model_type (one of SUPPORTED_MODEL_TYPES)."""

    hidden_size: int
    """Width of the residual stream."""

    intermediate_size: int
    """Width of the MLP."""

    num_layers: int
    """Decoder layers."""

    num_heads: int
    """Query heads."""

    num_kv_heads: int
    """Key/value heads."""

    head_dim: int
    """Size of one head."""

    vocab_size: int
    """Logits per position."""

    max_positions: int
    """max_position_embeddings."""

    rms_norm_eps: float
    """Epsilon of every RMSNorm."""

    qkv_bias: bool
    """Whether q/k/v projections have a bias (Qwen2; Llama's attention_bias)."""

    o_bias: bool
    """Whether the output projection has a bias (Llama's attention_bias)."""

    mlp_bias: bool
    """Whether the MLP projections have a bias (Llama's mlp_bias)."""

    qk_norm: bool
    """Whether heads are RMS-normalised before RoPE (Qwen3)."""

    tie_word_embeddings: bool
    """Whether the LM head reuses the embedding matrix."""

    rope: tuple[tuple[str, Any], ...]
    """RoPE parameters (rope_type, rope_theta, and the scaling fields), sorted."""

    sliding_window: int | None
    """Attention window when the model uses one, else None."""

    initializer_range: float
    """Std of the normal init used for placeholder weights."""

    dtype: str | None
    """The dtype config.json names (``dtype``/``torch_dtype``), if any."""


def native_config(data: dict[str, Any]) -> DecoderConfig | str:
    """The decoder config of a parsed config.json, or why aot's decoder cannot build it.

    Raises ``ValueError`` naming the architecture when no Llama-family decoder (ours or
    transformers') can drive it; a returned string means "use transformers instead".
    """
    model_type = str(data.get("model_type", ""))
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = ", ".join(map(str, data.get("architectures") or [])) or "unknown architecture"
        raise ValueError(
            f"the legacy backend drives Llama-family models ({', '.join(SUPPORTED_MODEL_TYPES)}), "
            f"not {archs} (model_type {model_type!r}); use the vllm backend for this model, or "
            "wrap it as an aot_legacy.StaticKVDecoder"
        )
    missing = [k for k in _REQUIRED if not isinstance(data.get(k), int)]
    if missing:
        return f"config.json leaves out {', '.join(missing)}"
    if data.get("hidden_act", "silu") != "silu":
        return f"hidden_act {data.get('hidden_act')!r}"
    rope = _rope_parameters(data)
    if rope.get("rope_type") not in _NATIVE_ROPE:
        return f"RoPE type {rope.get('rope_type')!r}"
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        return "partial rotary embeddings"
    heads = int(data["num_attention_heads"])
    attention_bias = bool(data.get("attention_bias", False))
    uses_window = data.get("use_sliding_window", model_type == "mistral")
    dtype = data.get("dtype") or data.get("torch_dtype")
    return DecoderConfig(
        model_type=model_type,
        hidden_size=int(data["hidden_size"]),
        intermediate_size=int(data["intermediate_size"]),
        num_layers=int(data["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(data.get("num_key_value_heads") or heads),
        head_dim=int(data.get("head_dim") or int(data["hidden_size"]) // heads),
        vocab_size=int(data["vocab_size"]),
        max_positions=int(
            data.get("max_position_embeddings") or _DEFAULT_POSITIONS.get(model_type, 2048)
        ),
        rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=model_type in ("llama", "qwen3") and attention_bias,
        mlp_bias=model_type == "llama" and bool(data.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
        rope=tuple(sorted(rope.items())),
        sliding_window=(
            int(data["sliding_window"]) if uses_window and data.get("sliding_window") else None
        ),
        initializer_range=float(data.get("initializer_range", 0.02)),
        dtype=str(dtype) if isinstance(dtype, str) else None,
    )


def _rope_parameters(data: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings as transformers 5 standardises them (``standardize_rope_params``):
    ``rope_parameters`` or the older ``rope_scaling``, with the top-level ``rope_theta``
    and ``partial_rotary_factor`` as defaults."""
    given = data.get("rope_parameters")
    if not isinstance(given, dict):
        given = data.get("rope_scaling")
    out = dict(given) if isinstance(given, dict) else {}
    out.setdefault("rope_type", out.get("type", "default"))
    out.setdefault("rope_theta", data.get("rope_theta") or 10000.0)
    if data.get("partial_rotary_factor") is not None:
        out.setdefault("partial_rotary_factor", data["partial_rotary_factor"])
    if out["rope_type"] == "llama3":
        out.setdefault("original_max_position_embeddings", data.get("max_position_embeddings"))
    return out


def inverse_frequencies(cfg: DecoderConfig) -> torch.Tensor:
    """RoPE inverse frequencies as transformers computes them (default, linear, llama3)."""
    rope = dict(cfg.rope)
    dim = cfg.head_dim
    base = float(rope["rope_theta"])
    steps = torch.arange(0, dim, 2, dtype=torch.int64).float()
    inv = 1.0 / (base ** (steps / dim))
    kind = rope["rope_type"]
    if kind == "linear":
        return inv / float(rope["factor"])
    if kind != "llama3":
        return inv
    factor = float(rope["factor"])
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_len = float(rope["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def _meta(*shape: int) -> nn.Parameter:
    # Parameters start on the meta device (no memory, no init: torch.nn's initialisers
    # on meta tensors import Dynamo, 5 s here); load_weights replaces them.
    return nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False)


class Linear(nn.Module):  # type: ignore[misc]
    """``nn.Linear`` without its random initialisation (the weights are always loaded)."""

    def __init__(self, n_in: int, n_out: int, *, bias: bool) -> None:
        super().__init__()
        self.weight = _meta(n_out, n_in)
        self.bias = _meta(n_out) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):  # type: ignore[misc]
    """transformers' LlamaRMSNorm: normalise in float32, scale in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = _meta(dim)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)  # type: ignore[no-any-return]


class _Attention(nn.Module):  # type: ignore[misc]
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = Linear(h, cfg.num_heads * d, bias=cfg.qkv_bias)
        self.k_proj = Linear(h, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.v_proj = Linear(h, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.o_proj = Linear(cfg.num_heads * d, h, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)


class _MLP(nn.Module):  # type: ignore[misc]
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(h, i, bias=cfg.mlp_bias)
        self.up_proj = Linear(h, i, bias=cfg.mlp_bias)
        self.down_proj = Linear(i, h, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = nn.functional.silu(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(gated)  # type: ignore[no-any-return]


class _Layer(nn.Module):  # type: ignore[misc]
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.self_attn = _Attention(cfg)
        self.mlp = _MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Embedding(nn.Module):  # type: ignore[misc]
    """``nn.Embedding`` without its random initialisation."""

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.weight = _meta(num, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)


class _Model(nn.Module):  # type: ignore[misc]
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaFamilyDecoder(StaticKVDecoder):
    """A Llama/Mistral/Qwen2/Qwen3 decoder with Hugging Face parameter names.

    Its parameters start on the meta device (nothing allocated); ``load_weights`` takes
    the checkpoint's tensors (or ``placeholder_weights``) without copying them.
    """

    def __init__(
        self,
        cfg: DecoderConfig,
        *,
        config_dict: dict[str, Any],
        eos_token_ids: tuple[int, ...],
        pad_token_id: int,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = _Model(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", inverse_frequencies(cfg), persistent=False)
        self.layout = KVLayout(
            num_layers=cfg.num_layers,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            vocab_size=cfg.vocab_size,
            max_positions=cfg.max_positions,
        )
        self.eos_token_ids = eos_token_ids
        self.pad_token_id = pad_token_id
        self.config_dict = config_dict
        self.scaling = cfg.head_dim**-0.5

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        input_ids, positions, last_index, *kv = args
        cfg = self.cfg
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(positions, self.inv_freq, x.dtype)
        x = decoder_layers(
            self.model.layers,
            x,
            kv,
            cos=cos,
            sin=sin,
            positions=positions,
            n_heads=cfg.num_heads,
            n_kv_heads=cfg.num_kv_heads,
            scaling=self.scaling,
        )
        x = gather_last(self.model.norm(x), last_index)
        return self.lm_head(x).float()  # type: ignore[no-any-return]

    def weight_names(self) -> list[str]:
        """Names of the tensors a checkpoint must hold (a tied LM head is not one of them)."""
        return [name for name, _ in self.named_parameters()]

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Take ``state``'s tensors as this decoder's parameters (no copy); the names must
        match exactly, or ``ValueError`` names the difference."""
        wanted = self.weight_names()
        if self.cfg.tie_word_embeddings:
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        missing = sorted(set(wanted) - set(state))
        unexpected = sorted(set(state) - set(wanted))
        if missing or unexpected:
            raise ValueError(
                f"the checkpoint does not fit config.json: missing {missing[:4]}, "
                f"unexpected {unexpected[:4]}"
            )
        full = dict(state)
        if self.cfg.tie_word_embeddings:
            full["lm_head.weight"] = state["model.embed_tokens.weight"]
        self.load_state_dict(full, strict=True, assign=True)
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.requires_grad_(False)


def placeholder_weights(
    decoder: LlamaFamilyDecoder, *, dtype: torch.dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights as transformers initialises a new model (normal with the config's
    initializer_range, zero biases, unit norms), from a fixed seed, so a config-only
    directory compiles the real graph and runs deterministically."""
    gen = torch.Generator().manual_seed(seed)
    std = decoder.cfg.initializer_range
    out: dict[str, torch.Tensor] = {}
    for name, param in decoder.named_parameters():
        data = torch.empty(param.shape, dtype=torch.float32)
        if name.endswith("norm.weight"):
            data.fill_(1.0)
        elif name.endswith(".bias"):
            data.zero_()
        else:
            data.normal_(0.0, std, generator=gen)
        out[name] = data.to(dtype)
    return out
