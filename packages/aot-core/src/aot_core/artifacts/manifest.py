"""The manifest format: ``manifest.json`` beside ``files/``, and reading it back."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aot_core.errors import ArtifactCorruptError, NotOwnedError

if TYPE_CHECKING:
    from aot_core.stats import RankStats

FORMAT_VERSION = 1
"""Version of the manifest format; an artifact with a newer one is refused."""

FORMAT_MARKER = "aot-artifact"
"""The manifest's ``"format"`` value: what tells aot's manifest from any other manifest.json.

Manifests written before the marker existed have no ``"format"`` key; they are still read
(and still prove ownership) when every field of format 1 is present with its type.
"""

MAX_MANIFEST_BYTES = 64 << 20
"""A manifest larger than this is refused unread (a real one is a few KiB per thousand files)."""

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
    """The backend's "vllm" pin, when it has one (format 1 keeps it in a field of its own)."""

    pins: Mapping[str, str | None]
    """What the backend's ``Compiler.pins()`` read when it compiled (e.g. torch, vllm):
    versions that must match exactly to load it."""

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
    """``CompileSpec.fingerprint()`` of the spec (which ignores cache_dir)."""

    model: str
    """The model as given (path or name)."""

    model_config_hash: str
    """sha256 of the model's canonical config.json."""

    files: tuple[FileRecord, ...]
    """Every file of the artifact with its checksum and size."""

    host_fingerprint: str = ""
    """The host part of the entry key (``host_fingerprint()`` where it was compiled), so the
    key can be recomputed from the manifest alone; empty in manifests written before it."""

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
        """A JSON-compatible dict, with aot's format marker."""
        out: dict[str, Any] = {"format": FORMAT_MARKER}
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
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
        marker = data.get("format", FORMAT_MARKER)
        if marker != FORMAT_MARKER:
            raise ArtifactCorruptError(
                f"not an aot manifest (its format is {marker!r}, aot's is {FORMAT_MARKER!r})"
            )
        try:
            files = tuple(_file_record(f) for f in data["files"])
            return cls(
                format_version=_typed(data["format_version"], int, "format_version"),
                key=_typed(data["key"], str, "key"),
                created_utc=str(data["created_utc"]),
                backend=_typed(data["backend"], str, "backend"),
                backend_version=str(data["backend_version"]),
                aot_core_version=str(data.get("aot_core_version", "")),
                torch_version=_optional_str(data["torch_version"], "torch_version"),
                vllm_version=_optional_str(data["vllm_version"], "vllm_version"),
                pins=MappingProxyType(_pins(data["pins"])),
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
                host_fingerprint=str(data.get("host_fingerprint") or ""),
                extra=MappingProxyType(dict(data.get("extra") or {})),
                ranks=tuple(_rank_record(r) for r in data.get("ranks") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactCorruptError(
                f"the manifest is malformed ({type(exc).__name__}: {exc})"
            ) from exc

    def recorded_versions(self) -> dict[str, str | None]:
        """The versions format 1 also records in fields of their own, by pin name."""
        return {"torch": self.torch_version, "vllm": self.vllm_version}

    @property
    def total_size(self) -> int:
        """Sum of the file sizes in bytes."""
        return sum(f.size for f in self.files)


def rank_records(ranks: Iterable[RankStats]) -> tuple[RankRecord, ...]:
    """The manifest's record of each rank, from the ranks' stats (their files are relative to
    the backend's cache_dir, which is an artifact's ``files/``)."""
    return tuple(
        RankRecord(
            rank=r.rank,
            tensor_parallel_rank=r.tensor_parallel_rank,
            pipeline_parallel_rank=r.pipeline_parallel_rank,
            files=tuple(f"{FILES_DIR}/{Path(f).as_posix()}" for f in r.files),
        )
        for r in ranks
    )


def _rank_record(data: Mapping[str, Any]) -> RankRecord:
    return RankRecord(
        rank=int(data["rank"]),
        tensor_parallel_rank=int(data["tensor_parallel_rank"]),
        pipeline_parallel_rank=int(data["pipeline_parallel_rank"]),
        files=tuple(str(f) for f in data["files"]),
    )


def _typed(value: Any, kind: type, name: str) -> Any:
    # bool is an int in Python, never a valid count or version here
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{name} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _optional_str(value: Any, name: str) -> str | None:
    return None if value is None else str(_typed(value, str, name))


def _pins(value: Any) -> dict[str, str | None]:
    pins = dict(_typed(value, dict, "pins"))
    for package, version in pins.items():
        _optional_str(version, f"pins[{package!r}]")
    return pins


def _file_record(data: Any) -> FileRecord:
    size = _typed(data["size"], int, "files[].size")
    digest = _typed(data["sha256"], str, "files[].sha256")
    if size < 0 or len(digest) != 64:
        raise ValueError(f"files[]: bad size {size} or sha256 {digest!r}")
    return FileRecord(path=_typed(data["path"], str, "files[].path"), sha256=digest, size=size)


def _open_regular(path: Path) -> int:
    """A read-only descriptor of ``path`` if it is a regular file (never follows a link).

    O_NONBLOCK so that a FIFO planted under an expected name cannot hang the caller; the
    type is checked on the open descriptor, so a swap after a stat cannot fool it.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "is not a regular file", str(path))
    os.set_blocking(fd, True)
    return fd


def _sha256_file(path: Path) -> str:
    with os.fdopen(_open_regular(path), "rb") as fh:
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


def _read_manifest_data(path: Path) -> Mapping[str, Any]:
    """The JSON object in ``path``, read only if it is a regular file of sane size."""
    try:
        with os.fdopen(_open_regular(path), "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ArtifactCorruptError(
            f"{path.parent}: no {MANIFEST_NAME}; this is not a complete aot artifact (an "
            "interrupted write, or files from another tool)"
        ) from None
    except OSError as exc:
        raise ArtifactCorruptError(
            f"{path}: cannot read the manifest: {exc.strerror or exc}"
        ) from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactCorruptError(f"{path}: over {MAX_MANIFEST_BYTES} bytes; not an aot manifest")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or absurdly nested
        raise ArtifactCorruptError(f"{path}: the manifest is not valid JSON ({exc})") from exc
    if not isinstance(data, Mapping):
        raise ArtifactCorruptError(f"{path}: the manifest is not a JSON object")
    return data


def read_manifest(artifact_dir: str | os.PathLike[str]) -> Manifest:
    """Read and parse an artifact's manifest; missing or unreadable is ``ArtifactCorruptError``."""
    path = resolve_artifact_dir(artifact_dir) / MANIFEST_NAME
    try:
        return Manifest.from_dict(_read_manifest_data(path))
    except ArtifactCorruptError as exc:
        message = str(exc)
        raise ArtifactCorruptError(
            message if message.startswith(str(path.parent)) else f"{path}: {message}"
        ) from None


MANIFEST_TEMP_NAME = f".{MANIFEST_NAME}.tmp"
"""The name ``write_manifest`` writes to before its rename; one left by an interrupted write
is aot's own, like its staging directories (recognised by this exact name, at the root)."""

MAX_FOREIGN_NAMED = 5
"""How many foreign files a refusal names (then how many more there are)."""


def manifest_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` does not hold an intact aot manifest; None when it does, or is absent.

    An intact manifest is a regular ``manifest.json`` holding a JSON object with aot's
    format marker (or, written before the marker, every field of format 1) that parses
    completely. It says aot made the directory, not that aot wrote everything now in it:
    that is ``ownership_problem``. Alone it serves only where aot also chose the name
    (its scratch copies) and where nothing is deleted (whether a lock file may go).
    """
    return _manifest_and_problem(Path(path))[1]


def _manifest_and_problem(p: Path) -> tuple[Manifest | None, str | None]:
    if not (p.exists() or p.is_symlink()):
        return None, None
    if p.is_symlink() and not p.exists():
        return None, f"{p} is a broken symbolic link, not an aot artifact"
    if not p.is_dir():
        return None, f"{p} is a file, not an aot artifact directory"
    manifest = p / MANIFEST_NAME
    if not (manifest.exists() or manifest.is_symlink()):
        return None, f"{p} holds no {MANIFEST_NAME}, so it is not an aot artifact"
    try:
        data = _read_manifest_data(manifest)
        if "format" not in data and data.get("format_version") != 1:
            raise ArtifactCorruptError("it has neither aot's format marker nor format_version 1")
        return Manifest.from_dict(data), None
    except ArtifactCorruptError as exc:
        reason = str(exc).removeprefix(f"{manifest}: ")
        return None, f"{manifest} is not an intact aot manifest ({reason})"


def ownership_problem(path: str | os.PathLike[str]) -> str | None:
    """Why aot cannot prove that it wrote ``path``; None when it can, or nothing is there.

    The proof covers every byte that deleting or replacing ``path`` would lose: an intact
    aot manifest (``manifest_problem``), and every other file below it listed there with
    the size and sha256 it has on disk (a listed file that is absent loses nothing). An
    unlisted file, a link or special file inside, or a listed file whose bytes differ
    makes the whole directory someone else's, named in the answer (the first
    ``MAX_FOREIGN_NAMED``). The one exception is ``MANIFEST_TEMP_NAME`` at the top, which
    only an interrupted ``write_manifest`` leaves.

    Why the manifest alone is not enough: it is one file anyone can copy. A project
    directory holding a copy of a real entry's ``manifest.json`` beside its own sources
    was "aot's" by that rule and was deleted. With the checksums, a copied (or forged)
    manifest can only ever make aot delete bytes identical to ones an aot manifest
    records, i.e. a copy of compiled output that aot can produce again.

    What this costs, in the safe direction: a damaged entry (a file truncated, edited or
    bit-rotten; a file planted in it; engine output a crashed start left unlisted) is no
    longer aot's to delete or rebuild: ``aot compile``, ``aot cache clear`` and import
    refuse it (exit 10) and say so, and the user moves it away by hand after looking.
    Such damage does not happen through aot (entries are published whole by one rename),
    so it is rare, and when it happens a person should see it. The one place aot still
    deletes unlisted files is ``verify_for_load(discard_extra=True)``, which aot-vllm
    calls on its own store's entry under the entry's lock: only files below ``files/``
    (where the engine writes while it starts), only once every listed file has verified;
    anything unlisted elsewhere refuses the entry instead.

    No stronger proof (a per-store key signing manifests, a marker only aot can make) is
    needed for this: such a key sits in the same user-writable cache, so it would stop
    nobody who can forge a manifest, and those can delete the files anyway; against a
    careless copy, which is what loses data, the checksums already decide. A symbolic
    link is judged by its target's manifest alone (only the link is ever removed).
    """
    p = Path(path)
    manifest, problem = _manifest_and_problem(p)
    if manifest is None or p.is_symlink():
        return problem
    foreign = foreign_files(p, manifest)
    if not foreign:
        return None
    more = len(foreign) - MAX_FOREIGN_NAMED
    named = "; ".join(foreign[:MAX_FOREIGN_NAMED]) + (f"; and {more} more" if more > 0 else "")
    return (
        f"{p} holds files its aot manifest does not vouch for (not listed, or their bytes "
        f"differ from its checksums): {named}"
    )


def foreign_files(root: Path, manifest: Manifest) -> list[str]:
    """Each file below ``root`` the manifest does not vouch for, with why; sorted by path."""
    listed = {r.path: r for r in manifest.files}
    out: list[str] = []
    for rel, path in _walk_files(root):
        if rel in (MANIFEST_NAME, MANIFEST_TEMP_NAME):
            continue
        record = listed.get(rel)
        reason = "not listed in the manifest" if record is None else _differs(path, record)
        if path.is_symlink():
            reason = "a symbolic link"
        if reason:
            out.append(f"{rel} ({reason})")
    return out


def _differs(path: Path, record: FileRecord) -> str:
    """Why ``path`` is not the file ``record`` describes; "" when it is."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size != record.size:
            return f"{st.st_size} bytes, the manifest says {record.size}"
        if _sha256_file(path) != record.sha256:
            return "its sha256 differs from the manifest's"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return ""


def check_owned(path: str | os.PathLike[str], action: str) -> None:
    """Raise ``NotOwnedError`` unless aot can prove it wrote ``path`` (see ``ownership_problem``).

    ``action`` says what was refused ("replace", "delete"), for the message.
    """
    problem = ownership_problem(path)
    if problem is not None:
        raise NotOwnedError(
            f"refusing to {action} {path}: {problem}. aot deletes or replaces only what it "
            "can prove it wrote (an intact aot manifest listing every file with its "
            "checksum); nothing was changed, whatever the flags. Look at what it holds, then "
            "move it away yourself (for example `mv` it elsewhere), or choose another path"
        )


def is_empty_dir(path: Path) -> bool:
    """True for a real (not linked) directory with nothing in it: replacing it loses nothing."""
    try:
        return not path.is_symlink() and path.is_dir() and not any(os.scandir(path))
    except OSError:
        return False
