"""`aot bench`: the command; the benchmark itself is `aot_core.bench`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aot_core.cli.arguments import add_model_or_shape, name_arg, path_arg, positive_int
from aot_core.cli.command import (
    CLIError,
    ExitCode,
    check_output_file,
    load_spec,
    open_store,
    writable_or_fail,
    write_result,
)
from aot_core.cli.command import progress as _progress
from aot_core.cli.model_spec import chosen_model, fits
from aot_core.spec import CompileSpec

if TYPE_CHECKING:
    from aot_core.bench.machine_limits import DecodeLimit
    from aot_core.models.memory_estimate import MemoryEstimate
    from aot_core.start_config import StartConfig


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure eager vs compiled, cold vs warm, each start in a fresh process."""
    from aot_core.bench import run as bench
    from aot_core.usage.records import record_bench

    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError(
                ExitCode.MISSING_DEPENDENCY,
                "--plot needs matplotlib, which is not installed: `pip install "
                "'aot-core[plot]'` (or `pip install matplotlib`), or drop --plot",
            ) from None
    for out, what in ((args.json, "--json"), (args.plot, "--plot")):
        if out is not None:
            check_output_file(Path(out).expanduser().absolute(), what)
    if args.work_dir is not None:
        work = Path(args.work_dir).expanduser()
        if (work.exists() or work.is_symlink()) and not work.is_dir():
            raise CLIError(
                ExitCode.CACHE_NOT_WRITABLE, f"--work-dir: {work} exists and is not a directory"
            )
    # Everything the bench writes outside --work-dir goes under the store root (--cache-dir,
    # else $AOT_CACHE_DIR, else the default), and that is the directory checked.
    cache_root = open_store(args).root
    writable_or_fail(cache_root, "cache directory")
    chosen = chosen_model(args, cache_root, default_tiny=True, time_reuse=True)
    spec, start = bench_spec(args, chosen.path)
    estimate = fits(
        chosen.path,
        spec,
        max_model_len=spec.max_model_len or 0,
        max_num_seqs=spec.max_num_seqs or 1,
    )
    notes = [chosen.ready.note()] if chosen.ready else []
    notes += [start.dtype.reason] if start.dtype.source != "spec" else []
    if estimate is not None:
        notes.append(f"memory estimate per start: {estimate.describe()}")
    prompts, workload = _workload(args, spec, chosen.path)
    limit = _decode_limit(estimate, min(len(prompts), spec.max_num_seqs or len(prompts)))
    if limit is not None:
        notes.append(limit.describe())
    for note in notes:
        _progress(note)
    result = bench.run_bench(
        prompts=prompts,
        workload=workload,
        model=chosen.path,
        model_label=chosen.label,
        backends=args.backend or None,
        spec=spec,
        repeats=args.repeats,
        max_new_tokens=args.max_new_tokens,
        timeout_s=args.timeout,
        work_dir=Path(args.work_dir) if args.work_dir else None,
        progress=_progress,
        cache_root=cache_root,
        notes=notes,
        decode_limit=limit.tokens_per_s if limit is not None else None,
        model_ready=chosen.ready.to_dict() if chosen.ready else None,
        resolved=start.to_dict(),
    )
    if args.show_generations:
        from aot_core.bench.text import with_generations

        result = with_generations(result, chosen.path, prompts, count=args.show_generations)
    record_bench(result, model=args.model, cache_root=cache_root, warn=_progress)
    print(bench.format_report(result))
    if args.json is not None:
        write_result(Path(args.json), json.dumps(result.to_dict(), indent=2) + "\n")
        _progress(f"wrote {args.json}")
    if args.plot is not None:
        bench.plot(result, Path(args.plot))
        _progress(f"wrote {args.plot}")
    if result.failures:
        return ExitCode.BENCH_FAILED
    return ExitCode.OK


# --prompt-mix mixed: the engine step's token budget (long prompts are 2-4x this).
MIXED_STEP_TOKENS = 64


def bench_spec(args: argparse.Namespace, model: Path) -> tuple[CompileSpec, StartConfig]:
    """The spec every run of the bench gets, and its start configuration, resolved by
    aot-core's ``resolve_start`` (dtype "auto" as ``aot compile`` and ``aot eval`` resolve
    it): where the spec leaves them open, the bench's small engine (``BENCH_SPEC_DEFAULTS``)
    with the workload's batch and step budget are the command's defaults."""
    from aot_core.bench.run import BENCH_SPEC_DEFAULTS
    from aot_core.start_config import resolve_start

    spec = load_spec(args.spec)
    defaults = dict(BENCH_SPEC_DEFAULTS)
    if args.prompts and args.prompts > defaults["max_num_seqs"]:
        defaults["max_num_seqs"] = args.prompts  # the whole batch decodes together
    if args.prompt_mix == "mixed":
        # A step budget below the long prompts' length, so chunked prefill splits them.
        defaults["max_num_batched_tokens"] = MIXED_STEP_TOKENS
    start = resolve_start(spec, model, defaults=defaults)
    return start.apply(spec), start


def _workload(
    args: argparse.Namespace, spec: CompileSpec, model: Path
) -> tuple[list[list[int]], str]:
    """The bench's prompts from --prompts / --prompt-mix, and how to describe them."""
    from aot_core.bench.prompts import TEXTS, workload_prompts

    if args.prompt_mix == "chat":
        from aot_core.bench.text import chat_workload

        return chat_workload(model, args.prompts)
    count = args.prompts or len(TEXTS)
    room = (spec.max_model_len or 256) - args.max_new_tokens
    long_tokens = max(room, 0)
    if args.prompt_mix == "mixed" and long_tokens < 64:
        raise CLIError(
            ExitCode.USAGE,
            f"--prompt-mix mixed: max_model_len {spec.max_model_len} leaves {long_tokens} "
            f"prompt tokens beside {args.max_new_tokens} new ones; long prompts need at least "
            "64: raise max_model_len in the spec or lower --new-tokens",
        )
    prompts = workload_prompts(count, args.prompt_mix, long_tokens=long_tokens)
    if args.prompt_mix == "mixed":
        return prompts, f"mixed: short prompts and {long_tokens}-token ones"
    return prompts, "short"


def _decode_limit(estimate: MemoryEstimate | None, batch: int) -> DecodeLimit | None:
    """The bandwidth bound on decode tokens/s here (one 128 MiB copy, well under a second)."""
    from aot_core.bench.machine_limits import DecodeLimit, measure_copy_bandwidth

    if estimate is None:
        return None
    return DecodeLimit(
        bandwidth_bytes_per_s=measure_copy_bandwidth(),
        weight_bytes=estimate.weight_bytes,
        batch=batch,
    )


def add_parser(sub: Any, fmt: type[argparse.HelpFormatter], epilog: str) -> None:
    """``aot bench`` and its options."""
    from aot_core.bench.prompts import WORKLOAD_MIXES
    from aot_core.bench.run import DEFAULT_MAX_NEW_TOKENS, DEFAULT_REPEATS, DEFAULT_TIMEOUT_S

    p = sub.add_parser(
        "bench",
        help="measure eager vs compiled, cold vs warm starts, in fresh processes",
        epilog=epilog,
        formatter_class=fmt,
    )
    add_model_or_shape(
        p,
        model_help="model directory, .gguf file or real model's name such as "
        "smollm2-135m-instruct (default: built-in tiny Llama)",
    )
    p.add_argument(
        "--backend",
        action="append",
        type=name_arg,
        help="backend to measure (repeatable; default: every usable installed backend)",
    )
    p.add_argument(
        "--spec", type=path_arg, help="base compile spec file; compile_mode is set per run"
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=DEFAULT_REPEATS,
        help=f"fresh-process starts per measurement, medians reported (default {DEFAULT_REPEATS})",
    )
    p.add_argument(
        "--new-tokens",
        "--max-new-tokens",
        dest="max_new_tokens",
        metavar="M",
        type=positive_int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"tokens generated per prompt (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    p.add_argument(
        "--prompts",
        type=positive_int,
        default=None,
        metavar="N",
        help="prompts per batch (default: the 4 fixed sentences)",
    )
    p.add_argument(
        "--prompt-mix",
        choices=WORKLOAD_MIXES,
        default="short",
        help="short: the fixed sentences; mixed: every second prompt long (fills the context "
        "beside the new tokens), so chunked prefill splits it while short ones decode; chat: "
        "short questions in the model's chat template (its bytes on a model without a "
        "tokenizer), one each unless --prompts says",
    )
    p.add_argument(
        "--show-generations",
        type=positive_int,
        default=0,
        metavar="N",
        help="print the first N prompts' greedy outputs as text, eager beside compiled, per "
        "backend (decoded by the model's tokenizer, or as bytes without one)",
    )
    p.add_argument(
        "--timeout",
        type=positive_int,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds before one run is killed (default {DEFAULT_TIMEOUT_S})",
    )
    p.add_argument("--json", type=path_arg, help="write all results as JSON to this file")
    p.add_argument("--plot", type=path_arg, help="draw the results to this PNG (needs matplotlib)")
    p.add_argument(
        "--work-dir",
        type=path_arg,
        help="keep the runs' artifacts and logs here (default: a temporary directory under "
        "the cache directory, removed afterwards)",
    )
    p.set_defaults(func=cmd_bench)
