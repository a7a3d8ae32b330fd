"""Read-only media for real: run a command with a directory bind-mounted read-only in a
private mount namespace (``unshare -m``; needs root). Used by test_cache_ownership.py and
test_warm_start.py to show a cache on read-only media serves hits and writes nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def can_mount_read_only(tmp_path: Path) -> bool:
    """Whether ``run_read_only`` works here (root, ``unshare``, bind mounts)."""
    if os.geteuid() != 0:
        return False
    probe = tmp_path / f"ro-probe-{os.getpid()}"
    probe.mkdir()
    try:
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c",
             f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe} {probe} && "
             f"touch {probe}/x"],
            capture_output=True, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        return False
    finally:
        probe.rmdir()
    return proc.returncode != 0 and b"Read-only file system" in proc.stderr


def run_read_only(
    mount: Path, argv: list[str], *, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with ``mount`` bound read-only in a private mount namespace."""
    command = " ".join(f"'{a}'" for a in argv)
    return subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount --bind {mount} {mount} && mount -o remount,bind,ro {mount} {mount} && "
         f"exec {command}"],
        capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip
