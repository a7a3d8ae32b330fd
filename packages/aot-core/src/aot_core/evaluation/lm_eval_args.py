"""The lm-eval ``run`` options an ``aot eval`` command line passes on.

Its own module because both the single job (``command``) and the parity pair (``parity``)
build them, and ``command`` imports ``parity``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def lm_eval_argv(args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    """The lm-eval ``run`` options this job passes on."""
    argv = ["--tasks", args.tasks]
    if args.include_path:
        argv += ["--include_path", str(Path(args.include_path).expanduser())]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    if args.log_samples:
        argv += ["--log_samples"]
    if args.output:
        argv += ["--output_path", str(args.output)]
    return argv + passthrough
