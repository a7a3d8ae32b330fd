"""Writing artifacts: the manifest, the per-entry lock, staging and the atomic publish."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import os
import platform
import re
import secrets
import shutil
import stat
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
    host_fingerprint,
    package_version,
    torch_version,
)
from aot_core.artifacts.identity import _pins_for, model_config_hash
from aot_core.artifacts.manifest import (
    FILES_DIR,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MANIFEST_TEMP_NAME,
    FileRecord,
    Manifest,
    RankRecord,
    _fsync_path,
    _sha256_file,
    _walk_files,
    check_owned,
    fsync_tree,
    is_empty_dir,
    manifest_problem,
    resolve_artifact_dir,
)
from aot_core.artifacts.stamps import StampBook
from aot_core.artifacts.verification import verify, verify_for_load
from aot_core.errors import ArtifactError, ArtifactIncompatibleError, NotOwnedError
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
    config_hash: str | None = None,
    host: str | None = None,
    ranks: Sequence[RankRecord] = (),
) -> Manifest:
    """Hash every file under ``artifact_dir/files`` and write ``manifest.json`` beside it.

    ``ranks``: each rank's files, for an artifact compiled for several processes; a file a
    rank names that is not in the artifact is dropped from that rank's record.

    Symbolic links are refused: an artifact must be self-contained. The manifest is written
    to a temporary name, flushed and renamed, so it is either complete or absent.
    ``config_hash`` and ``host`` default to the model's config hash and this host's
    fingerprint, the inputs ``entry_key`` used; re-sealing an existing artifact passes the
    recorded ones, so its key still matches its manifest wherever it is re-sealed.
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
    pins = _pins_for(backend)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        key=key,
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        backend=backend,
        backend_version=backend_version,
        aot_core_version=package_version("aot-core") or "",
        # Format 1 keeps these two pins in fields of their own too.
        torch_version=pins.get("torch", torch_version()),
        vllm_version=pins.get("vllm"),
        pins=MappingProxyType(pins),
        device=device,
        device_kind=kind,
        cuda_capability=capability,
        cpu_arch=platform.machine(),
        cpu_isa=cpu_isa(),
        spec=MappingProxyType(spec.compiled_part().to_dict()),
        spec_fingerprint=spec.fingerprint(),
        model=str(model),
        model_config_hash=config_hash or model_config_hash(model),
        files=tuple(records),
        host_fingerprint=host if host is not None else host_fingerprint(),
        extra=MappingProxyType(dict(extra or {})),
        ranks=_present_ranks(ranks, {r.path for r in records}),
    )
    tmp = root / MANIFEST_TEMP_NAME
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


INTENTS = ("writing", "using", "deleting")
"""What a lock holder records it is doing with the entry (in its lock file, beside its pid):
writing (compiling, importing: it may replace the entry), using (verifying and loading it
for a start, re-sealing what the engine added), deleting (``aot cache clear``)."""


def lock_holder(lock_fd: int) -> str:
    """Who holds a lock file another process has locked: "process N, which is <intent>"."""
    text = os.pread(lock_fd, 64, 0).decode(errors="replace").split()
    pid = text[0] if text else "?"
    intent = text[1] if len(text) > 1 and text[1] in INTENTS else ""
    # A lock file written before intents were recorded holds only the pid.
    return f"process {pid}, which " + (f"is {intent}" if intent else "holds")


# Errors that mean "this directory cannot be written by us", as opposed to a real failure.
_READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def is_read_only_error(exc: OSError) -> bool:
    """True when ``exc`` says the place is read-only (mount or permissions) for this process."""
    return exc.errno in _READ_ONLY_ERRNOS


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _open_lock(lock_path: Path, *, read_only_ok: bool) -> tuple[int, int] | None:
    """(descriptor, flock mode) for the lock file; None when a reader may go without one."""
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), fcntl.LOCK_EX
    except OSError as exc:
        if not (read_only_ok and is_read_only_error(exc)):
            raise
    # A read-only store: nobody can create the lock file, so a writer can only be one that
    # created it earlier; share its lock if it is there, else nobody can write here at all.
    try:
        return os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC), fcntl.LOCK_SH
    except FileNotFoundError:
        return None
    except OSError as exc:
        if is_read_only_error(exc):
            return None
        raise


def _wait_for_flock(
    fd: int,
    mode: int,
    *,
    target: Path,
    deadline: float | None,
    on_wait: Callable[[str], None] | None,
    timeout_s: float | None,
) -> None:
    announced = False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                held = f"for over {timeout_s:.0f} s" if timeout_s else "now"
                raise LockTimeoutError(
                    f"{target} is in use {held}: {lock_holder(fd)} {target.name}"
                ) from None
            if not announced and on_wait is not None:
                on_wait(f"waiting for {lock_holder(fd)} {target.name}")
                announced = True
            time.sleep(0.05)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def entry_lock(
    dest: str | os.PathLike[str],
    *,
    timeout_s: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    read_only_ok: bool = False,
    intent: str = "writing",
) -> Iterator[bool]:
    """Hold the ``flock`` that guards writes to the entry at ``dest``; yields True if exclusive.

    The lock file ``.<name>.lock`` lives beside ``dest``. Deleting a lock file is
    dangerous in general: a waiter that opened it before the deletion would lock the
    orphaned inode while a newcomer locks a new file, and both would "hold" the lock. So
    every locker, after its ``flock`` succeeds, checks that the path still names the inode
    it locked and starts over if not; with that rule the holder may delete the file. It
    does so on release when the entry is gone (never built, removed), so lock files exist
    only for entries that exist, not for every key ever tried. (An aot-core older than this
    rule must not share a cache with this one while entries are being removed.) A lock
    beside something aot did not write (a refused ``--out``) is deleted the same way.

    The kernel drops the lock when its holder dies, so a killed writer never blocks others.
    ``read_only_ok`` is for readers: where the lock file cannot be created (read-only media,
    a store owned by another user), take a shared lock on an existing lock file, or none at
    all when there is none (then nobody can write there either); yields False then.
    ``intent`` (one of ``INTENTS``) is written beside the pid, so a waiter can say what it
    waits for. ``timeout_s=0`` never waits: a held lock raises ``LockTimeoutError`` at once.
    """
    if intent not in INTENTS:
        raise ValueError(f"intent must be one of {INTENTS}, got {intent!r}")
    target = Path(dest)
    lock_path = _lock_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if not (read_only_ok and is_read_only_error(exc)):
            raise
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        opened = _open_lock(lock_path, read_only_ok=read_only_ok)
        if opened is None:
            yield False
            return
        fd, mode = opened
        try:
            _wait_for_flock(
                fd, mode, target=target, deadline=deadline, on_wait=on_wait, timeout_s=timeout_s
            )
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, lock_path):
            break
        os.close(fd)  # the holder deleted the file we waited on; lock the current one
    exclusive = mode == fcntl.LOCK_EX
    try:
        if exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {intent}".encode(), 0)
        try:
            yield exclusive
        finally:
            if exclusive:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    if manifest_problem(target) is not None or not (
                        target.exists() or target.is_symlink()
                    ):
                        lock_path.unlink()  # still held: see the docstring
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


def _leftover_re(dest: Path) -> re.Pattern[str]:
    # Exactly the names staging_dir and _trash_path make, so nothing else ever matches.
    return re.compile(rf"\.{re.escape(dest.name)}\.(staging|trash)-\d+-[0-9a-f]{{8}}")


def _trash_path(target: Path) -> Path:
    return target.parent / f"{_trash_prefix(target)}{os.getpid()}-{secrets.token_hex(4)}"


def _delete(path: Path) -> bool:
    """Delete a staging or trash path aot made; a link is unlinked, never followed."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return not (path.exists() or path.is_symlink())


def remove_leftovers(dest: str | os.PathLike[str]) -> list[Path]:
    """Delete staging and trash directories that dead writers left beside ``dest``.

    Call it only while holding ``entry_lock(dest)``: then no live process owns them. They
    are recognised by the exact names aot gives them (``.<name>.staging-<pid>-<hex>``,
    ``.<name>.trash-<pid>-<hex>``); a trash entry that is a symbolic link (a linked entry
    that was removed) is unlinked, its target left alone. Returns what was removed.
    """
    target = Path(dest)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    pattern = _leftover_re(target)
    for child in target.parent.iterdir():
        if pattern.fullmatch(child.name) and _delete(child):
            removed.append(child)
    return removed


def check_replaceable(dest: str | os.PathLike[str]) -> None:
    """Raise ``NotOwnedError`` unless ``dest`` is absent, an empty directory, or aot's."""
    target = Path(dest)
    if not is_empty_dir(target):
        check_owned(target, "replace")


def publish(staging: Path, dest: str | os.PathLike[str], *, replace: bool = True) -> Path:
    """Move a complete staging directory into place as ``dest`` (caller holds the lock).

    Files are flushed first, then the directory is renamed, so readers see either the old
    entry, no entry, or the complete new one. An existing ``dest`` is replaced only when
    ``replace`` and only if aot can prove it wrote it (``check_owned``); an empty directory
    is replaced by the rename itself, which fails if anything appeared in it meanwhile.
    Anything else raises ``NotOwnedError`` and is left untouched.
    """
    target = Path(dest)
    if not (staging / MANIFEST_NAME).is_file():
        raise ArtifactError(f"{staging}: no manifest; refusing to publish an incomplete artifact")
    fsync_tree(staging)
    trash: Path | None = None
    if (target.exists() or target.is_symlink()) and not is_empty_dir(target):
        if not replace:
            raise FileExistsError(errno.EEXIST, "artifact already exists", str(target))
        check_owned(target, "replace")
        trash = _trash_path(target)
        os.rename(target, trash)
    try:
        os.rename(staging, target)
    except OSError as exc:
        if trash is not None:
            with contextlib.suppress(OSError):
                os.rename(trash, target)  # put the previous entry back
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise NotOwnedError(
                f"refusing to replace {target}: something else appeared there while the "
                "artifact was being written; nothing was changed"
            ) from exc
        raise
    _fsync_path(target.parent, directory=True)
    if trash is not None:
        _delete(trash)
    return target


def remove_entry(dest: str | os.PathLike[str], *, timeout_s: float | None = 0.0) -> bool:
    """Delete an entry atomically (rename aside, then delete); False when it was absent.

    Only an entry aot can prove it wrote (``check_owned``) or an empty directory is
    removed; anything else raises ``NotOwnedError`` and stays as it was. A linked entry
    loses its link only. An entry another process has locked (a compile writing it, a
    start using it) raises ``LockTimeoutError`` at once by default: queued behind a
    compile, the deletion would remove the entry that compile had just published.
    """
    target = Path(dest)
    with entry_lock(target, timeout_s=timeout_s, intent="deleting"):
        remove_leftovers(target)
        if not (target.exists() or target.is_symlink()):
            return False
        if is_empty_dir(target):
            os.rmdir(target)  # fails, safely, if anything was put there meanwhile
            return True
        check_owned(target, "delete")
        discard_entry(target)
        return True


def discard_entry(dest: str | os.PathLike[str]) -> None:
    """Rename an entry aside under a name ``remove_leftovers`` knows, then delete it.

    The caller holds ``entry_lock(dest)`` and has proved the entry is aot's; a linked entry
    loses its link only, never its target's files.
    """
    target = Path(dest)
    trash = _trash_path(target)
    os.rename(target, trash)
    _fsync_path(target.parent, directory=True)
    _delete(trash)


def reusable_entry(
    dest: str | os.PathLike[str], *, key: str, backend: str, stamps: StampBook | None = None
) -> Manifest | None:
    """The manifest of ``dest`` if it may be loaded as entry ``key`` of ``backend``, else None.

    Takes no lock and writes nothing in the entry, so it works on read-only media; a writer
    replacing the entry meanwhile can only make the checksums fail, never pass. With
    ``stamps`` (``aot_core.artifacts.stamps``), files unchanged since a full check are not
    hashed again, and the stamps are saved when the entry is reusable.
    """
    try:
        existing = verify_for_load(dest, backend=backend, stamps=stamps)
    except ArtifactError:
        return None
    if existing.key != key:
        return None
    if stamps is not None:
        stamps.save()
    return existing


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
    passes ``verify_for_load`` is reused (unless ``force``); otherwise a fresh staging
    directory gets an empty manifest (so it is an artifact, ``artifact_root``, from the
    start), ``build(files_dir)`` fills it and returns ``{"device": ..., "extra": {...}}``,
    the real manifest is written and the directory is published with one rename. Returns
    (manifest, built). Concurrent callers wait for the first and then reuse its entry.
    Something at ``dest`` that aot did not write raises ``NotOwnedError`` before anything
    is built. Where the lock cannot be created (read-only media), a valid entry is still
    reused; only building needs write access.
    """
    target = Path(dest)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(entry_lock(target, on_wait=on_wait))
        except OSError as exc:
            existing = None if force else reusable_entry(target, key=key, backend=backend)
            if existing is None or not is_read_only_error(exc):
                raise
            return existing, False
        remove_leftovers(target)
        refused: ArtifactError | None = None
        if target.exists() and not force:
            try:
                existing = verify_for_load(target, backend=backend)
                if existing.key != key:
                    raise ArtifactIncompatibleError(
                        f"{target} holds another model or spec (entry {existing.key}, wanted {key})"
                    )
                return existing, False
            except ArtifactError as exc:
                refused = exc
        # Under the lock, where no aot writer is halfway through replacing it; after the
        # reuse check, which an entry passes only when every byte is as its manifest lists
        # (so a reused entry is read once, not twice), and before "compiling afresh" is said.
        check_replaceable(target)
        if refused is not None and on_refused is not None:
            on_refused(refused)
        with staging_dir(target) as staging:
            files = staging / FILES_DIR
            files.mkdir()
            entry_manifest = functools.partial(
                write_manifest,
                staging,
                key=key,
                backend=backend,
                backend_version=backend_version,
                spec=spec,
                model=model,
            )
            # An empty manifest first: while it builds, the backend's cache_dir is already
            # an artifact (artifact_root finds it), so it writes its files straight in.
            entry_manifest()
            info = build(files)
            manifest = entry_manifest(
                device=str(info.get("device") or "cpu"),
                extra=info.get("extra"),
                ranks=info.get("ranks") or (),
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
    the artifact instead of loading a half-written file. An artifact on read-only media
    (or in a store this user cannot write) is verified and used without a lock of its own
    and never re-sealed: reading needs no write access.
    """
    root = resolve_artifact_dir(artifact_dir)
    with entry_lock(root, on_wait=on_wait, read_only_ok=True, intent="using") as exclusive:
        manifest = verify_for_load(root, backend=backend)
        yield manifest
        if exclusive and not verify(root).ok:
            write_manifest(
                root,
                key=manifest.key,
                backend=manifest.backend,
                backend_version=manifest.backend_version,
                spec=CompileSpec.from_dict(manifest.spec),
                model=manifest.model,
                device=manifest.device,
                extra=manifest.extra,
                config_hash=manifest.model_config_hash,
                host=manifest.host_fingerprint,
            )
