"""Running ``aot`` for aot-core's tests: in this process (``run_aot``), the path its console
script takes, with no interpreter start per case and argparse's usage errors
(``SystemExit``) coming back as their exit code; or in a fresh process (``aot``), as the
installed command runs."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aot_core.cli.app import main

AOT = (sys.executable, "-m", "aot_core.cli.app")
"""The ``aot`` command as a fresh process runs it (the console script's module)."""


@dataclass(frozen=True, kw_only=True)
class AotRun:
    """One finished in-process ``aot`` command."""

    code: int
    """Its exit code."""

    out: str
    """What it printed to stdout."""

    err: str
    """What it printed to stderr."""


def run_aot(argv: Sequence[str]) -> AotRun:
    """``aot ARGV`` through the console entry point (``main``), its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    return AotRun(code=code, out=out.getvalue(), err=err.getvalue())


def aot(
    args: Sequence[str], env: Mapping[str, str], *, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """``aot ARGS`` in a fresh process with exactly ``env``, as the installed command runs."""
    return subprocess.run(
        [*AOT, *args], capture_output=True, text=True, env=dict(env), timeout=timeout, check=False
    )
