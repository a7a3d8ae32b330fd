"""The model's own context limit, checked before vLLM is imported.

vLLM refuses a ``max_model_len`` above the length it derives from the model's config
(unless ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1``), but only once it is imported and has read
the config, which costs seconds to minutes, and inside a compile that has already staged
an artifact. This check reads ``config.json`` itself and refuses the same values up
front. It is deliberately no stricter than vLLM: its limit is an upper bound of vLLM's
(every RoPE scaling factor applied, the tokenizer's own limit ignored), so whatever it
lets through is left to vLLM's exact check.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

ALLOW_VAR = "VLLM_ALLOW_LONG_MAX_MODEL_LEN"
"""vLLM's own switch for a context longer than the model's; aot-vllm honours it too."""

# The config keys vLLM derives the model's length from (the smallest one present wins), in
# every release from 0.10.2 to 0.33 (ModelConfig / ModelArchConfigConvertor).
_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The part of a (possibly multimodal) config that holds the language model."""
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def _rope_factor(config: Mapping[str, Any]) -> float:
    """The largest RoPE scaling factor the config declares (1 when none)."""
    factors = [1.0]
    for key in ("rope_scaling", "rope_parameters"):
        value = config.get(key)
        tables = [value] if isinstance(value, Mapping) else []
        # transformers 5 may keep one table per layer type.
        if isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values()):
            tables = list(value.values())
        for table in tables:
            factor = table.get("factor")
            if isinstance(factor, (int, float)) and math.isfinite(factor):
                factors.append(float(factor))
    return max(factors)


def model_length_limit(config: Mapping[str, Any]) -> tuple[int, str] | None:
    """(the longest ``max_model_len`` vLLM could accept for this config, the key it comes
    from), or None when the config declares no length (vLLM then takes any value)."""
    text = _text_config(config)
    declared = {
        key: value
        for key in _LENGTH_KEYS
        if isinstance(value := text.get(key), int) and not isinstance(value, bool) and value > 0
    }
    if not declared:
        return None
    key = min(declared, key=lambda k: declared[k])
    limit = math.ceil(declared[key] * _rope_factor(text))
    # vLLM lets a user go up to model_max_length where that is the larger of the two.
    override = text.get("model_max_length")
    if isinstance(override, int) and not isinstance(override, bool) and override > limit:
        return override, "model_max_length"
    return limit, key


def _allowed_by_user() -> bool:
    return os.environ.get(ALLOW_VAR, "0").strip().lower() in ("1", "true")


def check_max_model_len(spec: CompileSpec, model_dir: Path | None) -> str | None:
    """Raise ``SpecError`` if ``spec.max_model_len`` exceeds what the model declares; returns
    a note when the user allowed it with ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1``, else None."""
    if spec.max_model_len is None or model_dir is None:
        return None
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # vLLM reports an unreadable config in its own words
    found = model_length_limit(config) if isinstance(config, Mapping) else None
    if found is None or spec.max_model_len <= found[0]:
        return None
    limit, key = found
    if _allowed_by_user():
        return (
            f"max_model_len={spec.max_model_len} exceeds the model's {key} {limit}; allowed "
            f"by {ALLOW_VAR}=1 (outputs past {limit} tokens may be wrong)"
        )
    raise SpecError(
        f"max_model_len: {spec.max_model_len} exceeds the model's {key} {limit} "
        f"({model_dir / 'config.json'}); set max_model_len <= {limit}, or leave it unset to "
        f"take the model's own limit. To run past it anyway (outputs may be wrong or NaN), "
        f"set {ALLOW_VAR}=1, as vLLM asks",
        field="max_model_len",
    )


__all__ = ["ALLOW_VAR", "check_max_model_len", "model_length_limit"]
