"""The tokenizer an evaluation job encodes text with: the model directory's own."""

from __future__ import annotations

from typing import Any

from aot_core.evaluation.errors import NoTokenizerError
from aot_core.evaluation.model_args import EvalModelConfig


def load_tokenizer(config: EvalModelConfig) -> Any:
    """The model directory's tokenizer (transformers, local files only), or a clear error."""
    directory = config.tokenizer or config.model
    kwargs: dict[str, Any] = {"local_files_only": True}
    if config.add_bos_token is not None:
        kwargs["add_bos_token"] = config.add_bos_token
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory), **kwargs)
    except Exception as exc:
        raise NoTokenizerError(
            f"{directory} has no usable tokenizer ({type(exc).__name__}: {exc}); lm-eval tasks "
            "are text, so the model needs one: add the tokenizer files (tokenizer.json, "
            "tokenizer_config.json) to the model directory, or pass tokenizer=DIR in --model-args"
        ) from exc
