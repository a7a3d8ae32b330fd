"""A manifest must agree with itself and with what its backend requires, and be a file.

Edits that leave every checksum intact (the versions, the pins, the spec, the key) are
tampering too; and a ``manifest.json`` that is a FIFO must never hang a command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aot_core import artifacts, registry
from aot_core.cli.app import ExitCode, main
from aot_core.errors import ArtifactCorruptError
from artifact_support import make_artifact, make_model, rewrite_manifest
from fake_backend import install_distribution

# A backend that pins torch and vLLM, as aot-vllm does; aot-core learns what a backend
# requires only from the backend (Compiler.pins), so the test installs one.
PINNED_BACKEND = textwrap.dedent(
    """
    from aot_core.artifacts import torch_version
    from fake_backend import fake_backend

    Pinned = fake_backend(
        "vllm",
        pins={"torch": torch_version(), "vllm": "0.32.0"},
        double="integrity test double",
    )
    """
)


@pytest.fixture
def art(tmp_path: Path, site: Path) -> Path:
    install_distribution(
        site,
        dist="aot-pinned-backend",
        version="1.0",
        module="aot_pinned_backend",
        source=PINNED_BACKEND,
        entry_points={"vllm": "aot_pinned_backend:Pinned"},
    )
    registry.refresh()
    dest = tmp_path / "store" / "entries" / "e"
    make_artifact(dest, model=make_model(tmp_path), backend="vllm")
    return dest


EDITS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("torch-version-only", lambda d: d.update(torch_version="9.9.9"), "torch_version is '9.9.9'"),
    ("vllm-version-only", lambda d: d.update(vllm_version="0.0.1"), "vllm_version is '0.0.1'"),
    ("pins-emptied", lambda d: d.update(pins={}), "pins lack torch, vllm"),
    ("vllm-pin-dropped", lambda d: d["pins"].pop("vllm"), "pins lack vllm"),
    (
        "pins-and-versions-edited-together",
        lambda d: d.update(
            pins={"torch": "9.9.9", "vllm": "9.9.9"}, torch_version="9.9.9", vllm_version="9.9.9"
        ),
        "does not match the manifest's own",
    ),
    ("spec-edited", lambda d: d["spec"].update(max_model_len=4096), "spec_fingerprint does not"),
    ("backend-version", lambda d: d.update(backend_version="0.0.0"), "does not match"),
    ("model-config-hash", lambda d: d.update(model_config_hash="0" * 64), "does not match"),
    ("key-renamed", lambda d: d.update(key="vllm-model-0123456789abcdef"), "does not match"),
]


@pytest.mark.parametrize(("name", "edit", "phrase"), EDITS, ids=[e[0] for e in EDITS])
def test_manifest_edits_that_keep_every_checksum_are_caught(
    name: str,
    edit: Callable[[dict[str, Any]], None],
    phrase: str,
    art: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert artifacts.verify(art).ok
    rewrite_manifest(art, edit, consistent=False)
    report = artifacts.verify(art)
    assert not report.ok and report.manifest is not None
    assert any(phrase in p for p in report.inconsistent), report.inconsistent
    with pytest.raises(ArtifactCorruptError, match="manifest inconsistent"):
        artifacts.verify_for_load(art)
    code = main(["cache", "verify", str(art)])
    out = capsys.readouterr().out
    assert code == ExitCode.ARTIFACT_CORRUPT and "manifest inconsistent" in out


def test_required_pins_come_from_the_backend_not_the_manifest(art: Path) -> None:
    """An artifact of another environment, consistently written, is incompatible, not corrupt."""
    rewrite_manifest(art, lambda d: d["pins"].update(torch="0.0.1"))
    assert artifacts.verify(art).ok
    problems = artifacts.check_compatible(artifacts.read_manifest(art))
    assert any("built for torch 0.0.1" in p for p in problems)


def test_a_manifest_written_before_the_host_fingerprint_skips_only_the_key_check(
    art: Path,
) -> None:
    rewrite_manifest(art, lambda d: d.pop("host_fingerprint"), consistent=False)
    assert artifacts.verify(art).ok
    rewrite_manifest(art, lambda d: d.update(pins={}), consistent=False)
    assert any("pins lack" in p for p in artifacts.verify(art).inconsistent)


def test_reseal_after_a_start_keeps_the_key_consistent(art: Path, tmp_path: Path) -> None:
    model = Path(artifacts.read_manifest(art).model)
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "edited": 1}')
    with artifacts.using_artifact(art):
        (art / "files" / "new-shape.bin").write_bytes(b"compiled at load")
    report = artifacts.verify(art)
    assert report.ok, report.describe()  # the recorded config hash was kept, not recomputed


FIFO_SCRIPT = """
import os, sys
from pathlib import Path
from aot_core import artifacts, registry
entry = Path(sys.argv[1])
os.unlink(entry / "manifest.json")
os.mkfifo(entry / "manifest.json")
from aot_core.cli.app import main
for argv in (["cache", "ls"], ["cache", "ls", "--verify"], ["cache", "verify"], ["cache", "clear"]):
    print("rc", argv, main(["--cache-dir", sys.argv[2], *argv]), flush=True)
"""


def test_a_fifo_named_manifest_json_never_hangs_a_command(tmp_path: Path) -> None:
    store = artifacts.ArtifactStore(tmp_path / "cache")
    make_artifact(store.path("fifo"), model=make_model(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", FIFO_SCRIPT, str(store.path("fifo")), str(store.root)],
        capture_output=True,
        text=True,
        timeout=60,  # a hang is the failure this test exists for
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("rc")]
    assert len(lines) == 4, proc.stdout + proc.stderr
    assert lines[0].endswith(" 0") and lines[1].endswith(" 0")  # ls lists it as not loadable
    assert lines[2].endswith(f" {int(ExitCode.ARTIFACT_CORRUPT)}")
    # aot did not write a FIFO, so clear refuses to delete the directory holding it
    assert lines[3].endswith(f" {int(ExitCode.CACHE_NOT_WRITABLE)}")
    assert "not a regular file" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert (store.path("fifo") / "manifest.json").exists()


def test_a_fifo_among_the_files_is_reported_not_read(art: Path) -> None:
    victim = art / "files" / "empty.txt"
    victim.unlink()
    os.mkfifo(victim)
    report = artifacts.verify(art)
    assert "files/empty.txt (not a plain file)" in report.tampered
    assert json.loads((art / "manifest.json").read_text())["format"] == "aot-artifact"
