"""Slow test: a disk that fills up during a legacy compile is a DISK_FULL exit (11) with a
message, not an aborted process, and leaves nothing in the cache.

Run for real: the cache is a 1 MiB tmpfs mounted in a private mount namespace
(``unshare -rm``, no root needed where user namespaces are allowed). The first package
write fills it, where torch's zip writer used to abort the process (exit 134,
``c10::Error ... unexpected pos``); packages are now built in a child process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {where}"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def test_full_disk_during_compile_exits_11(tmp_path: Path) -> None:
    from aot_core.models.tiny import TinyLlamaShape, write_tiny_llama

    cache = tmp_path / "cache"
    cache.mkdir()
    if not _can_mount_tmpfs(cache):
        pytest.skip("cannot mount a small tmpfs here (unshare -rm and mount are not allowed)")
    # One layer: the AOTInductor compile before the first package write is shorter.
    model = write_tiny_llama(tmp_path / "one-layer", shape=TinyLlamaShape(num_hidden_layers=1))
    aot = Path(sys.executable).with_name("aot")
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {cache} && "
        f"{aot} --cache-dir {cache} compile {model} --backend legacy; "
        f'echo "exit=$?"; find {cache} -name manifest.json'
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    out = proc.stdout.strip().splitlines()
    assert "exit=11" in out, proc.stderr[-3000:]
    assert "no space left on the device" in proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected pos" not in proc.stderr
    assert not [line for line in out if line.endswith("manifest.json")]  # nothing published
