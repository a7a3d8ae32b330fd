"""The ``aot eval`` command: run lm-eval tasks on an aot backend (or eager and compiled, for
a parity report). ``add_parser`` puts it into ``aot``'s parser; nothing heavy is imported
until the command runs."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aot_core.evaluation.errors import (
    DatasetNotLocalError,
    EvalError,
    EvalUsageError,
    LMEvalMissingError,
    LMEvalOptionsError,
    NoTokenizerError,
    ParityExceededError,
    ServerUnreachableError,
    TaskDataError,
    TaskInvalidError,
    TaskNotFoundError,
)
from aot_core.evaluation.limit import limit_argument

EXAMPLES = """examples:
  aot eval ./my-llama --tasks hellaswag --limit 100 --output out/
  aot eval ./my-llama --tasks my_task --include-path ./tasks --eager
  aot eval ./my-llama --tasks my_task --include-path ./tasks --parity --parity-tolerance 1e-3
  aot eval ./my-llama --tasks gsm8k --model-args dtype=float32,max_model_len=2048 \\
      --lm-eval --num_fewshot 5 --seed 1
  aot eval ./my-llama --tasks my_task --include-path ./tasks --server http://127.0.0.1:8000

Everything after --lm-eval goes to lm-eval's own `run` options (--num_fewshot, --gen_kwargs,
--seed, --apply_chat_template, ...). Compiled jobs start from aot's verified cache (the
entry `aot compile MODEL --backend B --spec S` writes); the first job compiles and
publishes it. aot eval runs offline: task data must be local (dataset_path: json)."""


def add_parser(sub: Any, fmt: type[argparse.HelpFormatter], epilog: str) -> None:
    """Add ``aot eval`` to ``aot``'s subcommands."""
    p = sub.add_parser(
        "eval",
        help="run lm-evaluation-harness tasks on an aot backend (eager, compiled, or both)",
        epilog=f"{EXAMPLES}\n\n{epilog}",
        formatter_class=fmt,
    )
    p.add_argument(
        "model",
        help="local Hugging Face model directory (with its tokenizer), a .gguf file, or a real "
        "model's name (smollm2-135m-instruct)",
    )
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include-path", help="directory of your own task YAML files")
    p.add_argument("--backend", help="aot backend (default: $AOT_BACKEND, else the best usable)")
    p.add_argument("--spec", help="compile spec file (.toml or .json)")
    p.add_argument(
        "--model-args",
        default="",
        help="k=v,k=v: spec fields (dtype=float32, max_model_len=1024, ...) and "
        "max_gen_toks, add_bos_token, prefix_token_id, tokenizer",
    )
    p.add_argument(
        "--limit",
        type=limit_argument,
        help="documents per task: a whole count >= 1, or a fraction in (0, 1)",
    )
    p.add_argument("--output", help="write results.json (with aot's stats) and samples here")
    p.add_argument("--log-samples", action="store_true", help="also write every sample")
    p.add_argument("--eager", action="store_true", help="run without compilation")
    p.add_argument(
        "--parity",
        action="store_true",
        help="run eager and compiled, each in a fresh process, and report the differences",
    )
    p.add_argument(
        "--parity-tolerance",
        type=float,
        help="with --parity: exit non-zero if the largest |Δ log-likelihood| exceeds this, or "
        "any decision or greedy generation differs",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="with --parity: seconds per run (default 3600)",
    )
    p.add_argument(
        "--server",
        metavar="URL",
        help="evaluate the model a running `aot serve` serves at URL (lm-eval's "
        "local-completions; local-chat-completions with --apply_chat_template); MODEL is "
        "its tokenizer. Its key, if any, from $OPENAI_API_KEY",
    )
    p.add_argument(
        "--lm-eval",
        dest="lm_eval_args",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="OPTION",
        help="last: everything after it goes to lm-eval's own run options",
    )
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the job (or the parity pair) and print lm-eval's table with aot's stats."""
    from aot_core.cli.command import CLIError, ExitCode

    codes: dict[type[EvalError], ExitCode] = {
        LMEvalMissingError: ExitCode.MISSING_DEPENDENCY,
        TaskNotFoundError: ExitCode.TASK_NOT_FOUND,
        DatasetNotLocalError: ExitCode.DATASET_NOT_LOCAL,
        NoTokenizerError: ExitCode.NO_TOKENIZER,
        TaskInvalidError: ExitCode.TASK_INVALID,
        TaskDataError: ExitCode.TASK_DATA_INVALID,
        ParityExceededError: ExitCode.PARITY_EXCEEDED,
        ServerUnreachableError: ExitCode.SERVER_UNREACHABLE,
        LMEvalOptionsError: ExitCode.USAGE,
        EvalUsageError: ExitCode.USAGE,
    }
    try:
        return _run(args)
    except EvalError as exc:
        raise CLIError(codes.get(type(exc), ExitCode.FAILURE), str(exc)) from exc


def _run(args: argparse.Namespace) -> int:
    from aot_core.cli.command import check_model, progress
    from aot_core.evaluation.plugin import require_lm_eval
    from aot_core.evaluation.tasks import go_offline

    started = time.perf_counter()
    go_offline()
    require_lm_eval()
    model = check_model(args.model, cache_root=args.cache_dir)
    passthrough = list(args.lm_eval_args or [])
    if args.server:
        from aot_core.evaluation.server_job import run_against_server

        return run_against_server(args, model, passthrough, started, progress)
    if args.parity:
        from aot_core.evaluation.parity import run_parity

        return run_parity(args, model, passthrough, progress)
    return _single(args, model, passthrough, started, progress)


def model_config(args: argparse.Namespace, model: Path) -> Any:
    """The job's ``EvalModelConfig`` from the command line."""
    from lm_eval.utils import simple_parse_args_string

    from aot_core.cli.command import load_spec
    from aot_core.evaluation.model_args import parse_model_args

    extra = simple_parse_args_string(args.model_args or "")
    extra.setdefault("pretrained", str(model))
    if args.backend:
        extra["backend"] = args.backend
    if args.eager:
        extra["eager"] = True
    return parse_model_args(extra, base_spec=load_spec(args.spec))


def _single(
    args: argparse.Namespace,
    model: Path,
    passthrough: list[str],
    started: float,
    progress: Callable[[str], None],
) -> int:
    from aot_core.cli.command import stdout_to_stderr
    from aot_core.evaluation.job import JobRequest, prepare_tasks, run_job, summary, write_outputs
    from aot_core.evaluation.lm_eval_args import lm_eval_argv
    from aot_core.evaluation.plugin import register
    from aot_core.evaluation.tokenizer import load_tokenizer
    from aot_core.usage.records import record_eval

    config = model_config(args, model)
    with stdout_to_stderr():
        prepared = prepare_tasks(lm_eval_argv(args, passthrough), progress)
    tokenizer = load_tokenizer(config)  # a text task without a tokenizer fails here, early
    register()
    request = JobRequest(
        config=config,
        output=Path(args.output).expanduser() if args.output else None,
        cache_dir=args.cache_dir,
        started_at=started,
    )
    with stdout_to_stderr():
        results = run_job(request, prepared, tokenizer, progress)
    record_eval(results["aot"], args, passthrough, progress)
    if request.output is not None:
        for path in write_outputs(results, request.output):
            progress(f"wrote {path}")
    print(summary(results))
    sys.stdout.flush()
    return 0
