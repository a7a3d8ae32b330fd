"""Verification stamps (``aot_core.artifacts.stamps``): an entry unchanged since a full
check is reused without hashing its files again, and any change to a file (a rewrite with
its size and mtime restored, a truncation), a stamp file that is corrupt or another
entry's, or ``AOT_VERIFY=full`` brings back full hashing. Real entries, real files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aot_core import artifacts
from aot_core.artifacts import stamps, verification
from artifact_support import FILES, SPEC, make_artifact, make_model

HASHED_FILES = len(FILES)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file verification hashes, by name (the real hasher still runs)."""
    names: list[str] = []
    real = verification._sha256_file

    def counting(path: Path) -> str:
        names.append(path.name)
        return real(path)

    monkeypatch.setattr(verification, "_sha256_file", counting)
    return names


@pytest.fixture
def not_racy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written moments ago may be stamped (the racy window is tested on its own)."""
    monkeypatch.setattr(stamps, "RACY_S", 0.0)


def _entry(tmp_path: Path) -> tuple[Path, str]:
    dest = tmp_path / "cache" / "entry"
    manifest = make_artifact(dest, model=make_model(tmp_path))
    return dest, manifest.key


def _reuse(dest: Path, key: str) -> artifacts.Manifest | None:
    book = artifacts.load_stamps(dest.parent / artifacts.STAMPS_DIR, key=key, entry=dest)
    return artifacts.reusable_entry(dest, key=key, backend="test", stamps=book)


def _report(dest: Path, key: str) -> artifacts.VerifyReport:
    book = artifacts.load_stamps(dest.parent / artifacts.STAMPS_DIR, key=key, entry=dest)
    return artifacts.verify(dest, stamps=book)


def _stamp_file(dest: Path, key: str) -> Path:
    return dest.parent / artifacts.STAMPS_DIR / f"{key}.json"


@pytest.mark.usefixtures("not_racy")
def test_a_reuse_after_a_full_check_hashes_nothing(tmp_path: Path, hashed: list[str]) -> None:
    dest, key = _entry(tmp_path)
    hashed.clear()
    assert _reuse(dest, key) is not None  # the first check hashes every file, then stamps
    assert len(hashed) == HASHED_FILES
    assert _stamp_file(dest, key).is_file()
    hashed.clear()
    assert _reuse(dest, key) is not None
    assert _reuse(dest, key) is not None
    assert hashed == []


@pytest.mark.usefixtures("not_racy")
def test_a_rewrite_with_size_and_mtime_restored_is_caught(
    tmp_path: Path, hashed: list[str]
) -> None:
    dest, key = _entry(tmp_path)
    assert _reuse(dest, key) is not None
    target = dest / "files/torch_compile_cache/abc/rank_0_0/backbone/artifact.bin"
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as stamped
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    hashed.clear()
    report = _report(dest, key)
    assert "artifact.bin" in hashed  # its ctime changed: hashed again
    assert report.tampered == ("files/torch_compile_cache/abc/rank_0_0/backbone/artifact.bin",)
    assert _reuse(dest, key) is None  # refused, as without stamps


@pytest.mark.usefixtures("not_racy")
def test_a_truncated_file_is_caught(tmp_path: Path) -> None:
    dest, key = _entry(tmp_path)
    assert _reuse(dest, key) is not None
    target = dest / "files/inductor/kernels/k1.so"
    with target.open("r+b") as fh:
        fh.truncate(100)
    report = _report(dest, key)
    assert report.truncated == ("files/inductor/kernels/k1.so (100 of 2004 bytes)",)
    assert _reuse(dest, key) is None


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x00not json{")


def _another_entry(path: Path) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "entry": "/somewhere/else"}))


def _another_key(path: Path) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "key": "test-someone-elses-key"}))


def _bad_fields(path: Path) -> None:
    data = json.loads(path.read_text())
    for stamp in data["files"].values():
        stamp["size"] = str(stamp["size"])  # a stamp that is not aot's shape
    path.write_text(json.dumps(data))


def _not_a_mapping(path: Path) -> None:
    path.write_text(json.dumps(["files"]))


@pytest.mark.usefixtures("not_racy")
@pytest.mark.parametrize(
    "spoil", [_corrupt, _another_entry, _another_key, _bad_fields, _not_a_mapping]
)
def test_a_corrupt_or_foreign_stamp_file_means_a_full_check(
    tmp_path: Path, hashed: list[str], spoil: Callable[[Path], None]
) -> None:
    dest, key = _entry(tmp_path)
    assert _reuse(dest, key) is not None
    spoil(_stamp_file(dest, key))
    hashed.clear()
    assert _reuse(dest, key) is not None  # intact: reused, after hashing every file
    assert len(hashed) == HASHED_FILES
    hashed.clear()
    assert _reuse(dest, key) is not None  # and stamped afresh
    assert hashed == []


@pytest.mark.usefixtures("not_racy")
def test_a_stamp_for_another_checksum_is_not_believed(tmp_path: Path, hashed: list[str]) -> None:
    # the stamp vouches for bytes with one checksum; a manifest listing another is checked
    dest, key = _entry(tmp_path)
    assert _reuse(dest, key) is not None
    path = _stamp_file(dest, key)
    data = json.loads(path.read_text())
    data["files"]["files/empty.txt"]["sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    hashed.clear()
    assert _reuse(dest, key) is not None
    assert hashed == ["empty.txt"]


@pytest.mark.usefixtures("not_racy")
def test_aot_verify_full_hashes_every_file(
    tmp_path: Path, hashed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, key = _entry(tmp_path)
    assert _reuse(dest, key) is not None
    monkeypatch.setenv(artifacts.VERIFY_ENV_VAR, "full")
    hashed.clear()
    assert _reuse(dest, key) is not None
    assert len(hashed) == HASHED_FILES


def test_files_changed_just_before_a_check_are_not_stamped(
    tmp_path: Path, hashed: list[str]
) -> None:
    # within RACY_S of a write, a second write may leave the stat as it was: hash again
    dest, key = _entry(tmp_path)
    assert _reuse(dest, key) is not None
    hashed.clear()
    assert _reuse(dest, key) is not None
    assert len(hashed) == HASHED_FILES


@pytest.mark.usefixtures("not_racy")
def test_files_stat_before_the_manifest_hashes_them_are_stamped_at_publish(
    tmp_path: Path, hashed: list[str]
) -> None:
    dest = tmp_path / "cache" / "entry"
    model = make_model(tmp_path)
    key = artifacts.entry_key(backend="test", backend_version="", model=model, spec=SPEC)
    before: list[artifacts.FileStats] = []

    def build(files_dir: Path) -> dict[str, Any]:
        for rel, data in FILES.items():
            (files_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (files_dir / rel).write_bytes(data)
        artifacts.settle(files_dir)
        before.append(artifacts.stat_files(files_dir))
        return {"device": "cpu", "extra": {}}

    manifest, built = artifacts.build_and_publish(
        dest, key=key, build=build, backend="test", backend_version="", spec=SPEC, model=model
    )
    assert built
    book = artifacts.load_stamps(dest.parent / artifacts.STAMPS_DIR, key=key, entry=dest)
    artifacts.stamp_published(book, before[0], manifest.files)
    hashed.clear()
    assert _reuse(dest, key) is not None  # the first reuse already hashes nothing
    assert hashed == []
