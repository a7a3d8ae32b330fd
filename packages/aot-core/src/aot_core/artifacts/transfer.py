"""Moving artifacts between machines: export to one tar file, checked import into a store."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path

from aot_core.artifacts.manifest import FILES_DIR, MANIFEST_NAME, Manifest, resolve_artifact_dir
from aot_core.artifacts.publishing import (
    check_replaceable,
    entry_lock,
    publish,
    remove_leftovers,
    staging_dir,
)
from aot_core.artifacts.store import _KEY_RE, ArtifactStore
from aot_core.artifacts.verification import _safe_relpath, check_compatible, verify
from aot_core.errors import (
    ArtifactCorruptError,
    ArtifactIncompatibleError,
    EnvironmentVariableError,
    NotOwnedError,
)

MAX_MEMBERS_ENV_VAR = "AOT_IMPORT_MAX_FILES"
"""Environment variable that sets ``import_artifact``'s cap on archive members."""

DEFAULT_MAX_MEMBERS = 10_000
"""Archive members (files and directories) an import accepts by default. Real artifacts
hold hundreds to a few thousand files; the cap stops an archive whose consistent manifest
lists, say, 50,000 tiny files from filling a store's inodes and stalling every later
``verify``. Raise it with ``aot cache import --max-files N`` or ``$AOT_IMPORT_MAX_FILES``."""


def max_members_from_env() -> int:
    """``$AOT_IMPORT_MAX_FILES`` as a positive integer, else ``DEFAULT_MAX_MEMBERS``;
    ``EnvironmentVariableError`` when it is set to anything else."""
    raw = os.environ.get(MAX_MEMBERS_ENV_VAR)
    if raw is None:
        return DEFAULT_MAX_MEMBERS
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise EnvironmentVariableError(
            MAX_MEMBERS_ENV_VAR,
            f"${MAX_MEMBERS_ENV_VAR} must be a positive integer (a number of archive members), "
            f"got {raw!r}; unset it for the default, {DEFAULT_MAX_MEMBERS}",
        )
    return value


def export_target_problem(
    artifact_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> str | None:
    """Why ``out`` must not receive the export of ``artifact_dir``; None when it may.

    The archive never goes inside the artifact (it would become an unlisted file, and the
    artifact would verify as damaged). An existing file is overwritten only with ``force``;
    anything else that exists (a directory, a FIFO, a device) never.
    """
    root = resolve_artifact_dir(artifact_dir).resolve()
    target = Path(out)
    resolved = target.parent.resolve() / target.name
    if resolved == root or root in resolved.parents:
        return f"{target} is inside the artifact {root}; write the archive somewhere else"
    if target.is_symlink() or target.exists():
        if not target.is_file() or target.is_symlink():
            return f"{target} exists and is not a regular file; choose another name"
        if not force:
            return f"{target} already exists; pass --force to overwrite it, or choose another name"
    return None


def export_artifact(
    artifact_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> str:
    """Pack a verified artifact into one tar file (gzip when ``out`` ends in .gz/.tgz).

    The manifest comes first so an importer can check compatibility before unpacking.
    Written to a temporary name and renamed. Returns the archive's sha256, which a
    receiver can pin with ``aot cache import --sha256``. Refuses (``NotOwnedError``) to
    write inside the artifact or over an existing file unless ``force``
    (``export_target_problem``).
    """
    problem = export_target_problem(artifact_dir, out, force=force)
    if problem is not None:
        raise NotOwnedError(f"refusing to export: {problem}")
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
    if not member.isfile() or member.size > 64 << 20:
        raise ArtifactCorruptError(
            f"{archive}: {MANIFEST_NAME} is not a plain file (a link, a device or too large); "
            "refusing to import"
        )
    fh = tar.extractfile(member)
    if fh is None:
        raise ArtifactCorruptError(f"{archive}: {MANIFEST_NAME} is not a plain file")
    try:
        data = json.load(io.TextIOWrapper(fh, encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or absurdly nested
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
    max_members: int | None = None,
) -> tuple[Path, Manifest, bool]:
    """Check and place an exported artifact in ``store``.

    Before anything is written: the archive's digest (when pinned), that it holds at most
    ``max_members`` members (None: ``max_members_from_env()``; counted before any member
    is read, so the archive is never listed whole), the manifest, every
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
    cap = max_members_from_env() if max_members is None else max_members
    with tar:
        try:
            _count_members(tar, src, cap)
            manifest = _read_archive_manifest(tar, src)
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise ArtifactCorruptError(f"{src}: the archive is damaged: {exc}") from exc
        if not _KEY_RE.match(manifest.key):
            raise ArtifactCorruptError(f"{src}: the manifest's key {manifest.key!r} is invalid")
        _check_members(members, manifest, src)
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
            same = _same_entry_present(dest, manifest, replace=replace)
            with staging_dir(dest) as staging:
                _extract_files(tar, members, staging, src)
                # The archive's own checksums are read before anything is said about it,
                # even "identical": a tampered archive whose key matches is refused.
                report = verify(staging)
                if not report.ok:
                    raise ArtifactCorruptError(
                        f"{src}: checksums do not match the manifest: {report.describe()}"
                    )
                if same:
                    return dest, manifest, False
                publish(staging, dest, replace=True)
        return dest, manifest, True


def _count_members(tar: tarfile.TarFile, src: Path, cap: int) -> None:
    """Refuse an archive of more than ``cap`` members, reading no header past the cap."""
    for count, _member in enumerate(tar, start=1):
        if count > cap:
            raise ArtifactCorruptError(
                f"{src}: the archive holds more than {cap} members (files and directories); "
                f"refusing to import it. If you expect an artifact this large, raise the cap: "
                f"aot cache import --max-files N (or ${MAX_MEMBERS_ENV_VAR})"
            )


def _extract_files(
    tar: tarfile.TarFile, members: list[tarfile.TarInfo], staging: Path, src: Path
) -> None:
    try:
        for m in members:
            if m.isfile():
                tar.extract(m, staging, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArtifactCorruptError(f"{src}: the archive is damaged: {exc}") from exc


def _check_members(members: list[tarfile.TarInfo], manifest: Manifest, src: Path) -> None:
    """Every member is the manifest, a directory under files/, or a file the manifest lists."""
    listed = {r.path for r in manifest.files}
    seen: set[str] = set()
    for m in members:
        if m.name == MANIFEST_NAME:
            continue
        name = m.name.rstrip("/")
        if (
            m.isdir()
            and _safe_relpath(name)
            and (name == FILES_DIR or name.startswith(FILES_DIR + "/"))
        ):
            continue
        if not m.isfile() or not _safe_relpath(m.name) or m.name not in listed:
            raise ArtifactCorruptError(
                f"{src}: unexpected archive member {m.name!r} (not a file the manifest "
                "lists, or a directory outside files/); refusing to import"
            )
        seen.add(m.name)
    absent = sorted(listed - seen)
    if absent:
        raise ArtifactCorruptError(
            f"{src}: files listed in the manifest are missing from the archive: "
            + ", ".join(absent[:5])
        )


def _same_entry_present(dest: Path, manifest: Manifest, *, replace: bool) -> bool:
    """Whether ``dest`` already holds an intact entry with ``manifest``'s files (lock held).

    Raises when the import must not go on: an intact entry with other contents and no
    ``replace``, or something at ``dest`` that aot did not write.
    """
    if not (dest.exists() or dest.is_symlink()):
        return False
    current = verify(dest)
    if current.ok and current.manifest is not None:
        if {(r.path, r.sha256) for r in current.manifest.files} == {
            (r.path, r.sha256) for r in manifest.files
        }:
            return True
        if not replace:
            raise FileExistsError(
                errno.EEXIST,
                f"entry {manifest.key} already exists with other contents; pass --force to "
                "replace it",
                str(dest),
            )
    check_replaceable(dest)
    return False
