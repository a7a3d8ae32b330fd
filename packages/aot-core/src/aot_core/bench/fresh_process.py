"""Running one measurement in a fresh process: the harness every aot benchmark shares.

A start measured in a fresh process pays what a user's process pays (imports, engine
start, compile or cache load). The parent runs the child with one thread per library
(``one_thread_env``), its output in a log file, in a session of its own so that a timeout
or Ctrl-C kills the engine processes it spawned too; the child prints its result as one
``AOT_BENCH_RESULT {json}`` line (``print_result``), which ``run_fresh`` reads back.
Used by ``aot bench`` (``aot_core.bench.run``) and by the scripts in ``benchmarks/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_MARKER = "AOT_BENCH_RESULT "
"""Prefix of the line a child prints its result on."""

ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}
"""One thread per library: on 2 cores, thread oversubscription makes every number noise."""


def one_thread_env(**extra: str) -> dict[str, str]:
    """This process's environment with ``ONE_THREAD`` (and ``extra``) applied."""
    return {**os.environ, **ONE_THREAD, **extra}


def print_result(data: Mapping[str, Any]) -> None:
    """Print ``data`` as the child's result line (call once, last, from the child)."""
    print(RESULT_MARKER + json.dumps(data), flush=True)


@dataclass(frozen=True, kw_only=True)
class FreshRun:
    """What one child process did."""

    returncode: int | None
    """Exit status; None when it was killed for running past its timeout."""

    wall_s: float
    """Seconds from launch to exit (or to the kill)."""

    result: Any
    """The JSON of its last result line, None when it printed none."""

    log: Path
    """Its stdout and stderr, interleaved."""

    error: str = ""
    """Why it failed, with the last lines of its log; empty when it succeeded."""

    @property
    def ok(self) -> bool:
        """Whether it exited 0 and printed a result."""
        return not self.error


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)


def tail(log: Path, lines: int = 12) -> list[str]:
    """The last non-blank lines of a log."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [line for line in text.splitlines() if line.strip()][-lines:]


def run_fresh(
    cmd: Sequence[str],
    *,
    log: Path,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> FreshRun:
    """Run ``cmd`` to completion in a fresh process and read its result line."""
    start = time.perf_counter()
    with log.open("wb") as out:
        # A session of its own, so a timeout or Ctrl-C can kill the engine children too.
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else one_thread_env(),
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return FreshRun(
                returncode=None,
                wall_s=time.perf_counter() - start,
                result=None,
                log=log,
                error=f"timed out after {timeout_s:.0f} s (log: {log})",
            )
        except BaseException:
            _kill_group(proc)
            raise
    wall = time.perf_counter() - start
    # Engine processes the child forgot to reap must not outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    result = None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
    error = ""
    if rc != 0 or result is None:
        error = f"worker exited with status {rc}; last lines of {log}:\n  " + "\n  ".join(tail(log))
    return FreshRun(returncode=rc, wall_s=wall, result=result, log=log, error=error)
