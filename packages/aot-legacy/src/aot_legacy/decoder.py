"""The step interface every model is driven through, and a plain-torch reference decoder.

A ``StaticKVDecoder`` runs one forward step over a static KV cache that the *runtime*
owns and passes in as explicit tensors, updated in place. Keeping the cache outside the
module is what lets separately compiled prefill and decode artifacts (and CUDA graphs)
share it: buffers registered inside a module get a private copy per AOTInductor package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


@dataclass(frozen=True, kw_only=True)
class KVLayout:
    """Shape facts a runtime needs to allocate a static KV cache for a decoder."""

    num_layers: int
    """Number of attention layers (each has one key and one value tensor)."""

    num_kv_heads: int
    """Key/value heads per layer."""

    head_dim: int
    """Size of one head."""

    vocab_size: int
    """Number of logits per position."""

    max_positions: int
    """Longest sequence the model's position encoding supports."""


class StaticKVDecoder(nn.Module):  # type: ignore[misc]
    """One decoding step over an explicit static KV cache.

    ``forward(input_ids, positions, last_index, *kv)``:

    - ``input_ids``, ``positions``: int64 ``[B, T]``; row ``b`` writes its keys/values at
      cache slots ``positions[b]`` and each query attends to slots ``<=`` its position;
    - ``last_index``: int64 ``[B]``, which of the T positions to return logits for, or
      ``[B, K]``: K positions per row (scoring reads every continuation position from
      one forward; the prefill graphs are built for this form);
    - ``kv``: ``2 * num_layers`` tensors ``[max_batch, max_seq, num_kv_heads, head_dim]``
      (key, value per layer), mutated in place; only rows ``[:B]`` are touched.

    Returns logits (float32) at ``last_index``: ``[B, vocab]``, or ``[B, K, vocab]``.
    Implementations gather with ``gather_last``, which handles both forms.
    """

    layout: KVLayout
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    config_dict: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance

    def forward(self, *args: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dim (the RoPE layout HF Llama uses)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Write ``k``/``v`` into the cache at ``positions`` and attend over the cache.

    ``q``: ``[B, Hq, T, D]``; ``k``/``v``: ``[B, Hkv, T, D]``; caches
    ``[max_batch, S, Hkv, D]``. Returns ``[B, T, Hq * D]``.
    """
    bsz, n_heads, _, head_dim = q.shape
    n_kv = k.shape[1]
    rows = torch.arange(bsz, device=positions.device).unsqueeze(1)
    k_cache.index_put_((rows, positions), k.transpose(1, 2).to(k_cache.dtype))
    v_cache.index_put_((rows, positions), v.transpose(1, 2).to(v_cache.dtype))
    keys = k_cache[:bsz].transpose(1, 2)
    values = v_cache[:bsz].transpose(1, 2)
    slots = torch.arange(k_cache.shape[1], device=positions.device)
    mask = slots.view(1, 1, 1, -1) <= positions.unsqueeze(1).unsqueeze(-1)
    # Grouped-query heads read their shared KV head in place: repeating the whole cache
    # for every query head made a decode step cost ten times its attention (one CPU thread).
    out = torch.nn.functional.scaled_dot_product_attention(
        q,
        keys.to(q.dtype),
        values.to(q.dtype),
        attn_mask=mask,
        scale=scaling,
        enable_gqa=n_heads != n_kv,
    )
    return out.transpose(1, 2).reshape(bsz, -1, n_heads * head_dim)


def decoder_layer(
    layer: Any,
    x: torch.Tensor,
    *,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    scaling: float,
) -> torch.Tensor:
    """One Llama-family block over the static KV cache: ``x`` ``[B, T, H]`` -> ``[B, T, H]``.

    ``layer`` is laid out as transformers lays it out (``self_attn.{q,k,v,o}_proj``, the two
    norms, ``mlp``), which aot's own decoder copies; ``self_attn.q_norm``/``k_norm`` where
    present (Qwen3 normalises heads before RoPE).
    """
    bsz, seq, _ = x.shape
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(bsz, seq, n_heads, -1)
    k = attn.k_proj(h).view(bsz, seq, n_kv_heads, -1)
    v = attn.v_proj(h).view(bsz, seq, n_kv_heads, -1)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    out = cached_attention(
        q, k, v, k_cache=k_cache, v_cache=v_cache, positions=positions, scaling=scaling
    )
    x = x + attn.o_proj(out)
    return x + layer.mlp(layer.post_attention_layernorm(x))  # type: ignore[no-any-return]


def decoder_layers(
    layers: Iterable[Any],
    x: torch.Tensor,
    kv: Sequence[torch.Tensor],
    *,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    scaling: float | None,
) -> torch.Tensor:
    """Every block in turn (``decoder_layer``), block ``i`` on the cache tensors
    ``kv[2 * i]`` (keys) and ``kv[2 * i + 1]`` (values). ``scaling`` None: each block's
    own ``self_attn.scaling``, which transformers' blocks carry."""
    for i, layer in enumerate(layers):
        x = decoder_layer(
            layer,
            x,
            cos=cos,
            sin=sin,
            k_cache=kv[2 * i],
            v_cache=kv[2 * i + 1],
            positions=positions,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            scaling=layer.self_attn.scaling if scaling is None else scaling,
        )
    return x


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE's cos and sin at ``positions`` (``[B, T]`` -> ``[B, 1, T, D]`` each), computed
    in float32 and then cast to the activations' ``dtype``, as transformers does."""
    freqs = positions.unsqueeze(-1).float() * inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)


def gather_last(hidden: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """``hidden[b, last_index[b]]`` for each row: ``[B, T, H] -> [B, H]``; with a
    ``[B, K]`` index, the K positions of each row: ``[B, T, H] -> [B, K, H]``."""
    if last_index.dim() == 2:
        idx = last_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, idx)
    idx = last_index.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, idx).squeeze(1)


class _RMSNorm(nn.Module):  # type: ignore[misc]
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


class _Attention(nn.Module):  # type: ignore[misc]
    """Projections laid out as ``decoder_layer`` reads them (``q/k/v/o_proj``)."""

    def __init__(self, dim: int, n_heads: int, n_kv: int) -> None:
        super().__init__()
        head_dim = dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=False)


class _SwiGLU(nn.Module):  # type: ignore[misc]
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w2(torch.nn.functional.silu(self.w1(h)) * self.w3(h))  # type: ignore[no-any-return]


class _Block(nn.Module):  # type: ignore[misc]
    """One Llama block in the layout ``decoder_layer`` runs. Made in the order the seeded
    initialisation has always drawn in (norm, q, k, v, o, norm, w1, w2, w3), so a seed
    gives the same weights it always gave."""

    def __init__(self, dim: int, n_heads: int, n_kv: int, hidden: int) -> None:
        super().__init__()
        self.input_layernorm = _RMSNorm(dim)
        self.self_attn = _Attention(dim, n_heads, n_kv)
        self.post_attention_layernorm = _RMSNorm(dim)
        self.mlp = _SwiGLU(dim, hidden)


class TinyDecoder(StaticKVDecoder):
    """A small Llama-style decoder in plain torch (RMSNorm, RoPE, GQA, SwiGLU).

    For users with a custom model and for tests that should not depend on transformers.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 260,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        n_kv_heads: int = 2,
        hidden: int = 128,
        max_positions: int = 512,
        rope_theta: float = 10000.0,
        eos_token_id: int | None = 258,
        pad_token_id: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(
            _Block(dim, n_heads, n_kv_heads, hidden) for _ in range(n_layers)
        )
        self.norm = _RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        head_dim = dim // n_heads
        inv = 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        self.layout = KVLayout(
            num_layers=n_layers,
            num_kv_heads=n_kv_heads,
            head_dim=head_dim,
            vocab_size=vocab_size,
            max_positions=max_positions,
        )
        self._n_heads = n_heads
        self.eos_token_ids = () if eos_token_id is None else (eos_token_id,)
        self.pad_token_id = pad_token_id
        self.config_dict = {
            "kind": "aot_legacy.TinyDecoder",
            "vocab_size": vocab_size,
            "dim": dim,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "n_kv_heads": n_kv_heads,
            "hidden": hidden,
            "max_positions": max_positions,
            "rope_theta": rope_theta,
            "seed": seed,
        }

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        input_ids, positions, last_index, *kv = args
        x = self.embed(input_ids)
        cos, sin = rope_cos_sin(positions, self.inv_freq, x.dtype)
        x = decoder_layers(
            self.blocks,
            x,
            kv,
            cos=cos,
            sin=sin,
            positions=positions,
            n_heads=self._n_heads,
            n_kv_heads=self.layout.num_kv_heads,
            scaling=1.0 / math.sqrt(self.layout.head_dim),
        )
        x = gather_last(self.norm(x), last_index)
        return self.lm_head(x).float()


def allocate_kv(
    layout: KVLayout,
    *,
    max_batch: int,
    max_seq: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> list[torch.Tensor]:
    """Zeroed, contiguous key/value tensors for every layer, in ``forward``'s order."""
    shape = (max_batch, max_seq, layout.num_kv_heads, layout.head_dim)
    return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(2 * layout.num_layers)]


def kv_bytes(kv: Sequence[torch.Tensor]) -> int:
    """Bytes held by a KV cache."""
    return sum(t.numel() * t.element_size() for t in kv)
