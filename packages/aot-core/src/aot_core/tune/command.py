"""The ``aot tune`` command: ``add_parser`` puts it into ``aot``'s parser, ``cmd_tune`` runs
the sweep. Every input is checked before the first trial starts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aot_core.cli.arguments import positive_int
from aot_core.cli.command import CLIError, ExitCode

EXAMPLES = """examples:
  aot tune smollm2-135m-instruct --jobs 10 --out best.toml
  aot tune ./my-llama --prompts 16 --new-tokens 64 --knob max_num_seqs=4,16 --out best.toml
  aot tune ./my-llama --tasks my_task --include-path ./tasks --max-model-len 512 --jobs 3
  aot tune ./my-llama --sweep sweep.toml --knob backend=vllm

knobs (--knob NAME=V1,V2, or NAME = [V1, V2] in a --sweep TOML file):
  backend                 default: every usable installed backend
  mode                    eager, compiled (compiled runs twice: cold, then warm)
  dtype                   float32; bfloat16 too where the CPU has it natively (or a GPU)
  max_num_seqs            batch size; default: --prompts (tasks: the backend's choice)
  max_num_batched_tokens  chunked prefill's step budget, for backends that act on it
Each trial is a fresh process; finished trials are kept in the sweep's directory, so the
same command run again resumes where it stopped. Then:
  aot eval MODEL --backend B --spec best.toml"""

DEFAULT_JOBS = 10
DEFAULT_NEW_TOKENS = 64
DEFAULT_TIMEOUT_S = 900


def add_parser(sub: Any, fmt: type[argparse.HelpFormatter], epilog: str) -> None:
    """Add ``aot tune`` to ``aot``'s subcommands."""
    p = sub.add_parser(
        "tune",
        help="measure backends, eager vs compiled, dtypes and batch sizes for your workload; "
        "write the best spec",
        epilog=f"{EXAMPLES}\n\n{epilog}",
        formatter_class=fmt,
    )
    p.add_argument(
        "model",
        nargs="?",
        help="model directory, .gguf file or real model's name such as smollm2-135m-instruct "
        "(default: built-in tiny Llama)",
    )
    p.add_argument("--tasks", help="your lm-eval tasks (comma-separated): each job an aot eval")
    p.add_argument("--include-path", help="directory of your task YAML files")
    p.add_argument("--limit", help="documents per task, as aot eval takes it")
    p.add_argument("--prompts", type=positive_int, metavar="N", help="prompts per job (default 4)")
    p.add_argument(
        "--new-tokens",
        type=positive_int,
        metavar="M",
        help=f"tokens generated per prompt (default {DEFAULT_NEW_TOKENS})",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"how many such jobs you expect to run (default {DEFAULT_JOBS})",
    )
    p.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="a knob and the values to try (repeatable; the knobs are listed below)",
    )
    p.add_argument("--sweep", help="TOML file of knobs (NAME = [values]); --knob overrides")
    p.add_argument("--spec", help="base compile spec the knobs are applied to")
    p.add_argument("--max-model-len", type=positive_int, metavar="N", help="context for each job")
    p.add_argument("--out", help="write the best spec to this .toml file")
    p.add_argument(
        "--work-dir",
        help="keep trial results and what they compile here "
        "(default: under the cache, one directory per model and workload)",
    )
    p.add_argument(
        "--timeout",
        type=positive_int,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds before one trial is killed (default {DEFAULT_TIMEOUT_S})",
    )
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    """Check everything, run the trials not yet finished, report, write the best spec."""
    from aot_core.cli.command import progress
    from aot_core.tune.output import report_and_write
    from aot_core.tune.plan import plan_sweep
    from aot_core.tune.sweep_run import run_sweep

    out = _check_out(args.out)
    plan = plan_sweep(args, progress)
    try:
        records, failures = run_sweep(plan, progress)
    except KeyboardInterrupt:
        progress(
            f"interrupted: the finished trials are kept in {plan.results.path}; the same "
            "command run again resumes from them"
        )
        raise
    report_and_write(plan, records, out=out, jobs=args.jobs)
    return ExitCode.BENCH_FAILED if failures else ExitCode.OK


def _check_out(text: str | None) -> Path | None:
    """``--out``: a .toml file aot may write (new, or one ``aot tune`` wrote)."""
    from aot_core import artifacts

    if text is None:
        return None
    path = Path(text).expanduser().absolute()
    if path.suffix.lower() != ".toml":
        raise CLIError(ExitCode.USAGE, f"--out {text}: name a .toml file (a spec file)")
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise CLIError(ExitCode.CACHE_NOT_WRITABLE, f"--out {path} exists and is not a file")
    if path.is_file() and not _written_by_tune(path):
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE,
            f"--out {path} exists and was not written by aot tune; it is left as it is: "
            "choose another path, or remove it yourself",
        )
    if not path.parent.is_dir():
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE, f"--out: directory {path.parent} does not exist"
        )
    try:
        artifacts.ensure_writable(path.parent)
    except OSError as exc:
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE,
            f"--out: cannot write to {path.parent}: {exc.strerror or exc}; choose another path",
        ) from exc
    return path


def _written_by_tune(path: Path) -> bool:
    from aot_core.tune.output import OUT_HEADER

    try:
        head = path.read_text(encoding="utf-8")[:200]
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith(OUT_HEADER)
