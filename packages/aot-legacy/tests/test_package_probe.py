"""Fast tests: a package directory is only loaded when its manifest says it was built for
this environment and model structure, its files match their checksums, and the probe
that ran right after the build loaded and ran it (no compile needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from aot_core import ArtifactCorruptError, ArtifactIncompatibleError
from aot_core.errors import NotOwnedError
from aot_legacy.package_build import FILES
from aot_legacy.packages import PACKAGE_FORMAT, check_replaceable, verify_package

ENV = {"torch": "test", "cpu_isa": "AVX2"}
KEY = {"model_config": "abc", "weights": "inputs"}
NAMES = ["model.embed_tokens.weight", "lm_head.weight"]


def _package(directory: Path, **changes: object) -> Path:
    files = {}
    for name in FILES:
        (directory / name).write_bytes(name.encode() * 10)
        files[name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    manifest = {
        "format": PACKAGE_FORMAT,
        "environment": ENV,
        "key": KEY,
        "weights": {"binding": "inputs", "names": NAMES},
        "probe": {"ok": True, "detail": ""},
        "files": files,
        **changes,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def _verify(directory: Path, names: list[str] = NAMES) -> object:
    return verify_package(directory, environment=ENV, key_data=KEY, weight_names=names)


def test_intact_package_verifies(tmp_path: Path) -> None:
    assert _verify(_package(tmp_path))


def test_a_failed_probe_is_remembered_and_refused(tmp_path: Path) -> None:
    _package(tmp_path, probe={"ok": False, "detail": "the loader crashed with signal 11"})
    with pytest.raises(ArtifactIncompatibleError, match="crashed with signal 11"):
        _verify(tmp_path)
    _package(tmp_path, probe=None)
    with pytest.raises(ArtifactIncompatibleError, match="no verdict recorded"):
        _verify(tmp_path)


def test_packages_that_embed_weights_are_refused(tmp_path: Path) -> None:
    _package(tmp_path, format=1)  # format 1 packages held the weights of one checkpoint
    with pytest.raises(ArtifactIncompatibleError, match="weight-free"):
        _verify(tmp_path)
    _package(tmp_path, weights=None)
    with pytest.raises(ArtifactIncompatibleError, match="other weight tensors"):
        _verify(tmp_path)
    _package(tmp_path)
    with pytest.raises(ArtifactIncompatibleError, match="other weight tensors"):
        _verify(tmp_path, names=[*NAMES, "model.norm.weight"])


def test_changed_files_are_refused(tmp_path: Path) -> None:
    _package(tmp_path)
    (tmp_path / "decode.pt2").write_bytes(b"x")
    with pytest.raises(ArtifactCorruptError, match="does not match its checksum"):
        _verify(tmp_path)
    (tmp_path / "decode.pt2").unlink()
    with pytest.raises(ArtifactCorruptError, match="missing"):
        _verify(tmp_path)


def test_other_environment_is_refused(tmp_path: Path) -> None:
    _package(tmp_path, environment={**ENV, "torch": "2.5.0"})
    with pytest.raises(ArtifactIncompatibleError, match=r"torch: built for '2\.5\.0'"):
        _verify(tmp_path)


def test_a_package_dir_holding_user_files_is_never_replaced(tmp_path: Path) -> None:
    # The issue-10 case through backend_options.package_dir: another tool's manifest.json
    # fails package verification, and the rebuild must not delete the directory.
    user = tmp_path / "web"
    (user / "assets").mkdir(parents=True)
    (user / "manifest.json").write_text('{"name": "x"}')
    (user / "index.html").write_text("hi")
    with pytest.raises(NotOwnedError, match="nothing was changed"):
        check_replaceable(user)
    assert sorted(p.name for p in user.iterdir()) == ["assets", "index.html", "manifest.json"]


def test_empty_and_package_dirs_may_be_replaced(tmp_path: Path) -> None:
    check_replaceable(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    check_replaceable(_package(tmp_path / "empty"))


def test_a_copied_package_manifest_does_not_make_a_directory_replaceable(
    tmp_path: Path,
) -> None:
    """Issue 23 item 1 through backend_options.package_dir: a copy of a real package
    manifest beside someone's files (or package files whose bytes changed) proves nothing."""
    (tmp_path / "real").mkdir()
    real = _package(tmp_path / "real")
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "NOTES.md").write_text("mine")
    (project / "manifest.json").write_bytes((real / "manifest.json").read_bytes())
    before = sorted((p.relative_to(project), p.read_bytes()) for p in project.rglob("*.*"))
    with pytest.raises(NotOwnedError, match=r"NOTES\.md, src/main\.py"):
        check_replaceable(project)
    assert sorted((p.relative_to(project), p.read_bytes()) for p in project.rglob("*.*")) == before
    (real / "decode.pt2").write_bytes(b"changed")
    with pytest.raises(NotOwnedError, match=r"decode\.pt2"):
        check_replaceable(real)
    (real / "decode.pt2").unlink()  # absent: replacing the rest loses nothing
    check_replaceable(real)
