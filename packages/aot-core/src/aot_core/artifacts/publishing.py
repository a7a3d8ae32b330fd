"""Writing artifacts: the manifest, the per-entry lock, staging and the atomic publish."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import platform
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aot_core.artifacts import environment
from aot_core.artifacts.environment import (
    _capability_from_device,
    cpu_isa,
    device_kind,
    package_version,
    torch_version,
    vllm_version,
)
from aot_core.artifacts.identity import _pins_for, model_config_hash
from aot_core.artifacts.manifest import (
    FILES_DIR,
    FORMAT_VERSION,
    MANIFEST_NAME,
    FileRecord,
    Manifest,
    RankRecord,
    _fsync_path,
    _sha256_file,
    _walk_files,
    fsync_tree,
    resolve_artifact_dir,
)
from aot_core.artifacts.verification import verify, verify_for_load
from aot_core.errors import ArtifactError, ArtifactIncompatibleError
from aot_core.spec import CompileSpec


def _present_ranks(ranks: Sequence[RankRecord], present: set[str]) -> tuple[RankRecord, ...]:
    return tuple(
        dataclasses.replace(r, files=tuple(f for f in r.files if f in present)) for r in ranks
    )


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
    ranks: Sequence[RankRecord] = (),
) -> Manifest:
    """Hash every file under ``artifact_dir/files`` and write ``manifest.json`` beside it.

    ``ranks``: each rank's files, for an artifact compiled for several processes; a file a
    rank names that is not in the artifact is dropped from that rank's record.

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
        capability = _capability_from_device(device) or next(
            iter(environment.cuda_capabilities()), None
        )
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
        ranks=_present_ranks(ranks, {r.path for r in records}),
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
