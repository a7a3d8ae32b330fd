"""The store: a directory of published entries, and how ``aot cache`` describes them."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aot_core.artifacts.manifest import Manifest, _walk_files, ownership_problem, read_manifest
from aot_core.artifacts.publishing import (
    LockTimeoutError,
    _leftover_re,
    entry_lock,
    remove_entry,
    remove_leftovers,
)
from aot_core.artifacts.verification import check_compatible, manifest_inconsistencies
from aot_core.errors import ArtifactCorruptError, ArtifactError, EmptyPathVariableError

CACHE_ENV_VAR = "AOT_CACHE_DIR"
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


PATH_ENV_VARS = (CACHE_ENV_VAR, "XDG_CACHE_HOME", "HOME")
"""The environment variables aot reads paths from, in the order ``default_cache_root`` asks."""


def path_from_env(variable: str) -> str | None:
    """``$variable``, None when unset; ``EmptyPathVariableError`` when set but blank.

    An empty value is refused rather than skipped (which the XDG convention would do for
    XDG_CACHE_HOME): a script's unset variable must not turn a scratch cache into the
    user's real one.
    """
    value = os.environ.get(variable)
    if value is not None and not value.strip():
        raise EmptyPathVariableError(variable)
    return value


def default_cache_root() -> Path:
    """$AOT_CACHE_DIR, else $XDG_CACHE_HOME/aot, else ~/.cache/aot (``path_from_env`` each)."""
    env = path_from_env(CACHE_ENV_VAR)
    if env is not None:
        return Path(env).expanduser()
    xdg = path_from_env("XDG_CACHE_HOME")
    if xdg is not None:
        return Path(xdg).expanduser() / "aot"
    path_from_env("HOME")  # Path.home() turns an empty $HOME into "/"
    return Path.home() / ".cache" / "aot"


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
    """Why it cannot load here (manifest unreadable or inconsistent, or incompatible); empty
    when nothing in the manifest stops it. The files' checksums are not read."""

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
        ensure_writable(self.entries_dir)

    def entry_keys(self) -> list[str]:
        """Names of the published entries, sorted."""
        if not self.entries_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.entries_dir.iterdir() if not p.name.startswith(".") and p.is_dir()
        )

    def leftovers(self) -> list[Path]:
        """Staging and trash directories left by interrupted writers, and stale lock files.

        A lock file is stale when its entry is gone; aot-core releases delete those
        themselves, older ones left one per key ever tried.
        """
        if not self.entries_dir.is_dir():
            return []
        found = []
        for p in self.entries_dir.iterdir():
            key = self._leftover_key(p)
            if key is not None and (
                not p.name.endswith(".lock") or not (self.entries_dir / key).exists()
            ):
                found.append(p)
        return sorted(found)

    def _leftover_key(self, path: Path) -> str | None:
        """The entry key a leftover name belongs to, or None when it is not a leftover."""
        name = path.name
        if name.startswith(".") and name.endswith(".lock") and _KEY_RE.match(name[1:-5]):
            return name[1:-5]
        for marker in (".staging-", ".trash-"):
            key = name[1:].rsplit(marker, 1)[0]
            if marker in name and _KEY_RE.match(key) and _leftover_re(Path(key)).fullmatch(name):
                return key
        return None

    def clean_leftovers(self) -> int:
        """Remove the leftovers no live writer owns; returns how many went."""
        cleaned = 0
        for key in sorted({k for p in self.leftovers() if (k := self._leftover_key(p))}):
            dest = self.entries_dir / key
            before = {p for p in self.leftovers() if self._leftover_key(p) == key}
            try:
                with entry_lock(dest, timeout_s=0.0, intent="deleting"):
                    remove_leftovers(dest)
            except LockTimeoutError:
                continue  # a live writer owns them
            after = {p for p in self.leftovers() if self._leftover_key(p) == key}
            cleaned += len(before - after)
        return cleaned

    def _listed_path(self, key: str) -> Path:
        """``path(key)``, or for a directory ``entry_keys`` lists whatever its name (another
        tool's, say), the directory itself: it is still shown, and still refused."""
        if not _KEY_RE.match(key) and key in self.entry_keys():
            return self.entries_dir / key
        return self.path(key)

    def info(self, key: str) -> EntryInfo:
        """Manifest, loadability and size of one entry (cheap: no checksums)."""
        path = self._listed_path(key)
        size = directory_size(path)
        try:
            manifest = read_manifest(path)
        except ArtifactCorruptError as exc:
            return EntryInfo(key=key, path=path, manifest=None, problem=str(exc), size_bytes=size)
        problems = [f"manifest inconsistent: {p}" for p in manifest_inconsistencies(manifest)]
        problems += check_compatible(manifest)
        return EntryInfo(
            key=key, path=path, manifest=manifest, problem="; ".join(problems), size_bytes=size
        )

    def removal_hint(self, path: Path) -> str:
        """How a person gets rid of the unusable entry at ``path``, naming only a command
        that will work for it: ``aot cache clear KEY`` for an entry of this store aot can
        prove it wrote (``ownership_problem``), else moving it away by hand, with why."""
        problem = ownership_problem(path)
        if problem is None and path.parent == self.entries_dir:
            return f"`aot cache clear {path.name}` removes it"
        if problem is None:
            return "it is aot's: delete it, or compile with --out onto it to rebuild it"
        return (
            f"aot cannot prove it wrote it, so aot will not delete it ({problem}); look at "
            "what it holds, then move it away yourself"
        )

    def remove(self, key: str) -> bool:
        """Delete one entry atomically; False when absent. Never waits for its lock: an entry
        in use raises ``LockTimeoutError`` (``remove_entry``)."""
        return remove_entry(self._listed_path(key))


def ensure_writable(directory: Path) -> None:
    """Create ``directory`` and prove a file can be written (and synced) there.

    Raises ``OSError`` (permissions, read-only file system, disk full) before any real
    work starts, so a caller can report it instead of failing half-way through a compile.
    """
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with probe.open("wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def directory_size(path: Path) -> int:
    """Bytes of the plain files below ``path`` (files that vanish meanwhile count 0)."""
    total = 0
    for _, p in _walk_files(path):
        with contextlib.suppress(OSError):
            st = p.lstat()
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


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
    tp, pp = manifest.world_size
    world = (
        [
            f"world: tensor_parallel_size={tp} x pipeline_parallel_size={pp} "
            f"({len(manifest.ranks)} rank record(s))"
        ]
        if tp * pp > 1
        else []
    )
    return (
        *world,
        f"backend: {manifest.backend} {manifest.backend_version}",
        "pins: "
        + (", ".join(f"{k} {v or '-'}" for k, v in sorted(manifest.pins.items())) or "none"),
        f"device: {device}",
        f"model: {manifest.model} (config {manifest.model_config_hash[:12]})",
        f"spec: {manifest.spec_fingerprint[:12]}   files: {len(manifest.files)} "
        f"({format_bytes(manifest.total_size)})   created: {manifest.created_utc}",
    )
