"""The backend's own compile cache: one verified aot-core store entry per model config,
spec and versions (the shape of aot-vllm's ``cache.py``).

When ``spec.cache_dir`` is not inside an aot artifact, it (else aot's cache root) is the
root of an ``aot_core.artifacts.ArtifactStore``; a start's caches live in the entry
``<root>/entries/<key>/files/``, laid out as in an ``aot compile`` artifact
(``files/<plan key>/{aoti/, inductor/, portable_cache.bin}``), so ``aot cache ls``, ``verify``,
``export``, ``import`` and ``clear`` handle both alike.

The key (``entry_key``) is made of what aot-core's manifest check recomputes (backend,
versions, pins, host, spec fingerprint, model-config hash) and names the model type, not
the checkpoint: compiled code takes the weights as inputs, so one entry serves every
checkpoint of an architecture.

A start holds the entry's lock (``opened``): an absent entry is published first with an
in-progress manifest that lists no files (so it is provably aot's before a compiled byte
is written), an existing one passes ``verify_for_load`` before anything in it is read
(unlisted files below ``files/``, left by a start that died, are discarded), and after the
steps are ready the manifest is rewritten over what the start added. An entry that cannot
be used (a listed file missing, built for another environment) is moved aside and
rebuilt, with a ``CacheWarning``; one holding bytes its manifest does not vouch for is not
provably aot's and raises ``NotOwnedError`` (exit 8), left untouched. A store this process
cannot write is read from (a sealed entry is used without writing anything) and otherwise
refused with ``PermissionError`` (exit 10).

Directories of the layout before this module (``<root>/<plan key>/``, by default
``~/.cache/aot/legacy/``) are neither read nor touched: the first start compiles afresh into
an entry, and the old directory stays for its owner to delete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.artifacts import (
    FILES_DIR,
    ArtifactStore,
    check_owned,
    discard_entry,
    entry_lock,
    host_fingerprint,
    publish,
    remove_leftovers,
    staging_dir,
    stat_files,
    verify_for_load,
    write_manifest,
)
from aot_core.artifacts.identity import key_digest, key_prefix
from aot_core.artifacts.manifest import FORMAT_VERSION
from aot_core.errors import ArtifactError, ArtifactIncompatibleError
from aot_core.spec import CompileSpec

BACKEND = "legacy"

IN_PROGRESS = "in_progress"
"""Key of a new entry's manifest ``extra``: made, never sealed after a start (nothing in it
is vouched for; the next start compiles afresh)."""


KEY_IGNORES = frozenset({"aoti", "package_dir", "persistent_cache", "threads"})
"""``backend_options`` that decide where compiled code comes from, or how it runs, never
what it is: left out of an entry's key."""


class CacheWarning(UserWarning):
    """A cache entry could not be used (files missing, incompatible) and is being rebuilt."""


@dataclass(frozen=True, kw_only=True)
class StoreEntry:
    """The entry of a store that one start's compile caches live in."""

    store: ArtifactStore
    """The store (``spec.cache_dir``, else aot's cache root)."""

    key: str
    """The entry's name (``entry_key``)."""

    spec: CompileSpec
    """The spec the manifest records."""

    model: str
    """What the manifest names as the model (the path, or the class of a module passed in)."""

    config_hash: str
    """sha256 of the model's config (``config_sha256``)."""

    backend_version: str
    """aot-legacy's version."""

    @property
    def path(self) -> Path:
        """The entry directory."""
        return self.store.path(self.key)

    @property
    def files_dir(self) -> Path:
        """Where the keyed cache directories go (what the manifest covers)."""
        return self.path / FILES_DIR


def config_sha256(config: Mapping[str, Any]) -> str:
    """sha256 of the config as canonical JSON (``model_config_hash``'s formula), without
    the fields that name a checkpoint rather than describe the graph."""
    skip = {"_name_or_path", "name_or_path", "_commit_hash", "transformers_version"}
    clean = {k: v for k, v in config.items() if k not in skip}
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_key(*, config_hash: str, model_type: str, spec: CompileSpec, backend_version: str) -> str:
    """``legacy-<model type>-<digest>``: the digest is ``key_digest`` of exactly what the
    manifest records, so aot-core's consistency check recomputes it. The pins are read
    as ``write_manifest`` reads them: the registered backend's ``pins()``."""
    from aot_core.registry import installed_backends

    registered = installed_backends().get(BACKEND)
    digest = key_digest(
        format_version=FORMAT_VERSION,
        backend=BACKEND,
        backend_version=backend_version,
        spec_fingerprint=spec.fingerprint(),
        model_config_hash=config_hash,
        pins=dict(registered.pins()) if registered is not None else {},
        host=host_fingerprint(),
    )
    label = "".join(c if c.isalnum() or c in "._-" else "-" for c in model_type)[:40]
    return f"{key_prefix(BACKEND)}{label.strip('-.') or 'model'}-{digest}"


def store_entry(
    *, root: str | None, spec: CompileSpec, model: str, config: Mapping[str, Any], version: str
) -> StoreEntry:
    """The entry for a model with ``config`` started with ``spec``, in the store at ``root``.

    The options that do not change compiled code (``KEY_IGNORES``) are left out of the spec
    the entry records, so ``compile_model`` with ``aoti`` off and ``compile_model_aot`` of
    one model share one entry, as they shared one cache directory before.
    """
    options = {k: v for k, v in spec.backend_options.items() if k not in KEY_IGNORES}
    recorded = spec.replace(cache_dir=None, backend_options=options)
    config_hash = config_sha256(config)
    key = entry_key(
        config_hash=config_hash,
        model_type=str(config.get("model_type") or "model"),
        spec=recorded,
        backend_version=version,
    )
    return StoreEntry(
        store=ArtifactStore(root),
        key=key,
        spec=recorded,
        model=model,
        config_hash=config_hash,
        backend_version=version,
    )


@contextlib.contextmanager
def opened(entry: StoreEntry) -> Iterator[bool]:
    """Hold ``entry`` for one start: lock, verify (or create), yield, seal what was added.

    Yields True when the start may write into ``entry.files_dir``; False for a store this
    process cannot write, whose sealed entry is then only read. The manifest is rewritten
    only when the block exits normally and a file changed: a failed start's files stay
    unlisted, and the next start discards them before reading anything.
    """
    path = entry.path
    with contextlib.suppress(OSError):  # read-only: entry_lock(read_only_ok) says so below
        entry.store.entries_dir.mkdir(parents=True, exist_ok=True)
    if not entry.store.entries_dir.is_dir():  # nothing to lock or read, nor can there be
        _check_readable(entry)
    with entry_lock(path, read_only_ok=True, intent="using") as exclusive:
        if not exclusive:
            _check_readable(entry)
            yield False
            return
        remove_leftovers(path)
        in_progress = _open_writable(entry)
        before = _snapshot(entry.files_dir)
        yield True
        if in_progress or _snapshot(entry.files_dir) != before:
            _seal(entry)


def _open_writable(entry: StoreEntry) -> bool:
    """Verify the entry, create it when absent, move an unusable one of aot's aside;
    returns whether it is (now) an in-progress entry."""
    path = entry.path
    if not (path.exists() or path.is_symlink()):
        _create(entry)
        return True
    try:
        manifest = verify_for_load(path, backend=BACKEND, discard_extra=True)
    except ArtifactError as exc:
        check_owned(path, "replace")  # NotOwnedError before a word of "moved aside" is said
        warnings.warn(
            f"aot-legacy: the compile cache entry {path} cannot be used ({exc}); it was moved "
            "aside and the model is compiled again",
            CacheWarning,
            stacklevel=4,
        )
        discard_entry(path)
        _create(entry)
        return True
    if manifest.key != entry.key:
        # Intact, only under another name (renamed by hand): someone's to sort out.
        raise ArtifactIncompatibleError(
            f"{path} holds the intact entry {manifest.key}, not {entry.key}; move it to "
            f"{entry.store.entries_dir / manifest.key} or away, then start again"
        )
    return bool(manifest.extra.get(IN_PROGRESS))


def _check_readable(entry: StoreEntry) -> None:
    """A store that cannot be written: its entry must be sealed and verify, or the start
    is refused (nothing can be compiled into it)."""
    problem = "it holds no entry for this model config, spec and versions"
    if entry.path.exists():
        try:
            manifest = verify_for_load(entry.path, backend=BACKEND)
        except ArtifactError as exc:
            problem = f"its entry cannot be used: {exc}"
        else:
            if not manifest.extra.get(IN_PROGRESS):
                return
            problem = "its entry was never completed"
    raise PermissionError(
        errno.EACCES,
        f"the compile cache {entry.store.root} cannot be written by this process and "
        f"{problem}; point cache_dir at a writable directory",
        str(entry.path),
    )


def _create(entry: StoreEntry) -> None:
    """Publish the entry with an in-progress manifest (no files) in one rename, so it is
    provably aot's before anything is compiled into it."""
    with staging_dir(entry.path) as staging:
        (staging / FILES_DIR).mkdir()
        _write(entry, staging, extra={IN_PROGRESS: True})
        publish(staging, entry.path, replace=False)


def _seal(entry: StoreEntry) -> None:
    _write(entry, entry.path, extra={})


def _write(entry: StoreEntry, directory: Path, *, extra: Mapping[str, Any]) -> None:
    write_manifest(
        directory,
        key=entry.key,
        backend=BACKEND,
        backend_version=entry.backend_version,
        spec=entry.spec,
        model=entry.model,
        extra=extra,
        config_hash=entry.config_hash,
    )


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file below ``root`` (aot-core's ``stat_files``)."""
    return {name: (st.st_size, st.st_mtime_ns) for name, st in stat_files(root).stats.items()}
