"""Running ``aot`` in this process, the path its console script takes, for aot-core's tests:
no interpreter start per case, and argparse's usage errors (``SystemExit``) come back as
their exit code like any other failure."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from aot_core.cli.app import main


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
