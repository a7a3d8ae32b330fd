"""Start the tiny model once in a fresh process (start_once.py), as a user's start would,
and return what it printed. Used by test_warm_start.py and test_config_only.py.
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
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(model), str(cache), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("AOT-RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("AOT-RESULT ") :])
