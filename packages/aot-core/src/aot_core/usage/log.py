"""aot's usage log: one JSON line per ``aot eval`` or ``aot bench`` job, under the cache root.

The log is ``<cache root>/usage/usage.jsonl``. Its first line is aot's header
(``{"aot_usage_log": 1, ...}``): that line is how aot proves it wrote the file, and a file at
that path without it (another tool's, a user's) is never appended to, trimmed or replaced.

Concurrent jobs: every writer holds an exclusive ``flock`` on ``usage/.usage.jsonl.lock``
(never deleted, so every process locks the same inode) while it appends its records in one
``write`` on an ``O_APPEND`` descriptor, and while it trims. Readers hold a shared lock, so
they never see half a record. A line that is not a complete record (a crash mid-write, a
hand edit) is skipped and counted by readers, never fatal; a writer that finds the file not
ending in a newline starts its own records on a new line, so they stay intact.

Bounded: the file never exceeds ``MAX_BYTES`` (1 MiB, a few thousand jobs). An append that
would pass it first rewrites the file with the header and the newest records that fit in
``KEEP_BYTES`` (half of it), into a temporary file in the same directory, then renamed over
the log: the oldest records are dropped, and no append is lost, since appends wait for the
lock the trim holds.

``AOT_USAGE_LOG=0`` (or ``off``, ``false``, ``no``) turns recording off.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aot_core.errors import AOTError, EnvironmentVariableError

ENV_VAR = "AOT_USAGE_LOG"
USAGE_DIR = "usage"
LOG_NAME = "usage.jsonl"
HEADER_KEY = "aot_usage_log"
LOG_FORMAT = 1
MAX_BYTES = 1 << 20
KEEP_BYTES = MAX_BYTES // 2
MAX_RECORD_BYTES = 16 << 10
"""A record longer than this is refused (records are a few hundred bytes), so the bound
holds whatever a record carries."""

LOCK_TIMEOUT_S = 10.0
"""How long a writer or reader waits for the lock (a trim takes milliseconds)."""

_OFF = frozenset({"0", "off", "false", "no"})
_ON = frozenset({"1", "on", "true", "yes"})


class UsageLogError(AOTError):
    """The usage log cannot be read or written: locked too long, or not a regular file."""


class UsageLogNotOwnedError(UsageLogError):
    """A file at the usage log's path lacks aot's header; aot leaves it exactly as it is."""


@dataclass(frozen=True, kw_only=True)
class LogContents:
    """What a read of the usage log found."""

    path: Path
    """The log file."""

    records: tuple[Mapping[str, Any], ...]
    """Each line that parsed as a JSON object, oldest first (the header left out)."""

    corrupt_lines: int
    """Lines skipped because they are not JSON objects (torn, edited, binary)."""

    exists: bool
    """Whether the file exists at all."""


def log_path(cache_root: Path) -> Path:
    """Where the usage log of the cache at ``cache_root`` lives."""
    return cache_root / USAGE_DIR / LOG_NAME


def recording_enabled() -> bool:
    """Whether ``$AOT_USAGE_LOG`` lets jobs record; ``EnvironmentVariableError`` for a value
    that is neither on (unset, 1, on, true, yes) nor off (0, off, false, no)."""
    value = os.environ.get(ENV_VAR)
    if value is None or value.strip().lower() in _ON:
        return True
    if value.strip().lower() in _OFF:
        return False
    raise EnvironmentVariableError(
        ENV_VAR,
        f"${ENV_VAR}={value!r} is neither on nor off; set it to 0 to stop recording jobs in "
        "the usage log, or 1 (or unset it) to record them",
    )


def encode(record: Mapping[str, Any]) -> bytes:
    """One record as one line: compact JSON, ASCII only, newline-terminated."""
    line = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    data = (line + "\n").encode("ascii")
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"a usage record of {len(data)} bytes is over {MAX_RECORD_BYTES}")
    return data


def _header() -> bytes:
    created = datetime.now(UTC).isoformat(timespec="seconds")
    note = "written by aot; `aot usage` reads it; AOT_USAGE_LOG=0 stops it"
    return encode({HEADER_KEY: LOG_FORMAT, "created_utc": created, "note": note})


def _is_header(line: bytes) -> bool:
    try:
        data = json.loads(line)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get(HEADER_KEY) == LOG_FORMAT


@contextlib.contextmanager
def _locked(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the log's lock file; a reader on read-only media goes without (no writer can)."""
    lock = path.parent / f".{path.name}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UsageLogError(
                        f"{lock} has been locked for over {LOCK_TIMEOUT_S:.0f} s"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the flock


def _open_regular(path: Path, flags: int) -> int:
    """A descriptor of ``path`` (never through a link) that names a regular file."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise UsageLogNotOwnedError(
                f"{path} is a symbolic link, not aot's usage log; aot leaves it as it is"
            ) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageLogNotOwnedError(f"{path} is not a regular file; aot leaves it as it is")
    return fd


def _not_owned(path: Path) -> UsageLogNotOwnedError:
    return UsageLogNotOwnedError(
        f"{path} does not start with aot's usage-log header, so aot did not write it; aot "
        "leaves it as it is. Move it away to let aot start a new log"
    )


def append(
    records: Sequence[Mapping[str, Any]], *, cache_root: Path, max_bytes: int = MAX_BYTES
) -> Path:
    """Append ``records`` (one line each, all in one write) to the log; returns its path.

    Raises ``OSError`` (cannot create or write), ``UsageLogError`` (lock held too long) or
    ``UsageLogNotOwnedError`` (the file is not aot's); the caller decides how loud to be.
    """
    payload = b"".join(encode(r) for r in records)
    path = log_path(cache_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, exclusive=True):
        fd = _open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                payload = _header() + payload
            elif not _is_header(os.pread(fd, MAX_RECORD_BYTES, 0).split(b"\n", 1)[0]):
                raise _not_owned(path)
            elif os.pread(fd, 1, size - 1) != b"\n":
                payload = b"\n" + payload  # a torn last line stays one corrupt line
            if size and size + len(payload) > max_bytes:
                os.close(fd)
                fd = -1
                _trim(path, keep_bytes=max(max_bytes // 2 - len(payload), 0))
                fd = _open_regular(path, os.O_WRONLY | os.O_APPEND)
                payload = payload.lstrip(b"\n")
            written = os.write(fd, payload)
            if written != len(payload):
                raise OSError(f"short write to {path} ({written} of {len(payload)} bytes)")
        finally:
            if fd >= 0:
                os.close(fd)
    return path


def _trim(path: Path, *, keep_bytes: int) -> None:
    """Rewrite the log with its header and the newest whole lines that fit in ``keep_bytes``
    (caller holds the lock), through a temporary file renamed over it."""
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    lines = body.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()  # a torn last line goes first
    kept: list[bytes] = []
    total = 0
    for line in reversed(lines):
        if total + len(line) > keep_bytes:
            break
        kept.append(line)
        total += len(line)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as fh:
            fh.write(header + b"\n" + b"".join(reversed(kept)))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read(cache_root: Path) -> LogContents:
    """Every record in the log, and how many lines were corrupt (skipped).

    Raises ``UsageLogNotOwnedError`` for a file aot did not write, ``OSError`` when it
    cannot be read.
    """
    path = log_path(cache_root)
    if not (path.exists() or path.is_symlink()):
        return LogContents(path=path, records=(), corrupt_lines=0, exists=False)
    with _locked(path, exclusive=False):
        fd = _open_regular(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read()
    if not data:
        return LogContents(path=path, records=(), corrupt_lines=0, exists=True)
    header, _, body = data.partition(b"\n")
    if not _is_header(header):
        raise _not_owned(path)
    records: list[Mapping[str, Any]] = []
    corrupt = 0
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # not UTF-8 or not JSON
            corrupt += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            corrupt += 1
    return LogContents(path=path, records=tuple(records), corrupt_lines=corrupt, exists=True)


_warned: list[str] = []


def record_job(
    build: Callable[[], Sequence[Mapping[str, Any]]],
    *,
    cache_root: Callable[[], Path],
    warn: Callable[[str], None],
) -> Path | None:
    """Append what ``build`` returns, unless recording is off; never raises (a job's
    results must not depend on its log). The first failure in a process is reported
    through ``warn``, later ones are silent. Returns the log's path when written."""
    try:
        if not recording_enabled():
            return None
        return append(build(), cache_root=cache_root())
    except Exception as exc:  # any failure: warn once, keep the job's result
        if not _warned:
            _warned.append(str(exc))
            warn(
                f"this job was not recorded in the usage log ({exc}); its results are "
                f"unaffected. ${ENV_VAR}=0 turns the usage log off"
            )
        return None
