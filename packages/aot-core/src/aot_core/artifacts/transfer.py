"""Moving artifacts between machines: export to one tar file, checked import into a store."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path

from aot_core.artifacts.manifest import MANIFEST_NAME, Manifest, resolve_artifact_dir
from aot_core.artifacts.publishing import entry_lock, publish, remove_leftovers, staging_dir
from aot_core.artifacts.store import _KEY_RE, ArtifactStore
from aot_core.artifacts.verification import _safe_relpath, check_compatible, verify
from aot_core.errors import ArtifactCorruptError, ArtifactIncompatibleError


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
