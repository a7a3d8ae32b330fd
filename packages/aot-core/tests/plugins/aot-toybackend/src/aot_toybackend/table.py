"""The compiled form: the bigram's whole next-token table, one JSON file per model."""

from __future__ import annotations

import json
import os
from pathlib import Path

TABLE_FORMAT = "1"
"""Version of the table file's layout; pinned into every artifact (``ToyCompiler.pins``)."""

PIN_NAME = "aot-toybackend-table"
"""The name the format version is pinned under."""


def table_path(cache_dir: str | os.PathLike[str], digest: str) -> Path:
    """Where the table of the model with ``digest`` lives below ``cache_dir``."""
    return Path(cache_dir).expanduser() / "toy-bigram" / f"{digest[:24]}.json"


def write_table(path: Path, digest: str, table: list[int]) -> None:
    """Write the table atomically (a temporary name, then one rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": TABLE_FORMAT, "model": digest, "next": table}))
    os.replace(tmp, path)


def read_table(path: Path, digest: str) -> list[int] | None:
    """The table at ``path`` if it is one for this model and format, else None."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != TABLE_FORMAT or data.get("model") != digest:
        return None
    return [int(t) for t in data["next"]]
