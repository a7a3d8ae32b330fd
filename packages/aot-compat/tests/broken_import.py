"""The old API's backend choice in a fresh process where one package fails on import.

A package directory that raises ``ImportError``, found before the real one, is what a
broken build (say, a torch ABI mismatch) looks like to the backends' probes; a fresh
process keeps the test process's already-imported modules out of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_CHOOSE = (
    "import warnings\n"
    "warnings.simplefilter('always')\n"
    "from engines.shared import create_enhanced_compiler\n"
    "try:\n"
    "    with warnings.catch_warnings(record=True) as w:\n"
    "        c = create_enhanced_compiler()\n"
    "    print('CHOSE', c.backend_id)\n"
    "    print('WARN', *[str(x.message) for x in w])\n"
    "except ImportError as e:\n"
    "    print('ERROR', type(e).__name__, e)\n"
)


def choose_with_broken(package: str, message: str, where: Path) -> subprocess.CompletedProcess[str]:
    """``create_enhanced_compiler()`` in a fresh process in which importing ``package``
    raises ``ImportError(message)``; it prints ``CHOSE name``, then ``WARN`` and the
    warnings, or ``ERROR`` and the error. ``where`` holds the broken package."""
    fake = where / package
    fake.mkdir()
    (fake / "__init__.py").write_text(f"raise ImportError({message!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(where), *sys.path])}
    env.pop("AOT_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-c", _CHOOSE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
