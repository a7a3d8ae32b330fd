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
manifest before vLLM sees it. A damaged entry (a file changed, truncated or missing, or
the manifest gone) is moved aside and rebuilt, with a warning that says what was wrong.
The manifest is rewritten after every successful start, because vLLM legitimately adds
to its cache (new shapes, a recompile after a failed load).
"""

from __future__ import annotations

import contextlib
import os
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
    default_cache_root,
    entry_key,
    entry_lock,
    remove_leftovers,
    verify_for_load,
    world_problem,
    write_manifest,
)
from aot_core.errors import ArtifactError, ArtifactIncompatibleError
from aot_core.spec import CompileSpec

BACKEND = "vllm"
EntryState = Literal["absent", "intact", "refused"]

# Suffixes of files that hold compiled code or compiled graphs (Inductor's generated
# sources and shared objects, FX-graph and AOTAutograd cache entries, vLLM's artifacts).
_COMPILED_DIRS = ("inductor", "torch_compile_cache")


class CacheWarning(UserWarning):
    """A cache entry could not be used (damaged, incompatible) and is being rebuilt."""


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

    @property
    def files_dir(self) -> Path:
        """The directory the manifest covers."""
        return self.path / "files"

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
        """Where start logs go (beside, not inside, the verified files)."""
        return self.store.root / "logs" / self.key

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the entry's lock (one start or seal at a time per entry)."""
        self.store.entries_dir.mkdir(parents=True, exist_ok=True)
        with entry_lock(self.path):
            yield

    def open(self) -> OpenedEntry:
        """Verify the entry (call with the lock held); move a damaged one aside."""
        remove_leftovers(self.path)
        if not self.path.exists():
            self._make_dirs()
            return OpenedEntry(state="absent", extra={})
        try:
            manifest = verify_for_load(self.path, backend=BACKEND, discard_extra=True)
            refuse_other_world(manifest, self.spec, self.path)
        except ArtifactIncompatibleWorld:
            raise
        except ArtifactError as exc:
            problem = str(exc)
            warnings.warn(
                f"aot-vllm: the compile cache entry {self.path} cannot be used ({problem}); "
                "it was moved aside and the model is compiled again",
                CacheWarning,
                stacklevel=3,
            )
            self._discard()
            self._make_dirs()
            return OpenedEntry(state="refused", problem=problem, extra={})
        return OpenedEntry(state="intact", extra=dict(manifest.extra))

    def seal(
        self, *, device: str, extra: Mapping[str, Any], ranks: Sequence[RankRecord] = ()
    ) -> None:
        """Write the manifest over the entry's current files (call with the lock held);
        ``ranks``: each rank's files, for a model split over several processes."""
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
        if not source.is_dir():
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

    def _make_dirs(self) -> None:
        for d in (self.vllm_root, self.inductor_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _discard(self) -> None:
        trash = self.path.parent / f".{self.path.name}.trash-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(self.path, trash)
        shutil.rmtree(trash, ignore_errors=True)


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
        """Verify the artifact (``ArtifactError`` if it is damaged or built elsewhere)."""
        manifest = verify_for_load(self.path, backend=BACKEND, discard_extra=True)
        if manifest.files:
            refuse_other_world(manifest, self.spec, self.path)
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
    "ArtifactFiles",
    "ArtifactIncompatibleWorld",
    "CacheEntry",
    "CacheWarning",
    "FileState",
    "OpenedEntry",
    "Snapshot",
    "compiled_files",
    "open_entry",
    "refuse_other_world",
    "written_files",
]
