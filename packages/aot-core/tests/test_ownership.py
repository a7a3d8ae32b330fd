"""aot deletes or replaces only what it can prove it wrote: an intact aot manifest.

Every path that removes or renames a directory is driven here against directories aot did
not write (another tool's ``manifest.json``, a malformed one, plain data, a file, a link)
and must leave them byte for byte as they were. The ``aot compile`` cases use a
backend-free test double whose compile writes one real file into ``spec.cache_dir``, so
staging, manifest and publish run for real; what is under test is aot-core's own logic.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aot_core import artifacts
from aot_core.cli.app import ExitCode, main
from aot_core.errors import ArtifactCorruptError, NotOwnedError
from artifact_support import SPEC, key_for, make_artifact, make_model
from fake_backend import install_distribution

WRITER_BACKEND = textwrap.dedent(
    """
    from pathlib import Path
    from aot_core.compiler import Availability, CompiledModel, Compiler
    from aot_core.stats import OptimizationStats

    class _Compiled(CompiledModel):
        def generate(self, prompts, params=None):
            raise NotImplementedError("ownership test double: generates nothing")
        @property
        def stats(self):
            return OptimizationStats(backend="writer")
        def close(self):
            pass

    class Writer(Compiler):
        name = "writer"
        distribution = "aot-writer-test-backend"
        @classmethod
        def availability(cls):
            return Availability(usable=True)
        def compile_model(self, model, spec=None):
            raise NotImplementedError("ownership test double: AOT only")
        def compile_model_aot(self, model, example_inputs, spec=None):
            spec = spec or self.spec
            (Path(spec.cache_dir) / "kernel.bin").write_bytes(b"compiled" * 64)
            return _Compiled()
    """
)


def install_writer(site: Path) -> None:
    install_distribution(
        site,
        dist="aot-writer-test-backend",
        version="0.0.1",
        module="aot_writer_test_backend",
        source=WRITER_BACKEND,
        entry_points={"writer": "aot_writer_test_backend:Writer"},
    )


@pytest.fixture
def writer(site: Path) -> Path:
    install_writer(site)
    return site


def snapshot(root: Path) -> dict[str, Any]:
    """Every path below ``root`` (and root itself) with its type and content."""
    out: dict[str, Any] = {}
    paths = [root, *sorted(root.rglob("*"))] if root.is_dir() and not root.is_symlink() else [root]
    for p in paths:
        rel = str(p.relative_to(root.parent))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        elif p.is_file():
            out[rel] = ("file", p.read_bytes())
        else:  # a FIFO: reading it would block
            out[rel] = ("other", p.stat().st_mode)
    return out


def _web_app(t: Path) -> Path:
    """The issue's reproduction: a web app whose manifest.json is not aot's."""
    t.mkdir(parents=True, exist_ok=True)
    web = t / "web"
    (web / "assets").mkdir(parents=True)
    (web / "assets" / "app.js").write_text("console.log('hi')")
    (web / "manifest.json").write_text('{"name": "x"}')
    (web / "index.html").write_text("hi")
    return web


def _malformed(t: Path) -> Path:
    t.mkdir(parents=True, exist_ok=True)
    d = t / "broken"
    d.mkdir()
    (d / "manifest.json").write_text('{"format": "aot-artifact", "key": ')
    (d / "notes.txt").write_text("mine")
    return d


def _foreign_format(t: Path) -> Path:
    t.mkdir(parents=True, exist_ok=True)
    d = t / "foreign"
    (d / "files").mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"format": "webpack", "files": []}))
    return d


def _plain_dir(t: Path) -> Path:
    t.mkdir(parents=True, exist_ok=True)
    d = t / "results"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    return d


def _a_file(t: Path) -> Path:
    t.mkdir(parents=True, exist_ok=True)
    f = t / "data.bin"
    f.write_bytes(b"\x00precious")
    return f


def _link_to_plain_dir(t: Path) -> Path:
    target = _plain_dir(t)
    link = t / "link"
    link.symlink_to(target)
    return link


def _fifo_manifest(t: Path) -> Path:
    t.mkdir(parents=True, exist_ok=True)
    d = t / "fifo"
    d.mkdir()
    os.mkfifo(d / "manifest.json")
    return d


FOREIGN: list[tuple[str, Callable[[Path], Path], str]] = [
    ("web-app-manifest", _web_app, "is not an intact aot manifest"),
    ("malformed-manifest", _malformed, "is not an intact aot manifest"),
    ("foreign-format", _foreign_format, "not an aot manifest"),
    ("plain-directory", _plain_dir, "holds no manifest.json"),
    ("a-file", _a_file, "is a file"),
    ("link-to-plain-dir", _link_to_plain_dir, "holds no manifest.json"),
    ("fifo-manifest", _fifo_manifest, "not a regular file"),
]


@pytest.mark.parametrize(("name", "make", "phrase"), FOREIGN, ids=[f[0] for f in FOREIGN])
def test_compile_out_never_replaces_what_aot_did_not_write(
    name: str,
    make: Callable[[Path], Path],
    phrase: str,
    *,
    writer: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = make_model(tmp_path / "m")
    victim = make(tmp_path / "user")
    before = snapshot(victim)
    argv = ["--cache-dir", str(tmp_path / "c"), "compile", str(model), "--backend", "writer"]
    code = main([*argv, "--out", str(victim)])
    err = capsys.readouterr().err
    assert code == ExitCode.CACHE_NOT_WRITABLE, err
    assert phrase in err and "nothing was changed" in err
    assert snapshot(victim) == before
    # not even --force makes aot replace it
    assert main([*argv, "--out", str(victim), "--force"]) == ExitCode.CACHE_NOT_WRITABLE
    assert snapshot(victim) == before
    assert [p.name for p in victim.parent.iterdir() if p.name.startswith(".")] == []


def test_compile_out_writes_new_or_empty_dirs_and_replaces_its_own(
    writer: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_model(tmp_path / "m")
    argv = ["--cache-dir", str(tmp_path / "c"), "compile", str(model), "--backend", "writer"]
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new" / "art", empty):
        assert main([*argv, "--out", str(out)]) == ExitCode.OK, capsys.readouterr().err
        report = artifacts.verify(out)
        assert report.ok and report.manifest is not None
        assert json.loads((out / "manifest.json").read_text())["format"] == "aot-artifact"
    # aot's own artifact, compiled for another environment but every file as listed: it is
    # provably aot's, so it is rebuilt in place
    (empty / "files" / "kernel.bin").unlink()
    assert main([*argv, "--out", str(empty)]) == ExitCode.OK
    assert "compiling afresh" in capsys.readouterr().err
    assert artifacts.verify(empty).ok
    # damaged (bytes differ from the manifest): no longer provably aot's, so it is refused
    # and left as it is, --force or not (until 2026-12 it was rebuilt in place)
    (empty / "files" / "kernel.bin").write_bytes(b"tampered")
    for force in ([], ["--force"]):
        assert main([*argv, "--out", str(empty), *force]) == ExitCode.CACHE_NOT_WRITABLE
        assert "files/kernel.bin" in capsys.readouterr().err
        assert (empty / "files" / "kernel.bin").read_bytes() == b"tampered"
    # no staging or trash directory is left beside it (its lock file stays while it exists)
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == [".empty.lock"]


def test_publish_and_build_refuse_foreign_directories(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    for _, make, _phrase in FOREIGN:
        victim = make(tmp_path / f"user-{make.__name__}")
        before = snapshot(victim)
        built: list[Path] = []

        def build(files: Path, built: list[Path] = built) -> dict[str, Any]:
            built.append(files)
            (files / "x.bin").write_bytes(b"x")
            return {"device": "cpu"}

        with pytest.raises(NotOwnedError, match="refusing to replace"):
            artifacts.build_and_publish(
                victim, key=key_for(model), build=build, backend="test",
                backend_version="", spec=SPEC, model=model, force=True,
            )  # fmt: skip
        assert built == []  # refused before compiling, not after
        staging = tmp_path / "staging"
        (staging / "files").mkdir(parents=True)
        artifacts.write_manifest(
            staging, key=key_for(model), backend="test", backend_version="", spec=SPEC,
            model=model,
        )  # fmt: skip
        with pytest.raises(NotOwnedError):
            artifacts.publish(staging, victim)
        assert snapshot(victim) == before
        assert staging.is_dir()  # the new artifact was not moved anywhere either
        artifacts.remove_entry(staging)


def test_cache_clear_removes_aot_entries_and_names_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = artifacts.ArtifactStore(tmp_path / "cache")
    make_artifact(store.path("mine"), model=make_model(tmp_path / "m"))
    theirs = _plain_dir(store.entries_dir)
    broken = _malformed(store.entries_dir)
    before = {p.name: snapshot(p) for p in (theirs, broken)}
    argv = ["--cache-dir", str(store.root), "cache", "clear"]
    for extra in (["--invalid"], [], [theirs.name]):
        code = main([*argv, *extra])
        out, err = capsys.readouterr()
        assert code == ExitCode.CACHE_NOT_WRITABLE, (extra, out, err)
        assert "refusing to delete" in err and theirs.name in err
        assert {p.name: snapshot(p) for p in (theirs, broken)} == before
    assert store.entry_keys() == sorted([theirs.name, broken.name])
    with pytest.raises(NotOwnedError):
        store.remove(theirs.name)


def test_import_force_never_replaces_a_foreign_directory(tmp_path: Path) -> None:
    src = artifacts.ArtifactStore(tmp_path / "src")
    make_artifact(src.path("a"), model=make_model(tmp_path / "m"))
    archive = tmp_path / "a.tar"
    artifacts.export_artifact(src.path("a"), archive)
    store = artifacts.ArtifactStore(tmp_path / "dst")
    store.entries_dir.mkdir(parents=True)
    victim = _web_app(tmp_path)
    victim.rename(store.path(key_for(make_model(tmp_path / "m"))))
    victim = store.path(key_for(make_model(tmp_path / "m")))
    before = snapshot(victim)
    with pytest.raises(NotOwnedError):
        artifacts.import_artifact(archive, store, replace=True)
    assert snapshot(victim) == before
    assert store.leftovers() == []


def test_a_manifest_written_before_the_format_marker_still_proves_ownership(
    tmp_path: Path,
) -> None:
    model = make_model(tmp_path / "m")
    art = tmp_path / "old"
    make_artifact(art, model=model)
    data = json.loads((art / "manifest.json").read_text())
    del data["format"], data["host_fingerprint"]  # what aot-core wrote before them
    (art / "manifest.json").write_text(json.dumps(data))
    assert artifacts.ownership_problem(art) is None
    assert artifacts.verify(art).ok  # and it still loads
    # but a manifest.json with neither the marker nor every aot field proves nothing
    data.pop("spec_fingerprint")
    (art / "manifest.json").write_text(json.dumps(data))
    assert "not an intact aot manifest" in (artifacts.ownership_problem(art) or "")
    data["format"] = "something-else"
    (art / "manifest.json").write_text(json.dumps(data))
    assert "not an aot manifest" in (artifacts.ownership_problem(art) or "")


def test_removing_a_linked_entry_removes_the_link_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "media" / "art"
    make_artifact(elsewhere, model=make_model(tmp_path / "m"))
    before = snapshot(elsewhere)
    store = artifacts.ArtifactStore(tmp_path / "cache")
    store.entries_dir.mkdir(parents=True)
    store.path("linked").symlink_to(elsewhere)
    assert store.entry_keys() == ["linked"]
    argv = ["--cache-dir", str(store.root), "cache", "clear"]
    assert main([*argv, "linked"]) == ExitCode.OK
    assert "removed 1 entry" in capsys.readouterr().out
    assert snapshot(elsewhere) == before
    assert list(store.entries_dir.iterdir()) == []  # no trash link left behind
    # a later cleanup has nothing to report
    assert main([*argv, "--leftovers"]) == ExitCode.OK
    assert "leftover" not in capsys.readouterr().out


def test_compile_out_onto_a_mount_point_gets_a_documented_code(tmp_path: Path) -> None:
    """An empty --out that is a mount point cannot be renamed over: exit 10, no traceback."""
    site = tmp_path / "site"
    site.mkdir()
    install_writer(site)
    model = make_model(tmp_path / "m")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    aot = f"{sys.executable} -m aot_core.cli.app --cache-dir {tmp_path / 'c'}"
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
        f"{aot} compile {model} --backend writer --out {mnt}; echo rc=$?"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env,
            timeout=120, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        pytest.skip("needs unshare")
    if "rc=" not in proc.stdout:
        pytest.skip(f"needs `unshare -m` and tmpfs mounts: {proc.stderr[-300:]}")
    assert f"rc={int(ExitCode.CACHE_NOT_WRITABLE)}" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Device or resource busy" in proc.stderr


# ------------------------------------------------------------------ issue 23: a copied manifest


def _project_with_copied_manifest(t: Path, *, with_files: bool = False) -> Path:
    """The issue's project: its own sources beside a copy of a real entry's manifest.json
    (``with_files``: the entry's files/ copied too, so every listed file verifies)."""
    real = t / "real-entry"
    make_artifact(real, model=make_model(t / "m"))
    project = t / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "NOTES.md").write_text("# notes nobody else has\n")
    (project / "manifest.json").write_bytes((real / "manifest.json").read_bytes())
    if with_files:
        for rel, data in ((r.path, (real / r.path).read_bytes()) for r in _listed(real)):
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            (project / rel).write_bytes(data)
    return project


def _listed(art: Path) -> tuple[artifacts.FileRecord, ...]:
    return artifacts.read_manifest(art).files


@pytest.mark.parametrize("with_files", [False, True], ids=["manifest-only", "whole-entry"])
def test_a_copied_manifest_does_not_make_a_project_aots(
    with_files: bool, *, writer: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 item 1: `aot compile --out PROJECT` deleted src/main.py and NOTES.md."""
    project = _project_with_copied_manifest(tmp_path, with_files=with_files)
    before = snapshot(project)
    model = make_model(tmp_path / "m")
    argv = ["--cache-dir", str(tmp_path / "c"), "compile", str(model), "--backend", "writer"]
    for force in ([], ["--force"]):
        code = main([*argv, "--out", str(project), *force])
        err = capsys.readouterr().err
        assert code == ExitCode.CACHE_NOT_WRITABLE, err
        assert "NOTES.md (not listed in the manifest)" in err
        assert "src/main.py (not listed in the manifest)" in err
        assert "nothing was changed" in err and "Traceback" not in err
        assert snapshot(project) == before
    assert artifacts.ownership_problem(project) is not None


def test_files_whose_bytes_differ_or_links_are_not_aots(tmp_path: Path) -> None:
    art = tmp_path / "art"
    make_artifact(art, model=make_model(tmp_path / "m"))
    assert artifacts.ownership_problem(art) is None
    kernel = art / "files/inductor/kernels/k1.so"
    original = kernel.read_bytes()
    kernel.write_bytes(original[:10])  # truncated: a user's file of the same name, maybe
    assert "k1.so (10 bytes, the manifest says 2004)" in (artifacts.ownership_problem(art) or "")
    kernel.write_bytes(bytes(len(original)))  # same size, other bytes
    assert "k1.so (its sha256 differs" in (artifacts.ownership_problem(art) or "")
    kernel.write_bytes(original)
    (art / "files/link").symlink_to(tmp_path)
    assert "files/link (a symbolic link)" in (artifacts.ownership_problem(art) or "")
    (art / "files/link").unlink()
    kernel.unlink()  # a listed file that is absent: removing the rest loses nothing
    assert artifacts.ownership_problem(art) is None
    # many foreign files: the first few are named, then how many more
    for i in range(8):
        (art / f"mine-{i}.txt").write_text("x")
    problem = artifacts.ownership_problem(art) or ""
    assert "mine-4.txt" in problem and "mine-5.txt" not in problem and "and 3 more" in problem


def test_cache_clear_refuses_a_store_directory_with_a_copied_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = artifacts.ArtifactStore(tmp_path / "cache")
    store.entries_dir.mkdir(parents=True)
    project = _project_with_copied_manifest(tmp_path, with_files=True)
    project.rename(store.path("copied"))
    before = snapshot(store.path("copied"))
    for extra in ([], ["copied"], ["--invalid"]):
        code = main(["--cache-dir", str(store.root), "cache", "clear", *extra])
        err = capsys.readouterr().err
        assert code == ExitCode.CACHE_NOT_WRITABLE and "NOTES.md" in err, (extra, err)
        assert snapshot(store.path("copied")) == before


def test_discard_extra_never_deletes_beside_the_manifest(tmp_path: Path) -> None:
    """verify_for_load(discard_extra=True), which aot-vllm calls, deletes unlisted files
    only below files/: a whole entry copied into a project must not cost its sources."""
    project = _project_with_copied_manifest(tmp_path, with_files=True)
    (project / "files" / "engine-wrote.bin").write_bytes(b"unlisted")
    before = snapshot(project)
    with pytest.raises(ArtifactCorruptError, match=r"NOTES\.md"):
        artifacts.verify_for_load(project, discard_extra=True)
    assert snapshot(project) == before
    # an entry with unlisted files only below files/ (a crashed engine start): discarded
    (project / "NOTES.md").unlink()
    shutil.rmtree(project / "src")
    artifacts.verify_for_load(project, discard_extra=True)
    assert not (project / "files" / "engine-wrote.bin").exists()


def test_ls_and_verify_suggest_only_a_command_that_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 item 5: ls/verify said `aot cache clear KEY` for directories clear refuses."""
    store = artifacts.ArtifactStore(tmp_path / "cache")
    make_artifact(store.path("mine"), model=make_model(tmp_path / "m"))
    (store.path("mine") / "files" / "empty.txt").unlink()  # damaged, but provably aot's
    broken = _malformed(store.entries_dir)
    copied = _project_with_copied_manifest(tmp_path / "p", with_files=True)
    copied.rename(store.path("copied"))
    argv = ["--cache-dir", str(store.root), "cache"]
    for action in (["ls"], ["ls", "--verify"], ["verify"]):
        main([*argv, *action])
        out = capsys.readouterr().out
        for foreign in (broken.name, "copied", "KEY"):
            assert f"aot cache clear {foreign}" not in out, (action, out)
        if action == ["ls"]:  # reads no checksums: only the malformed manifest shows
            assert out.count("move it away yourself") == 1, out
            continue
        assert "`aot cache clear mine` removes it" in out, (action, out)
        assert out.count("move it away yourself") == 2, (action, out)
    # and what they suggest works: clear removes exactly the one it named
    assert main([*argv, "clear", "mine"]) == ExitCode.OK
    assert store.entry_keys() == sorted(["copied", broken.name])


def test_a_store_directory_whose_name_is_no_key_is_listed_and_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = artifacts.ArtifactStore(tmp_path / "cache")
    make_artifact(store.path("mine"), model=make_model(tmp_path / "m"))
    odd = store.entries_dir / "my stuff"
    odd.mkdir()
    (odd / "thesis.tex").write_text("years of work")
    argv = ["--cache-dir", str(store.root), "cache"]
    assert main([*argv, "ls"]) == ExitCode.OK
    assert "my stuff" in capsys.readouterr().out
    assert main([*argv, "clear"]) == ExitCode.CACHE_NOT_WRITABLE
    out, err = capsys.readouterr()
    assert "removed 1 entry" in out and "my stuff" in err and "Traceback" not in err
    assert (odd / "thesis.tex").read_text() == "years of work"
