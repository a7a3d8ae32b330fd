"""Real architectures without their weights: preset config.json files for ``--shape``.

Each ``NAME.json`` beside this module holds one model's published ``config.json`` and
where it came from. ``aot bench --shape NAME`` and ``aot compile --shape NAME`` write that
config alone into a model directory, which the backends compile with placeholder weights
(config-only precompile), so a real architecture is measured with nothing downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from aot_core.errors import SpecError


@dataclass(frozen=True, kw_only=True)
class ShapePreset:
    """One preset: a published config.json and its source."""

    name: str
    """What ``--shape`` takes (lower case)."""

    title: str
    """The model's published name."""

    source: str
    """Where the config was published."""

    source_note: str
    """How it was obtained and what, if anything, was left out."""

    config: dict[str, Any]
    """The config.json as published."""

    def config_json(self) -> str:
        """The config as written into a model directory (stable bytes, so a stable key)."""
        return json.dumps(self.config, indent=2, sort_keys=True) + "\n"


@cache
def _presets() -> dict[str, ShapePreset]:
    found: dict[str, ShapePreset] = {}
    for entry in resources.files(__name__).iterdir():
        if not entry.name.endswith(".json"):
            continue
        data = json.loads(entry.read_text(encoding="utf-8"))
        preset = ShapePreset(
            name=data["name"],
            title=data["title"],
            source=data["source"],
            source_note=data["source_note"],
            config=data["config"],
        )
        found[preset.name] = preset
    return dict(sorted(found.items()))


def known_shapes() -> list[str]:
    """The names ``--shape`` accepts, sorted."""
    return list(_presets())


def get_shape(name: str) -> ShapePreset:
    """The preset called ``name`` (case-insensitive), or a ``SpecError`` listing the known ones."""
    preset = _presets().get(name.strip().lower())
    if preset is None:
        raise SpecError(
            f"unknown shape {name!r}; known shapes: {', '.join(known_shapes())} "
            "(or pass a model directory instead of --shape)",
            field="shape",
        )
    return preset


def shape_dir(preset: ShapePreset, root: Path | None = None) -> Path:
    """Where ``preset``'s config-only model directory lives under cache root ``root``."""
    from aot_core.artifacts import default_cache_root

    base = root if root is not None else default_cache_root()
    digest = hashlib.sha256(preset.config_json().encode()).hexdigest()[:12]
    return base / "models" / f"shape-{preset.name}-{digest}"


def ensure_shape_dir(preset: ShapePreset, root: Path | None = None) -> Path:
    """``preset``'s config-only model directory (config.json only), written on first use.

    Written atomically, so concurrent writers never see half a file.
    """
    path = shape_dir(preset, root)
    path.mkdir(parents=True, exist_ok=True)
    target = path / "config.json"
    data = preset.config_json().encode()
    if target.is_file() and target.read_bytes() == data:
        return path
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".config.json.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
