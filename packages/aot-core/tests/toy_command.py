"""The `aot` command run in a fresh process against the test-only toy backend.

Shared by the tests that drive the real command line through the toy backend
(``test_toy_backend.py``, ``test_exit_codes.py``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aot_core import registry
from backend_requirements import skip_or_fail


def toy_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment for ``aot``: a fresh cache under ``tmp_path``, no backend forced."""
    if importlib.util.find_spec("aot_toybackend") is None:  # `core` installs it
        skip_or_fail("toy", "the test-only toy backend is not installed")
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AOT_BACKEND", raising=False)
    registry.refresh()
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def aot(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``aot ARGS`` in a fresh process, as the installed command runs it."""
    return subprocess.run(
        [sys.executable, "-m", "aot_core.cli.app", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
