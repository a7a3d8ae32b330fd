"""Calling a compiled model like the transformers module it was compiled from.

``compiled(input_ids, attention_mask=mask)`` returns what ``model(input_ids, ...)`` returned:
a transformers ``CausalLMOutputWithPast`` whose ``logits`` are ``[batch, seq, vocab]``. The
logits come from the compiled steps (``generation.full_logits``), never from the eager
module: the same code that generates and scores. Each row's tokens where the mask is 1 (one
run: left or right padding) are run from position 0; logits at padding positions are 0,
because what transformers computes there depends on its attention implementation and means
nothing. ``labels`` give the loss as transformers computes it (shifted cross-entropy,
``-100`` ignored).
"""

from __future__ import annotations

from typing import Any

import torch
from aot_core.errors import SpecError

from aot_legacy.generation import StaticKVGenerator, full_logits

# forward() keywords that change nothing at these values (transformers' defaults).
_AT_DEFAULT: dict[str, tuple[Any, ...]] = {
    "position_ids": (None,),
    "past_key_values": (None,),
    "inputs_embeds": (None,),
    "output_attentions": (None, False),
    "output_hidden_states": (None, False),
    "cache_position": (None,),
    "logits_to_keep": (0,),
}
_IGNORED = ("use_cache",)


def _check_keywords(kwargs: dict[str, Any]) -> None:
    for key, value in kwargs.items():
        if key in _IGNORED:
            continue
        if key not in _AT_DEFAULT:
            allowed = ", ".join(["input_ids", "attention_mask", "labels", "return_dict"])
            raise TypeError(
                f"compiled model called with an unknown keyword {key!r}; it takes {allowed}"
            )
        if value not in _AT_DEFAULT[key]:
            raise TypeError(
                f"compiled model called with {key}={value!r}, which it cannot honour: it runs "
                "whole sequences from position 0 on its own KV cache; leave it out"
            )


def _spans(ids: torch.Tensor, mask: torch.Tensor | None) -> list[tuple[int, int]]:
    """Each row's [start, end) of real tokens."""
    batch, seq = ids.shape
    if mask is None:
        return [(0, seq)] * batch
    if tuple(mask.shape) != (batch, seq):
        raise TypeError(
            f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(ids.shape)}; "
            "they must match"
        )
    spans = []
    for r, row in enumerate(mask.tolist()):
        kept = [j for j, v in enumerate(row) if v]
        if not kept or kept[-1] - kept[0] + 1 != len(kept):
            raise TypeError(
                f"attention_mask row {r} is not left or right padding around one run of "
                "tokens; only padding masks are supported"
            )
        spans.append((kept[0], kept[-1] + 1))
    return spans


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' causal-LM loss: token t predicts label t+1; -100 is ignored."""
    shifted = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    target = labels[:, 1:].reshape(-1).to(logits.device)
    return torch.nn.functional.cross_entropy(shifted.float(), target, ignore_index=-100)


def module_call(
    generator: StaticKVGenerator,
    input_ids: Any,
    attention_mask: Any = None,
    labels: Any = None,
    return_dict: bool | None = None,
    **kwargs: Any,
) -> Any:
    """What ``transformers_model(input_ids, attention_mask=..., labels=...)`` returns,
    computed by ``generator``'s compiled steps."""
    _check_keywords(kwargs)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise TypeError(
            "compiled model: input_ids must be a [batch, seq] tensor of token ids, as the "
            f"module took, got {type(input_ids).__name__}"
            + (f" of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else "")
        )
    mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
    if attention_mask is not None and mask is None:
        mask = torch.as_tensor(attention_mask)
    spans = _spans(input_ids, mask)
    rows = input_ids.tolist()
    try:
        per_row = full_logits(
            generator, [row[a:b] for row, (a, b) in zip(rows, spans, strict=True)]
        )
    except SpecError as exc:
        raise ValueError(f"compiled model: {exc}") from exc
    batch, seq = input_ids.shape
    logits = torch.zeros(
        batch, seq, generator.vocab_size, dtype=torch.float32, device=generator.device
    )
    for r, (a, b) in enumerate(spans):
        logits[r, a:b] = per_row[r]
    loss = _loss(logits, torch.as_tensor(labels)) if labels is not None else None
    if return_dict is False:
        return (loss, logits) if loss is not None else (logits,)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return CausalLMOutputWithPast(loss=loss, logits=logits)
