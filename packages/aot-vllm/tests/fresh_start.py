"""Start the tiny model once in a fresh process (start_once.py), as a user's start would,
and return what it printed. Used by test_warm_start.py and test_config_only.py;
test_parallel.py runs its own script through ``run_fresh``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("start_once.py")


def start_fresh(model: Path, cache: Path, *extra: str) -> dict[str, Any]:
    """Run start_once.py on ``model`` with ``cache``; its AOT-RESULT line, parsed."""
    return run_fresh(SCRIPT, model, cache, *extra)


def run_fresh(
    script: Path,
    model: Path,
    cache: Path,
    *extra: str,
    timeout: float = 900,
    unset: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run a start ``script`` (start_once.py, start_parallel.py) in a fresh process on one
    thread, with the variables in ``unset`` removed; its last AOT-RESULT line, parsed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in unset:
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, str(script), str(model), str(cache), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("AOT-RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(json.loads(lines[-1][len("AOT-RESULT ") :]))
