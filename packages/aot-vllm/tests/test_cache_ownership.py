"""aot-vllm's own cache entries: deleted or replaced only when provably aot's, provable
from the first byte, and served from a store aot cannot write. Real files, no engine."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aot_core import artifacts
from aot_core.errors import NotOwnedError
from aot_core.spec import CompileSpec
from aot_vllm.cache import IN_PROGRESS, CacheEntry, CacheWarning, ReadOnlyCacheError
from read_only_mount import can_mount_read_only, run_read_only


def _entry(store: Path, **spec: object) -> CacheEntry:
    return CacheEntry(
        spec=CompileSpec(cache_dir=str(store), **spec),  # type: ignore[arg-type]
        model="org/model",
        backend_version="0.1.0",
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_new_entry_is_provably_aots_before_anything_is_written(tmp_path: Path) -> None:
    entry = _entry(tmp_path / "store")
    with entry.locked():
        assert entry.open().state == "absent"
        # What vLLM finds when it starts: a marked manifest, listing nothing, and the dirs.
        assert artifacts.ownership_problem(entry.path) is None
        manifest = artifacts.read_manifest(entry.path)
        assert manifest.extra[IN_PROGRESS] is True and manifest.files == ()
        assert manifest.key == entry.key
        assert entry.vllm_root.is_dir() and entry.inductor_dir.is_dir()
    # No staging directory is left beside it.
    assert [p.name for p in entry.path.parent.iterdir() if ".staging-" in p.name] == []


def test_a_start_that_died_before_sealing_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    entry = _entry(tmp_path / "store")
    with entry.locked():
        entry.open()
        # The engine wrote compiled code, then the process died: no seal.
        kernel = entry.inductor_dir / "ab" / "kernel.so"
        kernel.parent.mkdir()
        kernel.write_bytes(b"\x7fELF half-written")
    again = _entry(tmp_path / "store")
    with again.locked():
        opened = again.open()
    assert opened.state == "absent" and IN_PROGRESS not in opened.extra
    assert not kernel.exists()  # unlisted, so never loaded
    assert artifacts.ownership_problem(entry.path) is None


def test_a_crash_while_the_entry_was_being_made_leaves_only_a_staging_dir(tmp_path: Path) -> None:
    entry = _entry(tmp_path / "store")
    entry.store.entries_dir.mkdir(parents=True)
    leftover = entry.path.parent / f".{entry.path.name}.staging-4242-0123abcd"
    (leftover / "files" / "vllm").mkdir(parents=True)
    with entry.locked():
        assert entry.open().state == "absent"
    assert not leftover.exists() and artifacts.ownership_problem(entry.path) is None


@pytest.mark.parametrize("what", ["plain", "no-manifest", "foreign-manifest", "link"])
def test_a_directory_aot_did_not_write_is_refused_and_left_alone(tmp_path: Path, what: str) -> None:
    entry = _entry(tmp_path / "store")
    if what == "no-manifest":
        # An aot entry whose manifest was deleted: aot can no longer prove it wrote it.
        with entry.locked():
            entry.open()
            (entry.inductor_dir / "kernel.so").write_bytes(b"\x7fELF")
            entry.seal(device="cpu", extra={})
        (entry.path / "manifest.json").unlink()
        target = entry.path
    else:
        target = tmp_path / "user-data" if what == "link" else entry.path
        (target / "files" / "inductor").mkdir(parents=True)
        (target / "files" / "inductor" / "notes.txt").write_text("someone's work")
        if what == "foreign-manifest":
            (target / "manifest.json").write_text(json.dumps({"name": "my web app"}))
        if what == "link":
            entry.store.entries_dir.mkdir(parents=True)
            entry.path.symlink_to(target)
    before = _tree(target)
    with entry.locked(), pytest.raises(NotOwnedError, match="refusing to replace") as info:
        entry.open()
    assert "nothing was changed" in str(info.value)
    assert _tree(target) == before
    assert entry.path.exists() and (what != "link" or entry.path.is_symlink())


def test_discarding_proves_ownership_itself(tmp_path: Path) -> None:
    # The one deleting method refuses on its own, whoever calls it.
    entry = _entry(tmp_path / "store")
    (entry.path / "files").mkdir(parents=True)
    (entry.path / "files" / "keep").write_text("x")
    with entry.locked(), pytest.raises(NotOwnedError, match="refusing to delete"):
        entry._discard()
    assert (entry.path / "files" / "keep").read_text() == "x"


def test_an_entry_of_aots_missing_a_file_is_still_replaced(tmp_path: Path) -> None:
    entry = _entry(tmp_path / "store")
    with entry.locked():
        entry.open()
        (entry.inductor_dir / "kernel.so").write_bytes(b"\x7fELF")
        (entry.inductor_dir / "other.so").write_bytes(b"\x7fELF other")
        entry.seal(device="cpu", extra={})
    (entry.inductor_dir / "kernel.so").unlink()  # nothing is lost by replacing it
    with entry.locked(), pytest.warns(CacheWarning, match="moved aside"):
        assert entry.open().state == "refused"
    assert not (entry.inductor_dir / "other.so").exists()
    assert artifacts.read_manifest(entry.path).extra[IN_PROGRESS] is True


def test_an_entry_whose_bytes_differ_is_refused_and_left_alone(tmp_path: Path) -> None:
    """Issue 23: bytes that differ from the manifest are not provably aot's (a copied
    manifest must not make files deletable), so the entry is refused, not rebuilt; until
    2026-12 it was moved aside and rebuilt. Files a crashed start left unlisted under
    files/ are still discarded (verify_for_load's discard_extra)."""
    entry = _entry(tmp_path / "store")
    with entry.locked():
        entry.open()
        (entry.inductor_dir / "kernel.so").write_bytes(b"\x7fELF")
        entry.seal(device="cpu", extra={})
    (entry.inductor_dir / "crashed-start.so").write_bytes(b"unlisted")
    with entry.locked():
        assert entry.open().state == "intact"
    assert not (entry.inductor_dir / "crashed-start.so").exists()
    (entry.inductor_dir / "kernel.so").write_bytes(b"\x7fELF tampered")
    before = _tree(entry.path)
    with entry.locked(), pytest.raises(NotOwnedError, match=r"kernel\.so \(13 bytes"):
        entry.open()
    assert _tree(entry.path) == before


# ------------------------------------------------------------------ read-only stores

READ_ONLY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from aot_core.spec import CompileSpec
    from aot_vllm.cache import CacheEntry, ReadOnlyCacheError

    out = {}
    for name, seqs in (("hit", None), ("miss", 4)):
        entry = CacheEntry(
            spec=CompileSpec(cache_dir=sys.argv[1], max_num_seqs=seqs),
            model="org/model",
            backend_version="0.1.0",
        )
        try:
            with entry.locked():
                opened = entry.open()
                seeded = entry.seed_modelinfos()
                entry.seal(device="cpu", extra={"written": True})
                out[name] = {"state": opened.state, "read_only": entry.read_only,
                             "seeded": seeded, "log_dir": str(entry.log_dir),
                             "files": sorted(str(p.relative_to(entry.files_dir))
                                             for p in entry.files_dir.rglob("*.so"))}
        except ReadOnlyCacheError as exc:
            out[name] = {"errno": exc.errno, "message": str(exc)}
    print("RESULT " + json.dumps(out))
    """
)


def test_a_read_only_store_serves_a_hit_and_refuses_a_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not can_mount_read_only(tmp_path):
        pytest.skip(
            "needs root and `unshare -m` to mount the store read-only (chmod binds no root)"
        )
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "aot-home"))
    shared = tmp_path / "aot-home" / "shared" / "vllm-modelinfos"
    shared.mkdir(parents=True)
    (shared / "llama.json").write_text("{}")  # something a writable store would be seeded with
    media = tmp_path / "media"
    entry = _entry(media / "store")
    with entry.locked():
        entry.open()
        (entry.inductor_dir / "kernel.so").write_bytes(b"\x7fELF compiled elsewhere")
        entry.seal(device="cpu", extra={"cache_path": "inductor"})
    before = _tree(media)
    script = tmp_path / "ro.py"
    script.write_text(READ_ONLY_SCRIPT)
    proc = run_read_only(media, [sys.executable, str(script), str(media / "store")])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    result = json.loads(lines[0].removeprefix("RESULT "))
    hit, miss = result["hit"], result["miss"]
    assert hit["state"] == "intact" and hit["read_only"] and hit["seeded"] == 0, hit
    assert hit["log_dir"].startswith(str(tmp_path / "aot-home")), hit  # logs go elsewhere
    # The engine runs from a verified copy (Inductor locks files in its cache even to
    # load), removed when the process exits.
    assert hit["files"] == ["inductor/kernel.so"], hit
    assert not any((tmp_path / "aot-home" / "scratch").iterdir())
    assert miss["errno"] == errno.EROFS, miss
    assert "is on read-only media and it holds no entry" in miss["message"]
    assert "writable cache_dir" in miss["message"]
    assert _tree(media) == before  # nothing written, nothing removed
    assert artifacts.verify(entry.path).ok


def test_read_only_error_is_the_cache_not_writable_exit() -> None:
    from aot_core.cli.command import ExitCode
    from aot_core.errors import AOTError

    exc = ReadOnlyCacheError(errno.EROFS, "read-only", "/x")
    assert isinstance(exc, PermissionError) and isinstance(exc, AOTError)
    # aot's command maps EROFS/EACCES to exit 10; check its own mapping, not a copy.
    from aot_core.cli.command import os_error_code as _os_error_code

    assert _os_error_code(exc) == ExitCode.CACHE_NOT_WRITABLE


def test_scratch_copies_of_dead_processes_are_removed_and_nothing_else(tmp_path: Path) -> None:
    from aot_vllm.cache import _remove_dead_scratch

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(gone.stdout)
    entry = _entry(tmp_path / "store")
    with entry.locked():
        entry.open()
    scratch = tmp_path / "scratch"
    copies = {
        "dead": scratch / f"{entry.key}-{dead_pid}-0123abcd",
        "alive": scratch / f"{entry.key}-{os.getpid()}-0123abcd",
        "foreign": scratch / f"notes-{dead_pid}-0123abcd",
    }
    for name, path in copies.items():
        if name == "foreign":
            (path / "files").mkdir(parents=True)  # no aot manifest: not provably aot's
        else:
            shutil.copytree(entry.path, path)
    _remove_dead_scratch(scratch)
    assert not copies["dead"].exists()
    assert copies["alive"].is_dir() and copies["foreign"].is_dir()
