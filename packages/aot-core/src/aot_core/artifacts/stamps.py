"""Verification stamps: which files of an entry a full sha256 check already proved, by stat.

Re-hashing hundreds of MB of model weights on every reuse costs seconds. After a file's
bytes matched its manifest checksum, its stamp (size, mtime, ctime, inode and device, with
the checksum it matched) is kept in aot's cache, outside the entry; a later check skips
hashing a file only while its stat still equals its stamp and the manifest still lists the
same checksum. Any write, truncation, replacement or ``touch`` changes the file's ctime,
which a user cannot set (``os.utime`` restores mtime, never ctime), so a changed file is
hashed again. A file is stamped only if it did not change while it was hashed and its
ctime was at least ``RACY_S`` before the check (a later write within the same timestamp
tick could otherwise leave its stat unchanged). A missing, unreadable or foreign stamp
file only costs a full check. ``AOT_VERIFY=full`` ignores stamps (every file is hashed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAMPS_DIR = "verified"
"""Directory under the cache root holding each entry's stamps (``<key>.json``)."""

VERIFY_ENV_VAR = "AOT_VERIFY"
"""``full``: hash every file on every check, ignoring stamps."""

RACY_S = 1.0
"""A file changed this recently before its check is not stamped (timestamp granularity)."""

_FORMAT = "aot-verify-stamps-v1"
_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino", "dev")


def full_check_forced() -> bool:
    """True when ``AOT_VERIFY=full`` asks that every file be hashed."""
    return os.environ.get(VERIFY_ENV_VAR, "").strip().lower() == "full"


def _identity(st: os.stat_result) -> dict[str, int]:
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
    }


def _valid_stamp(value: Any) -> bool:
    if not isinstance(value, dict) or set(value) != {*_FIELDS, "sha256"}:
        return False
    sha = value["sha256"]
    ints = all(type(value[f]) is int for f in _FIELDS)
    return ints and isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) is not None


@dataclass(frozen=True, kw_only=True)
class StampBook:
    """The stamps of one entry: those read from disk, and those a check proves now."""

    path: Path
    """The stamp file (``<cache root>/verified/<key>.json``)."""

    key: str
    """The entry's key; a stamp file naming another key is ignored."""

    entry: str
    """The entry directory, resolved; a stamp file naming another is ignored."""

    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Stamps read from ``path`` (relative path -> stat fields and sha256)."""

    proved: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Stamps of files this check vouched for or hashed; what ``save`` writes."""

    started_ns: int = field(default_factory=time.time_ns)
    """When the check began (before any file was stat'ed): the racy files' reference."""

    def vouches(self, rel: str, sha256: str, st: os.stat_result) -> bool:
        """True when ``rel`` is stamped with this stat and this checksum (no hash needed)."""
        stamp = self.known.get(rel)
        if stamp is None or stamp != {**_identity(st), "sha256": sha256}:
            return False
        self.proved[rel] = stamp
        return True

    def prove(self, rel: str, sha256: str, before: os.stat_result, path: Path) -> None:
        """Stamp ``rel``, just hashed to ``sha256``, unless it changed meanwhile or is racy."""
        try:
            after = path.stat()
        except OSError:
            return
        racy = before.st_ctime_ns > self.started_ns - int(RACY_S * 1e9)
        if _identity(after) == _identity(before) and not racy:
            self.proved[rel] = {**_identity(after), "sha256": sha256}

    def save(self) -> None:
        """Write ``proved`` whole, then rename; best effort (a read-only cache only costs
        hashing next time)."""
        data = {"format": _FORMAT, "key": self.key, "entry": self.entry, "files": self.proved}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()


def load_stamps(stamps_dir: Path, *, key: str, entry: Path) -> StampBook:
    """The stamp book of entry ``key`` at ``entry``; empty when the file is missing,
    unreadable, not aot's, for another entry, or ``AOT_VERIFY=full``."""
    book = StampBook(path=stamps_dir / f"{key}.json", key=key, entry=str(entry.resolve()))
    if full_check_forced():
        return book
    try:
        data = json.loads(book.path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return book
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return book
    if (data.get("format"), data.get("key"), data.get("entry")) != (_FORMAT, key, book.entry):
        return book
    book.known.update({rel: stamp for rel, stamp in data["files"].items() if _valid_stamp(stamp)})
    return book


@dataclass(frozen=True, kw_only=True)
class FileStats:
    """The stat of every file of an entry being built, taken before its manifest hashes them."""

    taken_ns: int
    """When the first stat was taken (the racy files' reference)."""

    stats: dict[str, os.stat_result]
    """Each plain file's stat, by the relative path its manifest lists (``files/...``)."""


def stat_files(files_dir: Path) -> FileStats:
    """The stat of every plain file below an entry's ``files/`` directory."""
    taken_ns = time.time_ns()
    stats = {
        f"{files_dir.name}/{path.relative_to(files_dir).as_posix()}": path.lstat()
        for path in sorted(files_dir.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }
    return FileStats(taken_ns=taken_ns, stats=stats)


def settle(files_dir: Path) -> None:
    """Wait until the newest file below ``files_dir`` is older than ``RACY_S`` (at most that
    long), so that files just written can be stamped when the manifest hashes them."""
    newest = max((st.st_ctime_ns for st in stat_files(files_dir).stats.values()), default=0)
    wait_s = (newest + int(RACY_S * 1e9) - time.time_ns()) / 1e9
    if wait_s > 0:
        time.sleep(min(wait_s + 0.01, RACY_S + 0.01))


def stamp_published(book: StampBook, before: FileStats, records: Any) -> None:
    """After a build: stamp each file the manifest lists (``records``: its ``FileRecord``s)
    whose stat, taken before the manifest hashed it, is unchanged in the published entry."""
    fresh = StampBook(path=book.path, key=book.key, entry=book.entry, started_ns=before.taken_ns)
    for record in records:
        st = before.stats.get(record.path)
        if st is not None:
            fresh.prove(record.path, record.sha256, st, Path(book.entry) / record.path)
    fresh.save()
