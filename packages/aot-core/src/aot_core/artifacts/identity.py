"""Model identity: the model-config hash and the cache-entry name of a compile."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from aot_core.artifacts.environment import host_fingerprint
from aot_core.artifacts.manifest import FORMAT_VERSION
from aot_core.spec import CompileSpec


def _model_dir(model: str | os.PathLike[str]) -> Path | None:
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def model_config_hash(model: str | os.PathLike[str]) -> str:
    """sha256 of the model's config.json (canonical JSON), or of its name when not a directory.

    Compiled code depends on the architecture, which config.json describes; weights are
    not hashed (they are inputs, not code).
    """
    directory = _model_dir(model)
    if directory is not None and (directory / "config.json").is_file():
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
    return hashlib.sha256(f"name:{model}".encode()).hexdigest()


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"
    return slug[:60]


def entry_key(
    *, backend: str, backend_version: str, model: str | os.PathLike[str], spec: CompileSpec
) -> str:
    """The cache-entry name for compiling ``model`` with ``backend`` and ``spec`` here.

    Everything that invalidates compiled code goes into it, so an upgrade of torch, vLLM or
    the backend, or another device, gets a new entry instead of loading a stale one.
    """
    name = Path(model).name if _model_dir(model) is not None else str(model)
    digest = key_digest(
        format_version=FORMAT_VERSION,
        backend=backend,
        backend_version=backend_version,
        spec_fingerprint=spec.fingerprint(),
        model_config_hash=model_config_hash(model),
        pins=_pins_for(backend),
        host=host_fingerprint(),
    )
    return f"{key_prefix(backend)}{_slug(name)}-{digest}"


def key_prefix(backend: str) -> str:
    """How every entry key of ``backend`` starts."""
    return f"{_slug(backend)}-"


def key_digest(
    *,
    format_version: int,
    backend: str,
    backend_version: str,
    spec_fingerprint: str,
    model_config_hash: str,
    pins: Mapping[str, str | None],
    host: str,
) -> str:
    """The digest that ends an entry key; a manifest records every input, so it can be redone."""
    payload = json.dumps(
        {
            "format": format_version,
            "backend": backend,
            "backend_version": backend_version,
            "spec": spec_fingerprint,
            "model": model_config_hash,
            "pins": dict(pins),
            "host": host,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _pins_for(backend: str) -> dict[str, str | None]:
    """The versions ``backend`` pins into its artifacts: its own ``Compiler.pins()``, read
    with its own version lookups; empty when that backend is not installed here."""
    from aot_core.registry import installed_backends

    cls = installed_backends().get(backend)
    return dict(cls.pins()) if cls is not None else {}
