"""The `aot` command run in a fresh process (``cli_support.aot``) against the test-only toy
backend.

Shared by the tests that drive the real command line through the toy backend
(``test_toy_backend.py``, ``test_exit_codes.py``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from aot_core import registry
from backend_requirements import skip_or_fail
from cli_support import aot

__all__ = ["aot", "toy_env"]  # the tests take both from here


def toy_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment for ``aot``: a fresh cache under ``tmp_path``, no backend forced."""
    if importlib.util.find_spec("aot_toybackend") is None:  # `core` installs it
        skip_or_fail("toy", "the test-only toy backend is not installed")
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AOT_BACKEND", raising=False)
    registry.refresh()
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
