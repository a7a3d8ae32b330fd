"""aot's model cache: in-memory transformers models saved where an engine can load them.

An engine that loads models from a directory (vLLM) cannot take a model built or changed
in the caller's process. ``save_model`` writes such a model (config, safetensors weights,
generation config, and the tokenizer when one is given) under aot's cache root, in
``models/<key>``, where ``key`` names the class and a sha256 of the content, and returns
the directory. The same content finds the same entry, which is reused while it verifies.

Entries are artifacts (``aot_core.artifacts``): built in a staging directory, sealed with
a manifest of every file's checksum, published with one rename under the entry's lock, and
checked file by file before each reuse; a damaged or half-written entry is never handed
out, and is rebuilt only if aot can prove it wrote it. Weights not on the CPU are copied
to the CPU for saving; the caller's model is not changed. torch and transformers are
imported by the caller's model, never here at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

MODELS_DIR = "models"
"""Directory under the cache root that holds saved models (beside ``entries``)."""

_OWNER = "aot-core"
_CHUNK = 1 << 24


@dataclass(frozen=True, kw_only=True)
class ModelWithTokenizer:
    """An in-memory model handed to a backend together with its tokenizer.

    Backends that take model objects unwrap it: the vLLM backend saves both (the tokenizer
    files beside the weights, so text prompts work), the legacy backend uses the tokenizer
    for text prompts. aot-compat builds it from an old config's ``tokenizer`` key.
    """

    model: Any
    """The model object (a transformers model)."""

    tokenizer: Any
    """Its tokenizer (anything with ``save_pretrained``), or None."""


@dataclass(frozen=True, kw_only=True)
class SavedModel:
    """Where an in-memory model was saved, and whether this call wrote it."""

    path: Path
    """The model directory (config.json, safetensors weights, tokenizer files)."""

    key: str
    """The cache entry's name: model class and content digest."""

    digest: str
    """sha256 of the config, every weight (name, dtype, shape, bytes) and the tokenizer."""

    written: bool
    """True when this call saved it; False when an intact earlier save was reused."""

    def note(self) -> str:
        """One line for a model's stats: that it was saved, and where."""
        how = "saved" if self.written else "reused its earlier save"
        return f"in-memory model {how} in aot's model cache: {self.path}"


def _tensor_bytes(tensor: Any) -> memoryview:
    cpu = tensor.detach().to("cpu").contiguous()
    # a byte view works for every dtype (bfloat16 has no numpy equivalent)
    return memoryview(cpu.reshape(-1).view(dtype=_uint8()).numpy())


def _uint8() -> Any:
    import torch

    return torch.uint8


def _config_json(model: Any) -> str:
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    if not callable(to_dict) or not callable(getattr(model, "save_pretrained", None)):
        raise SpecError(
            f"model: a {type(model).__name__} is not a transformers model (no config or "
            "save_pretrained); pass a model directory, a model name, or a transformers model",
            field="model",
        )
    data = {
        k: v for k, v in to_dict().items() if k not in ("_name_or_path", "transformers_version")
    }
    return json.dumps(data, sort_keys=True, default=str)


def model_digest(model: Any, tokenizer_dir: Path | None = None) -> str:
    """sha256 of what a saved copy of ``model`` would hold (weights are read, not copied
    twice: each tensor is viewed as bytes, on the CPU)."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
    h.update(_config_json(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        h.update(_tensor_bytes(tensor))
    if tokenizer_dir is not None:
        for path in sorted(p for p in tokenizer_dir.rglob("*") if p.is_file()):
            h.update(f"\ntokenizer:{path.relative_to(tokenizer_dir)}\n".encode())
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
    return h.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60] or "model"


def _write(
    model: Any, files: Path, name: str, tokenizer_dir: Path | None, digest: str
) -> dict[str, Any]:
    """Save into ``files/<name>``: weights copied to the CPU, the caller's model untouched."""
    target = files / name
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    model.save_pretrained(target, state_dict=state, safe_serialization=True)
    if tokenizer_dir is not None:
        for path in tokenizer_dir.iterdir():
            if path.is_file():
                (target / path.name).write_bytes(path.read_bytes())
    return {"device": "cpu", "extra": {"content_sha256": digest, "model_class": name}}


def save_model(
    model: Any, *, tokenizer: Any = None, root: str | os.PathLike[str] | None = None
) -> SavedModel:
    """Save an in-memory transformers ``model`` (and ``tokenizer``) in aot's model cache, or
    reuse an intact earlier save of the same content; returns where it is.

    ``root`` is aot's cache root (default: ``default_cache_root()``: ``$AOT_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/aot``, else ``~/.cache/aot``; one set but empty raises
    ``EmptyPathVariableError``). Raises ``SpecError`` for an object that is not a
    transformers model, and ``NotOwnedError`` when an earlier save's files no longer match
    its manifest (aot cannot prove those bytes are its own, so it leaves them: move the
    entry away). A save missing a file is written again.
    """
    import tempfile

    from aot_core.artifacts import FILES_DIR, build_and_publish, default_cache_root, entry_key

    with tempfile.TemporaryDirectory(prefix="aot-tokenizer-") as tmp:
        tokenizer_dir = None
        if tokenizer is not None:
            tokenizer_dir = Path(tmp)
            tokenizer.save_pretrained(tmp)
        digest = model_digest(model, tokenizer_dir)
        name = f"{_slug(type(model).__name__)}-{digest[:16]}"
        # an entry key as aot-core's artifacts make them, so the manifest proves it; the
        # model string carries the whole content digest into the key's own digest
        identity = f"{_slug(type(model).__name__)}-{digest}"
        key = entry_key(
            backend=_OWNER, backend_version=_version(), model=identity, spec=CompileSpec()
        )
        base = Path(root if root is not None else default_cache_root()).expanduser()
        dest = base / MODELS_DIR / key
        _, built = build_and_publish(
            dest,
            key=key,
            build=lambda files: _write(model, files, name, tokenizer_dir, digest),
            backend=_OWNER,
            backend_version=_version(),
            spec=CompileSpec(),
            model=identity,
        )
    return SavedModel(path=dest / FILES_DIR / name, key=key, digest=digest, written=built)


def _version() -> str:
    from aot_core.artifacts import package_version

    return package_version("aot-core") or ""
