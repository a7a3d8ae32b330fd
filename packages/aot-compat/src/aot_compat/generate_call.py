"""One ``generate`` call in any style old callers used, as what the backend takes.

Old code called ``generate`` two ways: vLLM's (``generate(prompts, max_tokens=8)`` or a
``SamplingParams``) and transformers' (``generate(input_ids, attention_mask=mask,
max_new_tokens=8, do_sample=False)``, often ``generate(**tokenizer(...))``). Both become a
``GenerateCall``: the unpadded prompts, one ``GenerationParams``, and what the answer must
look like (a tensor laid out as transformers lays it out when a tensor came in). A
transformers option that cannot be honoured is a ``TypeError`` naming it, never ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aot_core.compiler import Generation, GenerationParams

# Old generate() keywords -> GenerationParams fields.
_PARAM_KEYWORDS = {
    "max_tokens": "max_new_tokens",
    "max_new_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop_on_eos": "stop_on_eos",
}

# transformers keywords about the input or the answer, not the decoding.
_INPUT_KEYWORDS = ("input_ids", "attention_mask", "pad_token_id")

# transformers keywords that change nothing at these values (their defaults), and what
# the error says when another value asks for something the backends do not do.
_ONLY_AT_DEFAULT: dict[str, tuple[tuple[Any, ...], str]] = {
    "num_return_sequences": ((1, None), "one sequence per prompt is generated"),
    "num_beams": ((1, None), "decoding is greedy or sampled; there is no beam search"),
    "num_beam_groups": ((1, None), "there is no beam search"),
    "penalty_alpha": ((None, 0, 0.0), "there is no contrastive search"),
    "repetition_penalty": ((1, 1.0, None), "no repetition penalty is applied"),
    "no_repeat_ngram_size": ((0, None), "no n-gram blocking is applied"),
    "min_new_tokens": ((0, None), "there is no minimum length"),
    "min_length": ((0, None), "there is no minimum length"),
    "return_dict_in_generate": ((False, None), "the answer is the ids (or result objects)"),
    "output_scores": ((False, None), "scores are not returned"),
    "output_logits": ((False, None), "logits are not returned"),
    "output_attentions": ((False, None), "attentions are not returned"),
    "output_hidden_states": ((False, None), "hidden states are not returned"),
}
# Keywords transformers takes that never change tokens here.
_IGNORED = ("use_cache", "synced_gpus", "early_stopping", "length_penalty")

# transformers' sampling defaults (GenerationConfig) when do_sample=True leaves them out.
_HF_SAMPLING = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}


@dataclass(frozen=True, kw_only=True)
class GenerateCall:
    """A generate call, translated: what to hand the backend and how to shape the answer."""

    prompts: list[Any]
    """The prompts without padding: token-id lists, or text."""

    params: GenerationParams
    """How to generate."""

    eos_token_ids: frozenset[int] | None = None
    """The caller's ``eos_token_id``: generation ends at the first of these (None: the
    model's own end-of-sequence token, decided by the backend)."""

    pad_token_id: int | None = None
    """The caller's ``pad_token_id`` for a tensor answer (None: the model's default)."""

    input_tensor: Any = None
    """The input-id tensor, when one was given: the answer is then a tensor like it."""


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "tolist") and hasattr(value, "dim")


def _allowed() -> str:
    names = {*_PARAM_KEYWORDS, "ignore_eos", "do_sample", "eos_token_id", *_INPUT_KEYWORDS}
    return ", ".join(sorted(names | set(_ONLY_AT_DEFAULT) | set(_IGNORED)))


def _check_hf_only(kwargs: dict[str, Any]) -> None:
    """Drop transformers keywords at values that change nothing; refuse other values."""
    for key in [k for k in kwargs if k in _ONLY_AT_DEFAULT or k in _IGNORED]:
        value = kwargs.pop(key)
        if key in _ONLY_AT_DEFAULT:
            accepted, why = _ONLY_AT_DEFAULT[key]
            if value not in accepted:
                raise TypeError(
                    f"generate(): {key}={value!r} cannot be honoured: {why}. Pass "
                    f"{key}={accepted[0]!r} or leave it out"
                )


def _sampling(kwargs: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``do_sample``: False is greedy whatever the temperature (transformers
    ignores it then); True samples with transformers' defaults for what is left out."""
    do_sample = kwargs.pop("do_sample", None)
    if do_sample is None:
        return kwargs
    if not isinstance(do_sample, bool):
        raise TypeError(f"generate(): do_sample must be True or False, got {do_sample!r}")
    if not do_sample:
        for key in ("temperature", "top_p", "top_k"):
            kwargs.pop(key, None)
        return kwargs
    merged = {**_HF_SAMPLING, **{k: v for k, v in kwargs.items() if v is not None}}
    if not merged["temperature"] or merged["temperature"] <= 0:
        raise TypeError(
            f"generate(): do_sample=True needs temperature > 0, got {merged['temperature']!r}; "
            "pass do_sample=False for greedy decoding"
        )
    return merged


def generation_params(params: Any, kwargs: Mapping[str, Any]) -> GenerationParams:
    """GenerationParams from a GenerationParams, old or transformers keywords, a dict, or a
    vLLM ``SamplingParams``."""
    if isinstance(params, GenerationParams):
        if kwargs:
            raise TypeError(
                "pass either a GenerationParams or generate keywords, not both "
                f"(got {', '.join(sorted(kwargs))})"
            )
        return params
    values: dict[str, Any] = {}
    if isinstance(params, Mapping):
        kwargs = {**params, **kwargs}
    elif params is not None and hasattr(params, "max_tokens"):
        # an old caller handing over vllm.SamplingParams, as the raw LLM once took
        values = {
            "max_new_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": max(int(getattr(params, "top_k", 0) or 0), 0),
            "seed": getattr(params, "seed", None),
            "stop_on_eos": not getattr(params, "ignore_eos", False),
        }
        values = {k: v for k, v in values.items() if v is not None}
    elif params is not None:
        raise TypeError(
            f"generate params must be a GenerationParams, a dict or keywords, got "
            f"{type(params).__name__}"
        )
    rest = dict(kwargs)
    _check_hf_only(rest)
    for key, value in _sampling(rest).items():
        if key == "ignore_eos":
            values["stop_on_eos"] = not value
        elif key in _PARAM_KEYWORDS:
            if value is not None:  # transformers spells "not set" as None
                values[_PARAM_KEYWORDS[key]] = value
        else:
            raise TypeError(f"generate() got an unknown keyword {key!r}; allowed: {_allowed()}")
    return GenerationParams(**values)


def _rows(ids: Any) -> list[list[int]]:
    if _is_tensor(ids):
        data = ids.tolist()
        return [data] if ids.dim() == 1 else data
    return [list(r) for r in ids]


def _unpad(rows: list[list[int]], mask: Any) -> list[list[int]]:
    """Each row's prompt tokens: where ``mask`` is 1, which must be one run (left or right
    padding)."""
    masks = _rows(mask)
    if len(masks) != len(rows) or any(len(m) != len(r) for m, r in zip(masks, rows, strict=True)):
        raise TypeError(
            "generate(): attention_mask must have the shape of input_ids "
            f"({len(rows)} rows of {[len(r) for r in rows]} ids)"
        )
    out = []
    for i, (row, m) in enumerate(zip(rows, masks, strict=True)):
        kept = [j for j, v in enumerate(m) if v]
        if not kept:
            raise TypeError(f"generate(): attention_mask row {i} masks every token")
        if kept[-1] - kept[0] + 1 != len(kept):
            raise TypeError(
                f"generate(): attention_mask row {i} has padding between tokens; only left or "
                "right padding is supported"
            )
        out.append(row[kept[0] : kept[-1] + 1])
    return out


def parse_call(prompts: Any, params: Any, kwargs: dict[str, Any]) -> GenerateCall:
    """Translate ``generate``'s arguments, in the old vLLM style or transformers' style."""
    kwargs = dict(kwargs)
    ids = kwargs.pop("input_ids", None)
    mask = kwargs.pop("attention_mask", None)
    pad = kwargs.pop("pad_token_id", None)
    eos = kwargs.pop("eos_token_id", None)
    if isinstance(prompts, Mapping) and "input_ids" in prompts:
        # generate(tokenizer(texts, return_tensors="pt")): a BatchEncoding or its dict
        extra = set(prompts) - {"input_ids", "attention_mask", "token_type_ids"}
        if extra:
            raise TypeError(f"generate(): unexpected input fields {sorted(extra)}")
        prompts, mask = prompts["input_ids"], prompts.get("attention_mask", mask)
    if ids is not None:
        if prompts is not None:
            raise TypeError("generate(): pass the prompts or input_ids=, not both")
        prompts = ids
    if prompts is None:
        raise TypeError("generate() needs prompts: token-id lists, text, or an input-id tensor")
    tensor = prompts if _is_tensor(prompts) else None
    if isinstance(prompts, str):
        rows: list[Any] = [prompts]
    elif tensor is not None or mask is not None:
        rows = _rows(prompts)
        rows = _unpad(rows, mask) if mask is not None else rows
    else:
        rows = list(prompts)
    generation = generation_params(params, kwargs)
    eos_ids = _token_ids(eos, "eos_token_id")
    if eos_ids is not None:
        # the caller's end token replaces the model's: generate on, cut after the first one
        generation = replace(generation, stop_on_eos=False)
    pad_ids = _token_ids(pad, "pad_token_id")
    return GenerateCall(
        prompts=rows,
        params=generation,
        eos_token_ids=eos_ids,
        pad_token_id=min(pad_ids) if pad_ids else None,
        input_tensor=tensor,
    )


def _token_ids(value: Any, name: str) -> frozenset[int] | None:
    if value is None:
        return None
    if _is_tensor(value):
        value = value.tolist()
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError(f"generate(): {name} must be a token id or a list of them, got {value!r}")
    if name == "pad_token_id" and len(items) != 1:
        raise TypeError(f"generate(): pad_token_id must be one token id, got {value!r}")
    return frozenset(items)


def cut_at_eos(generation: Generation, eos_ids: frozenset[int] | None) -> Generation:
    """The generation ended after the first of the caller's end tokens (kept, as
    transformers keeps it)."""
    if eos_ids is None:
        return generation
    for i, tok in enumerate(generation.token_ids):
        if tok in eos_ids:
            kept = generation.token_ids[: i + 1]
            # the backend's text covers the uncut tokens; no text beats a wrong one
            text = generation.text if len(kept) == len(generation.token_ids) else None
            return replace(generation, token_ids=kept, text=text, finish_reason="stop")
    return replace(generation, finish_reason="length")


def as_tensor(call: GenerateCall, outputs: Sequence[Generation], default_pad: int | None) -> Any:
    """Prompt plus generated ids as transformers returns them: each input row as given
    (padding included), its new tokens after it, rows that ended early filled with the pad
    token (transformers' fallback: the end token) up to the longest."""
    import torch

    source = call.input_tensor
    width = max(len(g.token_ids) for g in outputs)
    pad = call.pad_token_id if call.pad_token_id is not None else default_pad
    if pad is None:
        # as transformers does without a pad token: pad with the end token
        ended = [g.token_ids[-1] for g in outputs if g.finish_reason == "stop" and g.token_ids]
        pad = min(call.eos_token_ids) if call.eos_token_ids else (ended[0] if ended else 0)
    new = [list(g.token_ids) + [pad] * (width - len(g.token_ids)) for g in outputs]
    added = torch.tensor(new, dtype=source.dtype, device=source.device)
    if source.dim() == 1:
        return torch.cat([source, added[0]])
    return torch.cat([source, added], dim=1)


def _first_id(value: Any) -> int | None:
    if isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def default_pad_token_id(model: Any) -> int | None:
    """The pad token transformers' ``generate`` pads this model's answers with: its
    generation config's ``pad_token_id``, else its ``eos_token_id`` (None: unknown)."""
    config: Any = None
    if isinstance(model, (str, os.PathLike)):
        # transformers reads generation_config.json where it exists, else config.json
        for name in ("generation_config.json", "config.json"):
            path = Path(model) / name
            if path.is_file():
                try:
                    config = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    return None
                break
    else:
        holder = getattr(model, "generation_config", None) or getattr(model, "config", None)
        if holder is not None:
            config = {k: getattr(holder, k, None) for k in ("pad_token_id", "eos_token_id")}
    if not isinstance(config, dict):
        return None
    pad = _first_id(config.get("pad_token_id"))
    return pad if pad is not None else _first_id(config.get("eos_token_id"))
