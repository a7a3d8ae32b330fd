"""Adversarial archives and directories, generated rather than listed (issue 23).

Hypothesis mutates a real exported artifact (members renamed out of the artifact, turned
into links, devices, FIFOs or directories, setuid, duplicated, dropped, added, their bytes
flipped or cut, the manifest's fields edited, the archive cut short or gzipped) and a real
artifact directory (the project files of the issue planted beside or inside it, listed
files truncated or edited, links, its manifest edited, copied or deleted), then drives the
real ``aot`` entry point (``cli.main``) over each case: ``cache import``, ``compile --out``
with and without ``--force``, ``cache clear`` (all, by key, ``--invalid``), ``verify`` and
``ls``. Each case must hold:

- nothing aot did not write is lost: files outside the store and every byte a "user" put
  into the directory are exactly as they were; a refusal changes nothing at all;
- no traceback: every outcome is an exit code of ``ExitCode`` other than 1 (internal
  error), each documented in the README's table (``test_cli_exits``);
- an entry placed or rebuilt verifies.

Artifacts are pure aot-core (``make_artifact``) or the test-only toy backend's (the
``core`` session installs it), so no torch is needed. The examples are fixed
(``derandomize``): the default suite stays deterministic and within its budget (about
half a minute here); set ``AOT_ADVERSARIAL_EXAMPLES`` to explore more.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aot_core import artifacts
from aot_core.cli.app import ExitCode
from artifact_support import make_artifact, make_model
from cli_support import run_aot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("AOT_ADVERSARIAL_EXAMPLES", "0") or 0)
FAST = settings(
    max_examples=EXAMPLES or 60,
    derandomize=not EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOWER = settings(FAST, max_examples=EXAMPLES or 40)

# Documented outcomes; 1 (unexpected internal error) is never one of them.
DOCUMENTED = {int(c) for c in ExitCode} - {int(ExitCode.FAILURE)}

UserTree = dict[str, tuple[str, bytes | str]]


def tree(root: Path) -> UserTree:
    """Every path below ``root`` with its kind and bytes (or link target)."""
    out: UserTree = {}
    if not (root.exists() or root.is_symlink()):
        return out
    if root.is_symlink() or not root.is_dir():
        return {".": _entry(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = _entry(p)
    return out


def _entry(p: Path) -> tuple[str, bytes | str]:
    st_ = os.lstat(p)
    if stat.S_ISLNK(st_.st_mode):
        return ("link", os.readlink(p))
    if stat.S_ISDIR(st_.st_mode):
        return ("dir", b"")
    if stat.S_ISREG(st_.st_mode):
        return ("file", p.read_bytes())
    return ("other", str(stat.S_IFMT(st_.st_mode)))


def assert_documented(code: int, err: str, what: object) -> None:
    assert "Traceback" not in err, (what, err)
    assert code in DOCUMENTED, (what, code, err)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    # Hypothesis runs many examples per test: a directory of their own, not tmp_path.
    with tempfile.TemporaryDirectory(prefix="aot-adversarial-") as d:
        yield Path(d)


# ------------------------------------------------------------------ archives


@dataclass(frozen=True, kw_only=True)
class Member:
    """One archive member as the mutations see it."""

    name: str
    """Member name."""

    kind: str
    """file, dir, symlink, hardlink, fifo, chardev."""

    data: bytes = b""
    """Contents of a file member."""

    mode: int = 0o644
    """Permission bits (setuid included)."""

    link: str = ""
    """Target of a link member."""


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Member], str]:
    """A real export's members, and the key of its entry."""
    root = tmp_path_factory.mktemp("export")
    files = {"inductor/k.so": b"\x7fELF" + bytes(300), "graph.py": b"x = 1\n", "e.txt": b""}
    manifest = make_artifact(root / "art", model=make_model(root / "m"), files=files)
    archive = root / "a.tar"
    artifacts.export_artifact(root / "art", archive)
    with tarfile.open(archive) as tar:
        members = [
            Member(name=m.name, kind="file", data=(tar.extractfile(m) or io.BytesIO()).read())
            for m in tar.getmembers()
        ]
    return members, manifest.key


NAMES = st.sampled_from(
    [
        "files/new.so", "../escape.txt", "/tmp/aot-adversarial-abs", "files/../../up",
        "files/inductor/k.so", "manifest.json", "files", "files/inductor", "other/x",
        "files/./graph.py", "files//e.txt", "./manifest.json", "", "files/\x00nul",
    ]
)  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
MANIFEST_FIELDS = st.sampled_from(
    ["format", "format_version", "key", "backend", "files", "pins", "spec", "cpu_isa",
     "spec_fingerprint", "host_fingerprint", "ranks", "torch_version", "created_utc"]
)  # fmt: skip


@st.composite
def archive_mutation(draw: st.DrawFn) -> tuple[str, tuple[Any, ...]]:
    kind = draw(
        st.sampled_from(
            ["rename", "retype", "setuid", "flip", "cut", "duplicate", "drop", "add",
             "field", "file-record", "extra-record"]
        )
    )  # fmt: skip
    index = draw(st.integers(0, 10))
    if kind == "rename":
        return kind, (index, draw(NAMES))
    if kind == "retype":
        link = draw(st.sampled_from(["/etc/passwd", "../../victim/precious.txt", "files/e.txt"]))
        new = draw(st.sampled_from(["dir", "symlink", "hardlink", "fifo", "chardev"]))
        return kind, (index, new, link)
    if kind in ("flip", "cut"):
        return kind, (index, draw(st.integers(0, 400)))
    if kind == "add":
        return kind, (draw(NAMES), draw(st.binary(max_size=64)))
    if kind == "field":
        return kind, (draw(MANIFEST_FIELDS), draw(st.none() | JSON))
    if kind == "file-record":
        part = draw(st.sampled_from(["path", "sha256", "size"]))
        return kind, (index, part, draw(JSON | NAMES))
    if kind == "extra-record":
        return kind, (draw(NAMES), draw(st.integers(0, 10**15)))
    return kind, (index,)


def mutate_members(members: list[Member], op: tuple[str, tuple[Any, ...]]) -> list[Member]:
    kind, args = op
    out = list(members)
    i = args[0] % len(out) if args and isinstance(args[0], int) and out else 0
    if kind == "rename" and out:
        out[i] = replace(out[i], name=args[1])
    elif kind == "retype" and out:
        out[i] = replace(out[i], kind=args[1], link=args[2], data=b"")
    elif kind == "setuid" and out:
        out[i] = replace(out[i], mode=0o4755)
    elif kind == "flip" and out and out[i].data:
        pos = args[1] % len(out[i].data)
        data = bytearray(out[i].data)
        data[pos] ^= 0xFF
        out[i] = replace(out[i], data=bytes(data))
    elif kind == "cut" and out:
        out[i] = replace(out[i], data=out[i].data[: args[1] % (len(out[i].data) + 1)])
    elif kind == "duplicate" and out:
        out.insert(i, out[i])
    elif kind == "drop" and out:
        del out[i]
    elif kind == "add":
        out.append(Member(name=args[0], kind="file", data=args[1]))
    else:
        out = _edit_manifest(out, kind, args)
    return out


def _edit_manifest(members: list[Member], kind: str, args: tuple[Any, ...]) -> list[Member]:
    at = [n for n, m in enumerate(members) if m.name == artifacts.MANIFEST_NAME and m.data]
    if not at:
        return members
    try:
        data = json.loads(members[at[0]].data)
    except ValueError:
        return members
    if not isinstance(data, dict):
        return members
    if kind == "field":
        if args[1] is None:
            data.pop(args[0], None)
        else:
            data[args[0]] = args[1]
    elif kind == "file-record" and isinstance(data.get("files"), list) and data["files"]:
        record = data["files"][args[0] % len(data["files"])]
        if isinstance(record, dict):
            record[args[1]] = args[2]
    elif kind == "extra-record" and isinstance(data.get("files"), list):
        data["files"].append({"path": args[0], "sha256": "0" * 64, "size": args[1]})
    out = list(members)
    out[at[0]] = replace(out[at[0]], data=json.dumps(data).encode())
    return out


def write_archive(members: list[Member], path: Path, *, gz: bool, cut: int | None) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mode = m.mode
            info.type = {
                "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                "chardev": tarfile.CHRTYPE,
            }[m.kind]  # fmt: skip
            info.linkname = m.link
            info.size = len(m.data) if m.kind == "file" else 0
            tar.addfile(info, io.BytesIO(m.data) if m.kind == "file" else None)
    raw = buf.getvalue()
    if gz:
        raw = gzip.compress(raw)
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    path.write_bytes(raw)
    return path


@dataclass(frozen=True, kw_only=True)
class Packing:
    """How a mutated archive is written and imported."""

    gz: bool
    """gzip it."""

    cut: int | None
    """Cut the file at this byte (modulo its size), or not at all."""

    force: bool
    """``--force``."""

    pin: bool
    """``--sha256`` of the file as written."""


PACKINGS = st.builds(
    Packing,
    gz=st.booleans(),
    cut=st.none() | st.integers(0, 1 << 16),
    force=st.booleans(),
    pin=st.booleans(),
)


@FAST
@given(ops=st.lists(archive_mutation(), min_size=0, max_size=4), packing=PACKINGS)
def test_no_archive_loses_data_or_prints_a_traceback(
    export: tuple[list[Member], str], ops: list[tuple[str, tuple[Any, ...]]], packing: Packing
) -> None:
    members, key = export
    gz, cut, force, pin = packing.gz, packing.cut, packing.force, packing.pin
    for op in ops:
        members = mutate_members(members, op)
    with scratch() as t:
        victim = t / "victim"
        victim.mkdir()
        (victim / "precious.txt").write_text("not aot's")
        store = artifacts.ArtifactStore(t / "cache")
        make_artifact(store.path("kept"), model=make_model(t / "m"))
        outside = {"victim": tree(victim), "kept": tree(store.path("kept"))}
        archive = write_archive(members, t / "in.tar", gz=gz, cut=cut)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        argv = ["--cache-dir", str(store.root), "cache", "import", str(archive)]
        argv += (["--force"] if force else []) + (["--sha256", digest] if pin else [])
        ran = run_aot(argv)
        code, err = ran.code, ran.err
        assert_documented(code, err, (ops, gz, cut))
        event(f"exit {code}")
        assert {"victim": tree(victim), "kept": tree(store.path("kept"))} == outside
        assert not Path("/tmp/aot-adversarial-abs").exists()
        assert not (t / "escape.txt").exists() and not (t / "cache" / "escape.txt").exists()
        assert store.leftovers() == [], store.leftovers()
        for entry in store.entry_keys():  # whatever was placed verifies
            assert artifacts.verify(store.path(entry)).ok, (entry, ops)
        if code == ExitCode.OK:
            assert key in store.entry_keys()


# ------------------------------------------------------------------ directories


@pytest.fixture(scope="module")
def toy_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model, a toy-backend artifact compiled by ``aot compile --out``, its export)."""
    from aot_core.models.tiny import write_tiny_llama

    root = tmp_path_factory.mktemp("toy")
    model = write_tiny_llama(root / "tiny")
    art = root / "art"
    ran = run_aot(
        ["--cache-dir", str(root / "c"), "compile", str(model), "--backend", "toy", "--out",
         str(art)]
    )  # fmt: skip
    code, err = ran.code, ran.err
    # The core session installs the toy backend: without it this fails, never skips.
    assert code == ExitCode.OK, err
    archive = root / "art.tar"
    artifacts.export_artifact(art, archive)
    return model, art, archive


USER_PATHS = st.sampled_from(
    ["NOTES.md", "src/main.py", "files/notes.txt", "files/toy-bigram/mine.json",
     ".hidden", "files/deep/er/x.bin", ".manifest.json.tmp.bak"]
)  # fmt: skip


@st.composite
def dir_mutation(draw: st.DrawFn) -> tuple[str, tuple[Any, ...]]:
    kind = draw(
        st.sampled_from(
            ["user-file", "edit-listed", "drop-listed", "link", "fifo", "field",
             "file-record", "drop-manifest", "garble-manifest"]
        )
    )  # fmt: skip
    if kind == "user-file":
        return kind, (draw(USER_PATHS), draw(st.binary(min_size=1, max_size=32)))
    if kind == "edit-listed":
        return kind, (draw(st.sampled_from(["truncate", "flip", "append", "zero"])),)
    if kind == "link":
        return kind, (draw(USER_PATHS),)
    if kind == "fifo":
        return kind, (draw(USER_PATHS),)
    if kind == "field":
        return kind, (draw(MANIFEST_FIELDS), draw(st.none() | JSON))
    if kind == "file-record":
        part = draw(st.sampled_from(["path", "sha256", "size"]))
        return kind, (part, draw(JSON | USER_PATHS))
    return kind, ()


def apply_dir_mutation(root: Path, op: tuple[str, tuple[Any, ...]], sentinel: Path) -> None:
    kind, args = op
    listed = sorted(p for p in (root / "files").rglob("*") if p.is_file() and not p.is_symlink())
    manifest = root / artifacts.MANIFEST_NAME
    if kind in ("user-file", "link", "fifo"):
        path = root / args[0]
        if path.exists() or path.is_symlink():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "user-file":
            path.write_bytes(args[1])
        elif kind == "link":
            path.symlink_to(sentinel)
        else:
            os.mkfifo(path)
    elif kind == "edit-listed" and listed:
        victim = listed[0]
        data = victim.read_bytes()
        edits = {
            "truncate": data[: len(data) // 2],
            "flip": bytes([data[0] ^ 1]) + data[1:] if data else b"x",
            "append": data + b"mine",
            "zero": bytes(len(data)) if any(data) else b"\x01" * len(data) or b"x",
        }
        victim.write_bytes(edits[args[0]])
    elif kind == "drop-listed" and listed:
        listed[0].unlink()
    elif kind == "drop-manifest":
        manifest.unlink(missing_ok=True)
    elif kind == "garble-manifest" and manifest.is_file():
        manifest.write_bytes(manifest.read_bytes()[:40])
    elif kind in ("field", "file-record") and manifest.is_file():
        _edit_dir_manifest(manifest, kind, args)


def _edit_dir_manifest(manifest: Path, kind: str, args: tuple[Any, ...]) -> None:
    try:
        data = json.loads(manifest.read_bytes())
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    if kind == "field":
        if args[1] is None:
            data.pop(args[0], None)
        else:
            data[args[0]] = args[1]
    elif (
        isinstance(data.get("files"), list) and data["files"] and isinstance(data["files"][0], dict)
    ):
        data["files"][0][args[0]] = args[1]
    manifest.write_text(json.dumps(data))


def user_bytes(before: UserTree, original: UserTree) -> set[str]:
    """Paths of the mutated directory that hold someone else's bytes: anything added, and
    listed files whose bytes were changed (the manifest itself is aot's proof file)."""
    return {
        rel
        for rel, entry in before.items()
        if rel != artifacts.MANIFEST_NAME and entry[0] != "dir" and original.get(rel) != entry
    }


OPERATIONS = st.sampled_from(
    ["compile-out", "compile-out-force", "clear-key", "clear-all", "clear-invalid",
     "import-force", "verify", "ls"]
)  # fmt: skip


@SLOWER
@given(ops=st.lists(dir_mutation(), min_size=0, max_size=4), operation=OPERATIONS)
def test_no_directory_mutation_loses_data_or_prints_a_traceback(
    toy_artifact: tuple[Path, Path, Path],
    ops: list[tuple[str, tuple[Any, ...]]],
    operation: str,
) -> None:
    model, template, archive = toy_artifact
    original = tree(template)
    key = artifacts.read_manifest(template).key
    with scratch() as t:
        sentinel = t / "outside.txt"
        sentinel.write_text("someone's file the links point at")
        store = artifacts.ArtifactStore(t / "cache")
        store.entries_dir.mkdir(parents=True)
        entry = store.path(key)
        shutil.copytree(template, entry, symlinks=True)
        for op in ops:
            apply_dir_mutation(entry, op, sentinel)
        before = tree(entry)
        mine = user_bytes(before, original)
        ran = run_aot(_argv(operation, store, entry, model, archive))
        code, err = ran.code, ran.err
        assert_documented(code, err, (ops, operation))
        event(f"{operation}: exit {code}{' (user bytes inside)' if mine else ''}")
        assert sentinel.read_text() == "someone's file the links point at"
        after = tree(entry)
        lost = {rel for rel in mine if after.get(rel) != before[rel]}
        assert not lost, (ops, operation, code, err)
        if mine:  # not provably aot's: whatever was asked, nothing in it changed
            assert after == before, (ops, operation, code, err)
        if code == ExitCode.OK and operation in ("compile-out", "compile-out-force"):
            assert artifacts.verify(entry).ok, (ops, operation)
        assert store.leftovers() == [] or operation in ("verify", "ls")


def _argv(operation: str, store: artifacts.ArtifactStore, entry: Path, model: Path,
          archive: Path) -> list[str]:  # fmt: skip
    compile_out = ["compile", str(model), "--backend", "toy", "--out", str(entry)]
    commands = {
        "compile-out": compile_out,
        "compile-out-force": [*compile_out, "--force"],
        "clear-key": ["cache", "clear", entry.name],
        "clear-all": ["cache", "clear"],
        "clear-invalid": ["cache", "clear", "--invalid"],
        "import-force": ["cache", "import", str(archive), "--force"],
        "verify": ["cache", "verify"],
        "ls": ["cache", "ls", "--verify"],
    }
    return ["--cache-dir", str(store.root), *commands[operation]]
