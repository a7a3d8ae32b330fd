"""The per-spec compile cache: one verified aot-core artifact entry per (spec, model, versions).

Where it lives follows ``CompileSpec.cache_dir``: an aot artifact's ``files/`` directory is
used as the entry itself (``ArtifactFiles``); any other directory (or None: aot's default
store) is the root of a store of entries, one per key (``CacheEntry``).

An entry is ``<store>/entries/<key>/`` with ``manifest.json`` and ``files/``; vLLM's cache
root (``VLLM_CACHE_ROOT``) is ``files/vllm`` and Inductor's (``TORCHINDUCTOR_CACHE_DIR``)
is ``files/inductor``. The key folds in the spec fingerprint, the model's config hash,
the torch, vLLM and aot-vllm versions and the host, so anything that invalidates compiled
code gets a new entry instead of a stale load.

Compiled files hold code that runs when loaded, so an entry is verified against its
manifest before vLLM sees it. An entry that cannot be used (a listed file missing, built
for another environment) is moved aside and rebuilt, with a warning that says what was
wrong; one holding bytes its manifest does not vouch for (a file changed or truncated) is
not provably aot's and raises ``NotOwnedError`` instead (``ownership_problem``). The
manifest is rewritten after every successful start, because vLLM legitimately adds to its
cache (new shapes, a recompile after a failed load).

An entry is only ever deleted or replaced when aot can prove it wrote it: an intact aot
manifest listing every file with its checksum (``check_owned``). So that this holds from
the first byte, a new entry is made in a staging directory with an in-progress manifest
(``IN_PROGRESS``, no files) and published with one rename before vLLM writes anything.
What a start that dies before sealing wrote stays unlisted below ``files/``; the next start
discards it before vLLM reads anything (``verify_for_load``'s ``discard_extra``, the one
place aot deletes files its manifest does not list), while ``aot cache clear`` refuses
such an entry. A directory at an entry's path without a manifest (another tool's, or its
manifest deleted) raises ``NotOwnedError`` and is left untouched.

A store aot cannot write (read-only media such as an NFS export, another user's store) is
still served from, and nothing is written to it (no lock file, no leftovers removed,
nothing seeded, no seal). Inductor takes file locks inside its cache directory even when
it only loads, so the entry is copied to a private scratch directory under aot's cache
root (``scratch/<key>-<pid>-<hex>``, removed when the process exits, or by a later start
once that process is gone), the copy is verified, and the engine runs from it. A start it
cannot serve, because the entry is missing or damaged, raises ``ReadOnlyCacheError``
instead of compiling.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aot_core.artifacts import (
    ArtifactStore,
    Manifest,
    RankRecord,
    artifact_root,
    check_owned,
    default_cache_root,
    discard_entry,
    entry_key,
    entry_lock,
    is_read_only_error,
    manifest_problem,
    publish,
    remove_leftovers,
    staging_dir,
    verify_for_load,
    world_problem,
    write_manifest,
)
from aot_core.errors import AOTError, ArtifactError, ArtifactIncompatibleError
from aot_core.spec import CompileSpec

BACKEND = "vllm"
EntryState = Literal["absent", "intact", "refused"]

# Suffixes of files that hold compiled code or compiled graphs (Inductor's generated
# sources and shared objects, FX-graph and AOTAutograd cache entries, vLLM's artifacts).
_COMPILED_DIRS = ("inductor", "torch_compile_cache")


IN_PROGRESS = "in_progress"
"""Key of a new entry's manifest ``extra``: the entry was made, never sealed after a start
(nothing in it is vouched for; the next start compiles afresh)."""


class CacheWarning(UserWarning):
    """A cache entry could not be used (damaged, incompatible) and is being rebuilt."""


class ReadOnlyCacheError(AOTError, PermissionError):
    """The store cannot be written and holds no usable entry for this start.

    A ``PermissionError`` (errno ``EROFS`` on read-only media, else ``EACCES``), so the
    ``aot`` command reports it as exit 10 (cache not writable)."""


@dataclass(frozen=True, kw_only=True)
class FileState:
    """Size and modification time of one cached file."""

    size: int
    """Bytes."""

    mtime_ns: int
    """Modification time in nanoseconds."""


Snapshot = dict[str, FileState]


@dataclass(frozen=True, kw_only=True)
class OpenedEntry:
    """What was found when an entry was opened for a start."""

    state: EntryState
    """absent (first compile), intact (verified), or refused (damaged, moved aside)."""

    problem: str = ""
    """Why a refused entry could not be used."""

    extra: Mapping[str, Any]
    """The ``extra`` record of the previous manifest (e.g. a known AOT load failure)."""


class CacheEntry:
    """One entry of the store, for one spec and model."""

    def __init__(
        self, *, spec: CompileSpec, model: str, backend_version: str, root: str | None = None
    ) -> None:
        self.store = ArtifactStore(root if root is not None else spec.cache_dir)
        self.spec = spec
        self.model = model
        self.backend_version = backend_version
        self.key = entry_key(
            backend=BACKEND, backend_version=backend_version, model=model, spec=spec
        )
        self.path = self.store.path(self.key)
        self.read_only = False
        """Set while locked: the store cannot be written, so the entry is only read."""
        self.scratch: Path | None = None
        """Where a read-only store's entry is copied to run from (decided here, before the
        engine's cache paths are, because Inductor must be able to write its locks)."""
        if not _writable(self.store.root):
            name = f"{self.key}-{os.getpid()}-{secrets.token_hex(4)}"
            self.scratch = default_cache_root() / "scratch" / name

    @property
    def files_dir(self) -> Path:
        """The directory the engine's caches live in: the entry's ``files/`` (the directory
        the manifest covers), or its verified scratch copy's for a read-only store."""
        return (self.scratch or self.path) / "files"

    @property
    def vllm_root(self) -> Path:
        """``VLLM_CACHE_ROOT`` for engines of this entry."""
        return self.files_dir / "vllm"

    @property
    def inductor_dir(self) -> Path:
        """``TORCHINDUCTOR_CACHE_DIR`` for engines of this entry."""
        return self.files_dir / "inductor"

    @property
    def log_dir(self) -> Path:
        """Where start logs go (beside, not inside, the verified files; in aot's own store
        when this one cannot be written)."""
        if not _writable(self.store.root):
            return default_cache_root() / "logs" / self.key
        return self.store.root / "logs" / self.key

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the entry's lock (one start or seal at a time per entry); in a store that
        cannot be written, take none of its own and mark the entry ``read_only``."""
        with contextlib.ExitStack() as stack:
            exclusive = False
            try:
                self.store.entries_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                if not is_read_only_error(exc):
                    raise
            if self.store.entries_dir.is_dir():  # else there is nothing to lock or read
                exclusive = stack.enter_context(
                    entry_lock(self.path, read_only_ok=True, intent="using")
                )
            self.read_only = not exclusive
            try:
                yield
            finally:
                self.read_only = False

    def open(self) -> OpenedEntry:
        """Verify the entry (call with the lock held); move a damaged one of aot's aside."""
        if self.read_only:
            return self._open_read_only()
        remove_leftovers(self.path)
        if not (self.path.exists() or self.path.is_symlink()):
            self._create()
            return OpenedEntry(state="absent", extra={})
        try:
            manifest = verify_for_load(self.path, backend=BACKEND, discard_extra=True)
            refuse_other_world(manifest, self.spec, self.path)
        except ArtifactIncompatibleWorld:
            raise
        except ArtifactError as exc:
            problem = str(exc)
            check_owned(self.path, "replace")  # before a word of "moved aside" is said
            warnings.warn(
                f"aot-vllm: the compile cache entry {self.path} cannot be used ({problem}); "
                "it was moved aside and the model is compiled again",
                CacheWarning,
                stacklevel=3,
            )
            self._discard()
            self._create()
            return OpenedEntry(state="refused", problem=problem, extra={})
        if manifest.extra.get(IN_PROGRESS):
            # Made by a start that never sealed it; whatever it wrote was unlisted and has
            # just been discarded, so this start compiles as the first one would.
            self._make_dirs()
            return OpenedEntry(state="absent", extra={})
        return OpenedEntry(state="intact", extra=dict(manifest.extra))

    def _open_read_only(self) -> OpenedEntry:
        """Verify without writing anything; a start that would have to write is refused."""
        if not (self.path.exists() or self.path.is_symlink()):
            problem = "it holds no entry for this model, spec and versions"
        else:
            try:
                manifest = verify_for_load(self.path, backend=BACKEND)
                refuse_other_world(manifest, self.spec, self.path)
            except ArtifactIncompatibleWorld:
                raise
            except ArtifactError as exc:
                problem = f"its entry cannot be used: {exc}"
            else:
                if not manifest.extra.get(IN_PROGRESS):
                    return OpenedEntry(state="intact", extra=dict(self._copy_to_scratch()))
                problem = "its entry was never completed"
        read_only_media = _on_read_only_media(self.store.root)
        raise ReadOnlyCacheError(
            errno.EROFS if read_only_media else errno.EACCES,
            f"the compile cache {self.store.root} is "
            f"{'on read-only media' if read_only_media else 'not writable by this user'} and "
            f"{problem}, so nothing can be compiled into it; start once with a writable "
            "cache_dir (then copy the entry there), or point cache_dir at a writable directory",
            str(self.path),
        )

    def _copy_to_scratch(self) -> Mapping[str, Any]:
        """Copy a verified read-only entry to ``scratch`` and verify the copy (what the engine
        reads is what was verified); returns the manifest's ``extra``."""
        if self.scratch is None:  # the store became read-only after this entry was made
            return verify_for_load(self.path, backend=BACKEND).extra
        _remove_dead_scratch(self.scratch.parent)
        self.scratch.parent.mkdir(parents=True, exist_ok=True)
        atexit.register(shutil.rmtree, self.scratch, ignore_errors=True)
        shutil.copytree(self.path, self.scratch, symlinks=True)
        return verify_for_load(self.scratch, backend=BACKEND).extra

    def seal(
        self, *, device: str, extra: Mapping[str, Any], ranks: Sequence[RankRecord] = ()
    ) -> None:
        """Write the manifest over the entry's current files (call with the lock held);
        ``ranks``: each rank's files, for a model split over several processes. Nothing to
        do in a store that cannot be written."""
        if self.read_only:
            return
        write_manifest(
            self.path,
            key=self.key,
            backend=BACKEND,
            backend_version=self.backend_version,
            spec=self.spec,
            model=self.model,
            device=device,
            extra=dict(extra),
            ranks=ranks,
        )

    def snapshot(self) -> Snapshot:
        """Every file under ``files/`` with its size and mtime."""
        out: Snapshot = {}
        root = self.files_dir
        if not root.is_dir():
            return out
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                full = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    st = full.lstat()
                    out[str(full.relative_to(root))] = FileState(
                        size=st.st_size, mtime_ns=st.st_mtime_ns
                    )
        return out

    @property
    def shared_modelinfos(self) -> Path:
        """Machine-wide copy of vLLM's model-inspection results (not compiled code).

        It lives under aot's default cache root, not this entry's store, for the same
        reason vLLM keeps its own under ``~/.cache/vllm``: every start on the machine, in
        any cache directory, eager or compiled, can skip the inspection once one has run.
        """
        return default_cache_root() / "shared" / "vllm-modelinfos"

    def seed_modelinfos(self) -> int:
        """Copy the shared model-inspection results into this entry; returns how many.

        Without them vLLM inspects the architecture in a fresh subprocess (tens of seconds
        on a small CPU) on the first start of every entry. vLLM checks each file against a
        hash of the model's source module, so a stale one is ignored, never trusted.
        """
        source = self.shared_modelinfos
        target = self.vllm_root / "modelinfos"
        if self.read_only or not source.is_dir():
            return 0
        copied = 0
        for item in source.glob("*.json"):
            dest = target / item.name
            if not dest.exists():
                target.mkdir(parents=True, exist_ok=True)
                _atomic_copy(item, dest)
                copied += 1
        return copied

    def share_modelinfos(self) -> None:
        """Publish this entry's model-inspection results to the store (best effort)."""
        source = self.vllm_root / "modelinfos"
        if not source.is_dir():
            return
        with contextlib.suppress(OSError):
            for item in source.glob("*.json"):
                dest = self.shared_modelinfos / item.name
                if not dest.exists() or dest.read_bytes() != item.read_bytes():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    _atomic_copy(item, dest)

    def _make_dirs(self, root: Path | None = None) -> None:
        files = self.files_dir if root is None else root / "files"
        for d in (files / "vllm", files / "inductor"):
            d.mkdir(parents=True, exist_ok=True)

    def _create(self) -> None:
        """Make the entry with an in-progress manifest, published with one rename, so it is
        provably aot's before vLLM writes a byte into it (a crash leaves a staging
        directory that ``remove_leftovers`` recognises, or this marked entry)."""
        with staging_dir(self.path) as staging:
            self._make_dirs(staging)
            write_manifest(
                staging,
                key=self.key,
                backend=BACKEND,
                backend_version=self.backend_version,
                spec=self.spec,
                model=self.model,
                extra={IN_PROGRESS: True},
            )
            publish(staging, self.path, replace=False)

    def _discard(self) -> None:
        """Move the entry aside and delete it; only an entry aot can prove it wrote."""
        check_owned(self.path, "delete")
        discard_entry(self.path)


class ArtifactIncompatibleWorld(ArtifactIncompatibleError):
    """A compile-cache entry or artifact built for another world size (TP x PP) than the
    start asks for. It is refused, never moved aside or rebuilt in place: it is intact, and
    the other world may still need it."""


def refuse_other_world(manifest: Manifest, spec: CompileSpec, path: Path) -> None:
    """Raise ``ArtifactIncompatibleWorld`` when ``manifest`` was built for another world."""
    problem = world_problem(
        manifest,
        tensor_parallel_size=spec.tensor_parallel_size,
        pipeline_parallel_size=spec.pipeline_parallel_size,
    )
    if problem:
        raise ArtifactIncompatibleWorld(f"{path}: refusing its compiled code: {problem}")


class ArtifactFiles(CacheEntry):
    """``spec.cache_dir`` is an aot artifact's ``files/`` (``aot compile``, ``aot bench``):
    the artifact is the entry, so vLLM's caches go straight into it, with no store nested
    inside. Its owner (aot-core's workflow) holds the artifact's lock and writes its
    manifest; this entry verifies it before vLLM reads anything and otherwise keeps out of
    its way (no lock, no seal, nothing moved aside: a refused artifact raises)."""

    def __init__(self, *, spec: CompileSpec, model: str, backend_version: str, root: Path) -> None:
        super().__init__(spec=spec, model=model, backend_version=backend_version)
        self.path = root

    @property
    def log_dir(self) -> Path:
        """Start logs go to aot's own store, never into the artifact: they are not compiled
        code, and a file written before verification would be unlisted there."""
        return default_cache_root() / "logs" / self.key

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The artifact's owner holds its lock for the whole start."""
        yield

    def open(self) -> OpenedEntry:
        """Verify the artifact (``ArtifactError`` if it is damaged or built elsewhere); on
        read-only media, without writing to it."""
        self.read_only = not _writable(self.files_dir)
        manifest = verify_for_load(self.path, backend=BACKEND, discard_extra=not self.read_only)
        if manifest.files:
            refuse_other_world(manifest, self.spec, self.path)
        if not self.read_only:
            self._make_dirs()
        state: EntryState = "intact" if manifest.files else "absent"
        return OpenedEntry(state=state, extra=dict(manifest.extra))

    def seal(
        self, *, device: str, extra: Mapping[str, Any], ranks: Sequence[RankRecord] = ()
    ) -> None:
        """Nothing to do: the artifact's owner writes its manifest."""


def open_entry(*, spec: CompileSpec, model: str, backend_version: str) -> CacheEntry:
    """The entry a start uses: the artifact ``spec.cache_dir`` belongs to, if any, else an
    entry of the store rooted at ``spec.cache_dir`` (aot's default store when None)."""
    root = artifact_root(spec.cache_dir)
    if root is not None:
        return ArtifactFiles(spec=spec, model=model, backend_version=backend_version, root=root)
    return CacheEntry(spec=spec, model=model, backend_version=backend_version)


def _writable(directory: Path) -> bool:
    """Whether this process could create files in ``directory`` (or, while it does not exist
    yet, in the nearest existing directory above it)."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK)
    return False


_SCRATCH_RE = re.compile(r".+-(?P<pid>\d+)-[0-9a-f]{8}")


def _remove_dead_scratch(directory: Path) -> None:
    """Delete scratch copies whose process is gone (killed before its exit handler ran);
    only names aot gives them, holding an aot manifest (the copy's). The manifest alone
    suffices here, unlike for entries (``ownership_problem``): aot chose the name, in its
    own scratch directory, and the engine that ran from the copy wrote unlisted files."""
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        match = _SCRATCH_RE.fullmatch(child.name)
        if match is None or _alive(int(match["pid"])) or manifest_problem(child) is not None:
            continue
        shutil.rmtree(child, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _on_read_only_media(directory: Path) -> bool:
    for candidate in (directory, *directory.parents):
        with contextlib.suppress(OSError):
            return bool(os.statvfs(candidate).f_flag & os.ST_RDONLY)
    return False


def _atomic_copy(source: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def compiled_files(snapshot: Snapshot) -> set[str]:
    """The files of a snapshot that hold compiled code or graphs."""
    return {
        rel
        for rel in snapshot
        if rel.split(os.sep, 1)[0] in _COMPILED_DIRS
        or f"{os.sep}torch_compile_cache{os.sep}" in rel
        or f"{os.sep}torch_aot_compile{os.sep}" in rel
    }


def written_files(before: Snapshot, after: Snapshot) -> set[str]:
    """Compiled files created or rewritten between two snapshots."""
    changed = set()
    for rel in compiled_files(after):
        old = before.get(rel)
        new = after[rel]
        if old is None or old.size != new.size or old.mtime_ns != new.mtime_ns:
            changed.add(rel)
    return changed


__all__ = [
    "IN_PROGRESS",
    "ArtifactFiles",
    "ArtifactIncompatibleWorld",
    "CacheEntry",
    "CacheWarning",
    "FileState",
    "OpenedEntry",
    "ReadOnlyCacheError",
    "Snapshot",
    "compiled_files",
    "open_entry",
    "refuse_other_world",
    "written_files",
]
