"""Which model to start: a local directory, a GGUF file or a real model's name (converted
once into aot's model cache, ``aot_core.models.gguf``), a hub name, or a Hugging Face model
object.

vLLM loads models from a directory. A model object loaded from one (its ``name_or_path``)
starts from there; one built or changed in memory, with no ``name_or_path``, is saved in
aot's model cache under a content hash (``aot_core.models.cache``) and starts from there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.errors import SpecError
from aot_core.models.gguf import resolve_gguf, source_note

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """A model as vLLM will be asked to load it."""

    name_or_path: str
    """What is passed to ``vllm.LLM(model=...)``."""

    local_dir: Path | None
    """The model directory when the model is local, else None (a hub name)."""

    has_tokenizer: bool
    """A tokenizer is present (always assumed True for hub names)."""

    has_weights: bool
    """Weight files are present (always assumed True for hub names)."""

    note: str = ""
    """What was done to make the model loadable (an in-memory model saved, and where)."""


def resolve_model(model: Any) -> ModelSource:
    """Turn what the user passed into a ``ModelSource``, or raise ``SpecError`` saying why not.

    A ``ModelSource`` passes through, so a model resolved once (an in-memory one saved
    once) is not resolved again on the way to the engine.
    """
    if isinstance(model, ModelSource):
        return model
    from aot_core.models.cache import ModelWithTokenizer

    if isinstance(model, ModelWithTokenizer):
        if model.tokenizer is not None:
            # the tokenizer given is part of what vLLM must load: save both together
            return _saved(model.model, model.tokenizer)
        model = model.model
    if _in_memory(model):
        return _saved(model)
    text = _name_or_path(model)
    converted = resolve_gguf(text)  # a .gguf file or a real model's name, else None
    path = converted.path if converted is not None else Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpecError(
                f"model: {path} is a directory without config.json; point at a Hugging Face "
                "model directory (config.json plus weights) or pass a model name",
                field="model",
            )
        names = {p.name for p in path.iterdir()}
        return ModelSource(
            name_or_path=str(path.resolve()),
            local_dir=path.resolve(),
            has_tokenizer=any(n in names for n in _TOKENIZER_FILES),
            has_weights=any(n.endswith(_WEIGHT_SUFFIXES) for n in names),
            note=converted.note() if converted is not None else source_note(path) or "",
        )
    if text.startswith(("/", "./", "../", "~")) or os.sep in text.strip("/").replace("/", "", 1):
        raise SpecError(
            f"model: {text!r} looks like a path but no such directory exists; check the path "
            "or pass a model name such as 'org/model'",
            field="model",
        )
    return ModelSource(name_or_path=text, local_dir=None, has_tokenizer=True, has_weights=True)


def _in_memory(model: Any) -> bool:
    """A transformers model object that was not loaded from anywhere (no name_or_path)."""
    if isinstance(model, (str, os.PathLike)) or not hasattr(model, "save_pretrained"):
        return False
    try:
        _name_or_path(model)
    except SpecError:
        return True
    return False


def _saved(model: Any, tokenizer: Any = None) -> ModelSource:
    from aot_core.models.cache import save_model

    if not hasattr(model, "save_pretrained"):
        raise SpecError(
            f"model: a {type(model).__name__} cannot be saved for vLLM; pass a transformers "
            "model, a model directory or a model name",
            field="model",
        )
    saved = save_model(model, tokenizer=tokenizer)
    names = {p.name for p in saved.path.iterdir()}
    return ModelSource(
        name_or_path=str(saved.path),
        local_dir=saved.path,
        has_tokenizer=any(n in names for n in _TOKENIZER_FILES),
        has_weights=True,
        note=saved.note(),
    )


def _name_or_path(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        text = os.fspath(model)
    else:
        # Hugging Face PreTrainedModel exposes name_or_path; its config keeps _name_or_path.
        config = getattr(model, "config", None)
        text = (
            getattr(model, "name_or_path", None)
            or getattr(config, "name_or_path", None)
            or getattr(config, "_name_or_path", None)
            or ""
        )
        if not isinstance(text, str):
            text = ""
        if not text:
            raise SpecError(
                f"model: cannot tell where a {type(model).__name__} was loaded from; pass a "
                "local model directory, a model name, or a Hugging Face model whose "
                "name_or_path is set (save it with save_pretrained and pass the directory)",
                field="model",
            )
    if not text.strip():
        raise SpecError("model: the model name or path is empty", field="model")
    return text
