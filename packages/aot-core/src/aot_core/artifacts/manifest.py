"""The manifest format: ``manifest.json`` beside ``files/``, and reading it back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aot_core.errors import ArtifactCorruptError

FORMAT_VERSION = 1
"""Version of the manifest format; an artifact with a newer one is refused."""

MANIFEST_NAME = "manifest.json"
FILES_DIR = "files"


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    """One file of an artifact."""

    path: str
    """Path relative to the artifact directory, with forward slashes (under files/)."""

    sha256: str
    """Hex sha256 of the file's bytes."""

    size: int
    """Size in bytes."""


@dataclass(frozen=True, kw_only=True)
class RankRecord:
    """One rank's share of an artifact compiled for several processes (tensor/pipeline parallel)."""

    rank: int
    """Global rank: ``pipeline_parallel_rank * tensor_parallel_size + tensor_parallel_rank``."""

    tensor_parallel_rank: int
    """Position within its tensor-parallel group."""

    pipeline_parallel_rank: int
    """Pipeline stage."""

    files: tuple[str, ...]
    """The artifact's files (paths as in ``Manifest.files``) this rank compiled or loaded;
    files the ranks share (kernels of identical graphs) may appear under several ranks."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return {**dataclasses.asdict(self), "files": list(self.files)}


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What an artifact holds and what it was built for."""

    format_version: int
    """Manifest format version (``FORMAT_VERSION`` when written)."""

    key: str
    """The entry name the artifact is stored under."""

    created_utc: str
    """When the artifact was written, ISO 8601 UTC."""

    backend: str
    """Registry name of the backend that compiled it."""

    backend_version: str
    """Version of the backend's distribution."""

    aot_core_version: str
    """Version of aot-core that wrote the manifest."""

    torch_version: str | None
    """torch version it was compiled with (None when torch was not installed)."""

    vllm_version: str | None
    """vLLM version installed when it was compiled (None when not installed)."""

    pins: Mapping[str, str | None]
    """Packages whose exact versions must match to load it (e.g. torch, vllm)."""

    device: str
    """Device string the backend reported, e.g. "cpu" or "cuda:0 (NVIDIA H100, sm_90)"."""

    device_kind: str
    """Device family: "cpu", "cuda", ..."""

    cuda_capability: str | None
    """Compute capability for CUDA artifacts, e.g. "9.0"."""

    cpu_arch: str
    """Machine architecture, e.g. "x86_64" or "aarch64"."""

    cpu_isa: tuple[str, ...]
    """ISA extensions of the CPU it was compiled on; the loading CPU needs all of them."""

    spec: Mapping[str, Any]
    """The compile spec (``CompileSpec.to_dict``)."""

    spec_fingerprint: str
    """``CompileSpec.fingerprint()`` of the spec with cache_dir cleared."""

    model: str
    """The model as given (path or name)."""

    model_config_hash: str
    """sha256 of the model's canonical config.json."""

    files: tuple[FileRecord, ...]
    """Every file of the artifact with its checksum and size."""

    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Free-form facts (e.g. the compile stats), informational only."""

    ranks: tuple[RankRecord, ...] = ()
    """Each rank's files, for an artifact compiled for more than one process; empty for one
    process (and in manifests written before ranks were recorded)."""

    @property
    def world_size(self) -> tuple[int, int]:
        """(tensor_parallel_size, pipeline_parallel_size) the artifact was compiled for."""
        return (
            int(self.spec.get("tensor_parallel_size", 1) or 1),
            int(self.spec.get("pipeline_parallel_size", 1) or 1),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["files"] = [dataclasses.asdict(f) for f in self.files]
        out["ranks"] = [r.to_dict() for r in self.ranks]
        out["pins"] = dict(self.pins)
        out["spec"] = json.loads(json.dumps(dict(self.spec)))
        out["extra"] = json.loads(json.dumps(dict(self.extra), default=str))
        out["cpu_isa"] = list(self.cpu_isa)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse a manifest dict; a missing or mistyped field is an ``ArtifactCorruptError``."""
        try:
            files = tuple(
                FileRecord(path=str(f["path"]), sha256=str(f["sha256"]), size=int(f["size"]))
                for f in data["files"]
            )
            return cls(
                format_version=int(data["format_version"]),
                key=str(data["key"]),
                created_utc=str(data["created_utc"]),
                backend=str(data["backend"]),
                backend_version=str(data["backend_version"]),
                aot_core_version=str(data.get("aot_core_version", "")),
                torch_version=data["torch_version"],
                vllm_version=data["vllm_version"],
                pins=MappingProxyType(dict(data["pins"])),
                device=str(data["device"]),
                device_kind=str(data["device_kind"]),
                cuda_capability=data.get("cuda_capability"),
                cpu_arch=str(data["cpu_arch"]),
                cpu_isa=tuple(str(x) for x in data["cpu_isa"]),
                spec=MappingProxyType(dict(data["spec"])),
                spec_fingerprint=str(data["spec_fingerprint"]),
                model=str(data["model"]),
                model_config_hash=str(data["model_config_hash"]),
                files=files,
                extra=MappingProxyType(dict(data.get("extra") or {})),
                ranks=tuple(_rank_record(r) for r in data.get("ranks") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactCorruptError(
                f"the manifest is malformed ({type(exc).__name__}: {exc}); delete the entry "
                "(`aot cache clear KEY`) and compile again"
            ) from exc

    @property
    def total_size(self) -> int:
        """Sum of the file sizes in bytes."""
        return sum(f.size for f in self.files)


def _rank_record(data: Mapping[str, Any]) -> RankRecord:
    return RankRecord(
        rank=int(data["rank"]),
        tensor_parallel_rank=int(data["tensor_parallel_rank"]),
        pipeline_parallel_rank=int(data["pipeline_parallel_rank"]),
        files=tuple(str(f) for f in data["files"]),
    )


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every non-directory below ``root``, links included."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in sorted(filenames) + sorted(d for d in dirnames if (base / d).is_symlink()):
            path = base / name
            yield path.relative_to(root).as_posix(), path


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory below ``root`` to disk."""
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                _fsync_path(path)
        _fsync_path(Path(dirpath), directory=True)


def resolve_artifact_dir(path: str | os.PathLike[str]) -> Path:
    """The artifact directory for ``path``: the directory itself, or the parent of its files/."""
    p = Path(path)
    if (
        not (p / MANIFEST_NAME).exists()
        and p.name == FILES_DIR
        and (p.parent / MANIFEST_NAME).exists()
    ):
        return p.parent
    return p


def artifact_root(cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """The artifact that ``cache_dir`` belongs to, or None for a plain cache directory.

    Backends call this with ``spec.cache_dir``: when it returns a path, the directory is
    (part of) a published artifact and must pass ``verify_for_load`` before anything in it
    is loaded; when None, the directory is the backend's own working cache.
    """
    if cache_dir is None:
        return None
    p = Path(cache_dir).expanduser()
    if (p / MANIFEST_NAME).is_file() and (p / FILES_DIR).is_dir():
        return p
    if p.name == FILES_DIR and (p.parent / MANIFEST_NAME).is_file():
        return p.parent
    return None


def read_manifest(artifact_dir: str | os.PathLike[str]) -> Manifest:
    """Read and parse an artifact's manifest; missing or unreadable is ``ArtifactCorruptError``."""
    root = resolve_artifact_dir(artifact_dir)
    path = root / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactCorruptError(
            f"{root}: no {MANIFEST_NAME}; this is not a complete aot artifact (an interrupted "
            "write, or files from another tool). Delete it and compile again"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactCorruptError(f"{path}: cannot read the manifest: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactCorruptError(
            f"{path}: the manifest is not valid JSON ({exc}); delete the entry and compile again"
        ) from exc
    if not isinstance(data, Mapping):
        raise ArtifactCorruptError(f"{path}: the manifest is not a JSON object")
    return Manifest.from_dict(data)
