"""The ``aot`` command's entry point: the parser of every subcommand, and the one place that maps
failures to exit codes.

Every failure the user can fix gets a one-paragraph message on stderr and one of the
documented exit codes in ``ExitCode`` (also listed by ``aot --help``).
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from aot_core import artifacts
from aot_core.cli.arguments import Parser, path_arg
from aot_core.cli.command import (
    EXIT_CODE_HELP,
    CLIError,
    ExitCode,
    check_model,
    fail,
    load_spec,
    os_error_code,
    stdout_to_stderr,
)
from aot_core.cli.workflow import INTERRUPTED
from aot_core.errors import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactIncompatibleError,
    BackendUnavailableError,
    CompilationError,
    EnvironmentVariableError,
    ModelFilesError,
    NotOwnedError,
    SpecError,
)

__all__ = [
    "EXIT_CODE_HELP",
    "CLIError",
    "ExitCode",
    "build_parser",
    "check_model",
    "load_spec",
    "main",
    "run",
    "stdout_to_stderr",
]


# --------------------------------------------------------------------------- aot backends


# --------------------------------------------------------------------------- aot compile


# --------------------------------------------------------------------------- aot bench


# --------------------------------------------------------------------------- aot cache


# --------------------------------------------------------------------------- parser


def epilog() -> str:
    codes = "\n".join(f"  {int(c):>3}  {EXIT_CODE_HELP[c]}" for c in ExitCode)
    return (
        "examples:\n"
        "  aot backends\n"
        "  aot bench --json bench.json --plot bench.png\n"
        "  aot compile ./my-llama --backend vllm --spec spec.toml\n"
        "  aot eval ./my-llama --tasks hellaswag --limit 100\n"
        "  aot serve ./my-llama --spec spec.toml --port 8000\n"
        "  aot cache ls\n\n"
        f"cache: --cache-dir, else ${artifacts.CACHE_ENV_VAR}, else ~/.cache/aot\n\n"
        f"exit codes:\n{codes}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``aot``."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog="aot",
        description="Compile LLM inference ahead of time and measure what it bought.",
        epilog=epilog(),
        formatter_class=fmt,
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        type=path_arg,
        help=f"artifact store root (default: ${artifacts.CACHE_ENV_VAR} or ~/.cache/aot)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    # One module per subcommand, each adding its own parser (``evaluation.command`` is the model).
    from aot_core.cli import backends, bench, cache, compile
    from aot_core.evaluation import command as eval_command
    from aot_core.serve import command as serve_command
    from aot_core.tune import command as tune_command
    from aot_core.usage import command as usage_command

    for module in (backends, compile, bench, eval_command, serve_command, tune_command):
        module.add_parser(sub, fmt, epilog())
    usage_command.add_parser(sub, fmt, epilog())
    cache.add_parser(sub, fmt, epilog())
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, map every known failure to its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args))
    except CLIError as exc:
        return fail(exc.code, str(exc))
    except EnvironmentVariableError as exc:
        return fail(ExitCode.USAGE, str(exc))
    except ModelFilesError as exc:
        return fail(ExitCode.NOT_A_CAUSAL_LM, str(exc))
    except SpecError as exc:
        where = []
        if exc.field:
            where.append(f"field {exc.field!r}")
        if exc.line:
            where.append(f"line {exc.line}")
        suffix = f" [{', '.join(where)}]" if where else ""
        return fail(ExitCode.SPEC_ERROR, f"{exc}{suffix}")
    except BackendUnavailableError as exc:
        return fail(ExitCode.BACKEND_UNAVAILABLE, str(exc))
    except ArtifactIncompatibleError as exc:
        return fail(ExitCode.ARTIFACT_INCOMPATIBLE, str(exc))
    except ArtifactCorruptError as exc:
        return fail(ExitCode.ARTIFACT_CORRUPT, str(exc))
    except CompilationError as exc:
        return fail(ExitCode.COMPILATION_FAILED, str(exc))
    except artifacts.LockTimeoutError as exc:
        return fail(ExitCode.CACHE_NOT_WRITABLE, f"{exc}; try again when it has finished")
    except NotOwnedError as exc:
        return fail(ExitCode.CACHE_NOT_WRITABLE, str(exc))
    except ArtifactError as exc:
        return fail(ExitCode.ARTIFACT_CORRUPT, str(exc))
    except FileExistsError as exc:
        return fail(ExitCode.CACHE_NOT_WRITABLE, f"{exc.strerror}: {exc.filename}")
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            return fail(
                ExitCode.USAGE,
                f"{exc.filename or 'a path'}: {exc.strerror}; check the paths on the command line",
            )
        code = os_error_code(exc)
        if code is None:
            raise
        detail = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        if code == ExitCode.DISK_FULL:
            return fail(
                code,
                f"no space left on the device ({detail}); the partial result was discarded and "
                "the cache was left as it was. Free some space or use --cache-dir elsewhere",
            )
        return fail(code, f"cannot write ({detail}); use another --cache-dir or fix permissions")
    except KeyboardInterrupt:
        return fail(
            ExitCode.INTERRUPTED,
            "interrupted; the partial result was discarded, the cache holds only complete entries",
        )


def _on_signal(signum: int, frame: FrameType | None) -> None:
    INTERRUPTED.set()
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point of ``aot``."""
    INTERRUPTED.clear()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    try:
        return run(argv)
    except Exception as exc:  # the last line of defence: one message, a documented code
        import traceback

        traceback.print_exc()
        return fail(ExitCode.FAILURE, f"unexpected {type(exc).__name__}: {exc}")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
