"""``aot cache export`` and ``import``: never overwrite or corrupt, never vouch unread.

Real artifacts, real tar files, the real command in-process.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from aot_core import artifacts
from aot_core.cli.app import ExitCode, main
from aot_core.errors import ArtifactCorruptError, NotOwnedError
from artifact_support import make_artifact, make_model


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> artifacts.ArtifactStore:
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "cache"))
    store = artifacts.ArtifactStore()
    make_artifact(store.path("e"), model=make_model(tmp_path / "m"))
    return store


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_export_never_overwrites_an_unrelated_file_without_force(
    store: artifacts.ArtifactStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "backup.tar"
    precious.write_bytes(b"last week's backup")
    code, _, err = run(["cache", "export", "e", str(precious)], capsys)
    assert code == ExitCode.CACHE_NOT_WRITABLE, err
    assert "already exists; pass --force" in err
    assert precious.read_bytes() == b"last week's backup"
    with pytest.raises(NotOwnedError):
        artifacts.export_artifact(store.path("e"), precious)
    assert precious.read_bytes() == b"last week's backup"
    # the default name inside a directory is no exception
    (tmp_path / "out").mkdir()
    default = tmp_path / "out" / "e.aot.tar.gz"
    default.write_text("someone else's")
    assert run(["cache", "export", "e", str(tmp_path / "out")], capsys)[0] == 10
    assert default.read_text() == "someone else's"
    # --force is the user's permission to overwrite it
    code, out, _ = run(["cache", "export", "e", str(precious), "--force"], capsys)
    assert code == ExitCode.OK and out.startswith(str(precious))
    with tarfile.open(precious) as tar:
        assert tar.getnames()[0] == artifacts.MANIFEST_NAME


@pytest.mark.parametrize("where", [".", "files", "files/sub/x.tar", "x.tar"])
def test_export_into_the_entry_itself_is_refused_even_with_force(
    where: str, store: artifacts.ArtifactStore, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = store.path("e")
    (entry / "files" / "sub").mkdir(exist_ok=True)  # an unlisted dir; no file added
    out = entry / where
    for force in ([], ["--force"]):
        code, _, err = run(["cache", "export", "e", str(out), *force], capsys)
        assert code == ExitCode.CACHE_NOT_WRITABLE, err
        assert "inside the artifact" in err
    (entry / "files" / "sub").rmdir()
    assert artifacts.verify(entry).ok  # the entry was not touched
    # and through a link to the entry as well
    link = entry.parent.parent / "link-to-entry"
    link.symlink_to(entry)
    assert run(["cache", "export", "e", str(link / "y.tar")], capsys)[0] == 10
    assert artifacts.verify(entry).ok


def _tampered_copy(archive: Path, out: Path, victim: str) -> Path:
    """The same archive with one byte of ``victim`` flipped (the manifest left alone)."""
    with tarfile.open(archive) as tin, tarfile.open(out, "w") as tout:
        for member in tin.getmembers():
            fh = tin.extractfile(member)
            data = fh.read() if fh is not None else b""
            if member.name == victim:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            tout.addfile(member, io.BytesIO(data))
    return out


def test_a_tampered_archive_is_refused_even_when_an_intact_entry_has_its_key(
    store: artifacts.ArtifactStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.tar"
    artifacts.export_artifact(store.path("e"), good)
    other = tmp_path / "other"
    assert main(["--cache-dir", str(other), "cache", "import", str(good)]) == ExitCode.OK
    key = artifacts.read_manifest(store.path("e")).key
    victim = "files/inductor/kernels/k1.so"
    bad = _tampered_copy(good, tmp_path / "bad.tar", victim)
    capsys.readouterr()
    code, out, err = run(["--cache-dir", str(other), "cache", "import", str(bad)], capsys)
    assert code == ExitCode.ARTIFACT_CORRUPT, out + err
    assert "checksums do not match" in err and victim in err
    assert "already present" not in out
    assert artifacts.verify(other / "entries" / key).ok
    assert artifacts.ArtifactStore(other).leftovers() == []
    # the genuine archive is still recognised as identical, having been read
    code, out, _ = run(["--cache-dir", str(other), "cache", "import", str(good)], capsys)
    assert code == ExitCode.OK and "already present (the archive's checksums were verified)" in out


@pytest.mark.parametrize(
    "name", ["../evil", "/abs/dir", "files/../../up", "elsewhere", "files/a/../../b"]
)
def test_import_refuses_directory_members_outside_files(
    name: str, store: artifacts.ArtifactStore, tmp_path: Path
) -> None:
    good = tmp_path / "good.tar"
    artifacts.export_artifact(store.path("e"), good)
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as tin, tarfile.open(bad, "w") as tout:
        for member in tin.getmembers():
            tout.addfile(member, tin.extractfile(member))
        d = tarfile.TarInfo(name)
        d.type = tarfile.DIRTYPE
        tout.addfile(d)
    dst = artifacts.ArtifactStore(tmp_path / "dst")
    with pytest.raises(ArtifactCorruptError, match="unexpected archive member"):
        artifacts.import_artifact(bad, dst)
    assert dst.entry_keys() == []
    assert not (tmp_path / "evil").exists() and not Path("/abs/dir").exists()


def test_directory_members_under_files_are_accepted(
    store: artifacts.ArtifactStore, tmp_path: Path
) -> None:
    good = tmp_path / "good.tar"
    artifacts.export_artifact(store.path("e"), good)
    with_dirs = tmp_path / "dirs.tar"
    with tarfile.open(good) as tin, tarfile.open(with_dirs, "w") as tout:
        for name in ("files", "files/inductor/"):
            d = tarfile.TarInfo(name)
            d.type = tarfile.DIRTYPE
            tout.addfile(d)
        for member in tin.getmembers():
            tout.addfile(member, tin.extractfile(member))
    dest, _, placed = artifacts.import_artifact(with_dirs, artifacts.ArtifactStore(tmp_path / "d"))
    assert placed and artifacts.verify(dest).ok


# ------------------------------------------------------------------ issue 23: member cap


def _many_files_archive(t: Path, count: int) -> Path:
    """An export of an artifact of ``count`` tiny files, its manifest consistent."""
    art = t / f"art-{count}"
    files = {f"many/{i:05d}.bin": b"" for i in range(count)}
    make_artifact(art, model=make_model(t / "m"), files=files)
    archive = t / f"many-{count}.tar"
    artifacts.export_artifact(art, archive)
    return archive


def test_an_archive_of_50000_files_is_refused_by_the_member_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 item 5: 50,000 files with a consistent manifest were accepted, no cap."""
    archive = tmp_path / "many.tar"
    data = json.loads(_manifest_json(tmp_path, 50_000))
    with tarfile.open(archive, "w") as tar:
        raw = json.dumps(data).encode()
        info = tarfile.TarInfo(artifacts.MANIFEST_NAME)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
        for record in data["files"]:
            tar.addfile(tarfile.TarInfo(record["path"]), io.BytesIO(b""))
    cache = tmp_path / "cache"
    code, _, err = run(["--cache-dir", str(cache), "cache", "import", str(archive)], capsys)
    assert code == ExitCode.ARTIFACT_CORRUPT, err
    assert f"more than {artifacts.DEFAULT_MAX_MEMBERS} members" in err
    assert "--max-files" in err and "Traceback" not in err
    assert not (cache / "entries").exists() or list((cache / "entries").iterdir()) == []


def _manifest_json(t: Path, count: int) -> str:
    """A real manifest of an artifact, its files replaced by ``count`` empty ones."""
    art = t / "one"
    make_artifact(art, model=make_model(t / "m"), files={"x.bin": b""})
    data = json.loads((art / artifacts.MANIFEST_NAME).read_text())
    empty = hashlib.sha256(b"").hexdigest()
    data["files"] = [
        {"path": f"files/many/{i:05d}.bin", "sha256": empty, "size": 0} for i in range(count)
    ]
    return json.dumps(data)


def test_the_member_cap_is_configurable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _many_files_archive(tmp_path, 30)  # 31 members: the manifest and 30 files
    cache = ["--cache-dir", str(tmp_path / "cache"), "cache", "import", str(archive)]
    code, _, err = run([*cache, "--max-files", "30"], capsys)
    assert code == ExitCode.ARTIFACT_CORRUPT and "more than 30 members" in err
    monkeypatch.setenv(artifacts.MAX_MEMBERS_ENV_VAR, "30")
    code, _, err = run(cache, capsys)
    assert code == ExitCode.ARTIFACT_CORRUPT and "more than 30 members" in err
    code, _, err = run([*cache, "--max-files", "31"], capsys)  # the option wins
    assert code == ExitCode.OK, err
    for bad in ("", "0", "-5", "many"):
        monkeypatch.setenv(artifacts.MAX_MEMBERS_ENV_VAR, bad)
        code, _, err = run([*cache, "--force"], capsys)
        assert code == ExitCode.USAGE and artifacts.MAX_MEMBERS_ENV_VAR in err, (bad, err)
