"""What every ``aot`` subcommand shares: the exit codes, the error that carries one, progress
lines, the checks of a model directory and a spec file, and keeping stdout for results.

Its own module so that subcommands living elsewhere (``aot eval``'s ``evaluation``
package) use them without importing ``aot_core.cli.app``, which imports them.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from collections.abc import Callable, Iterator
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

from aot_core import artifacts
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec
from aot_core.weights_check import weights_problem

if TYPE_CHECKING:
    from aot_core.models.gguf import ConvertedModel


class ExitCode(IntEnum):
    """Exit status of ``aot``; scripts may rely on these numbers."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    MODEL_NOT_FOUND = 3
    NOT_A_CAUSAL_LM = 4
    SPEC_ERROR = 5
    BACKEND_UNAVAILABLE = 6
    COMPILATION_FAILED = 7
    ARTIFACT_CORRUPT = 8
    ARTIFACT_INCOMPATIBLE = 9
    CACHE_NOT_WRITABLE = 10
    DISK_FULL = 11
    MISSING_DEPENDENCY = 12
    BENCH_FAILED = 13
    NOT_ENOUGH_MEMORY = 14
    TASK_NOT_FOUND = 20
    DATASET_NOT_LOCAL = 21
    NO_TOKENIZER = 22
    PARITY_EXCEEDED = 23
    TASK_INVALID = 24
    TASK_DATA_INVALID = 25
    PORT_IN_USE = 30
    ENTRY_IN_USE = 31
    SERVER_UNREACHABLE = 32
    INTERRUPTED = 130


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: "unexpected internal error (please report it with the message)",
    ExitCode.USAGE: "bad command line",
    ExitCode.MODEL_NOT_FOUND: (
        "model path missing, no config.json in it, or a .gguf path that is a directory"
    ),
    ExitCode.NOT_A_CAUSAL_LM: (
        "config.json, a weights file or a GGUF file unreadable, or not a causal language model"
    ),
    ExitCode.SPEC_ERROR: "invalid spec file or value (field and line named)",
    ExitCode.BACKEND_UNAVAILABLE: "backend not installed or cannot run here",
    ExitCode.COMPILATION_FAILED: "the backend failed to compile the model",
    ExitCode.ARTIFACT_CORRUPT: "artifact tampered, truncated, incomplete or not an artifact",
    ExitCode.ARTIFACT_INCOMPATIBLE: "artifact built for another backend, torch, vLLM or device",
    ExitCode.CACHE_NOT_WRITABLE: (
        "cache or output path cannot be written, or holds data aot did not write (left untouched)"
    ),
    ExitCode.DISK_FULL: "no space left on the device (nothing in the cache was changed)",
    ExitCode.MISSING_DEPENDENCY: (
        "an optional dependency is missing (matplotlib for --plot, aot-core[gguf] for a GGUF "
        "file, the package shipping a named real model)"
    ),
    ExitCode.BENCH_FAILED: "some benchmark runs failed (results of the others are reported)",
    ExitCode.NOT_ENOUGH_MEMORY: (
        "the model is estimated not to fit in the memory available here (estimate shown)"
    ),
    ExitCode.TASK_NOT_FOUND: "aot eval: no lm-eval task has that name (--include-path for YAMLs)",
    ExitCode.DATASET_NOT_LOCAL: "aot eval: a task's dataset is not on this machine (runs offline)",
    ExitCode.NO_TOKENIZER: "aot eval: the model directory has no tokenizer for text tasks",
    ExitCode.PARITY_EXCEEDED: "aot eval --parity: eager and compiled differ beyond the tolerance",
    ExitCode.TASK_INVALID: "aot eval: a task YAML does not parse or is not a task (file, line)",
    ExitCode.TASK_DATA_INVALID: (
        "aot eval: a task's data file is unreadable as its format or has no documents (file, line)"
    ),
    ExitCode.PORT_IN_USE: "aot serve: the port is in use, or the host is not an address here",
    ExitCode.ENTRY_IN_USE: "aot serve: another process is serving or using this cache entry",
    ExitCode.SERVER_UNREACHABLE: (
        "aot eval --server / aot serve --ray-address: nothing answers at the address given "
        "(or the server lists no model)"
    ),
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); nothing half-written was left to load",
}

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class CLIError(Exception):
    """A failure with the exit code it maps to and a message for the user."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- helpers


def progress(message: str) -> None:
    """One progress line on stderr, prefixed ``aot:``."""
    print(f"aot: {message}", file=sys.stderr, flush=True)


def check_model(
    model: str,
    *,
    cache_root: str | os.PathLike[str] | None = None,
    on_gguf: Callable[[ConvertedModel], None] | None = None,
) -> Path:
    """A local Hugging Face causal-LM directory, or a ``CLIError`` saying what is wrong.

    A GGUF file or a real model's name (``aot_core.models.gguf``) becomes its converted
    directory in the model cache under ``cache_root`` (default: aot's cache root);
    ``on_gguf`` is then told which entry, and whether this call converted it.
    """
    path = _gguf_model_dir(model, cache_root, on_gguf) or Path(model).expanduser()
    if not path.exists():
        raise CLIError(
            ExitCode.MODEL_NOT_FOUND,
            f"model {model!r} not found: no such file or directory. aot works offline: pass a "
            "local Hugging Face model directory (holding config.json), or run `aot bench` "
            "without MODEL to use the built-in tiny Llama",
        )
    if not path.is_dir():
        raise CLIError(
            ExitCode.MODEL_NOT_FOUND,
            f"model {model!r} is a file; pass the model's directory (the one holding config.json)",
        )
    config = path / "config.json"
    if not config.is_file():
        raise CLIError(
            ExitCode.MODEL_NOT_FOUND,
            f"{path} has no config.json, so it is not a Hugging Face model directory; pass "
            "the directory that holds config.json",
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not UTF-8 or not JSON
        raise CLIError(ExitCode.NOT_A_CAUSAL_LM, f"{config} cannot be read as JSON: {exc}") from exc
    archs = data.get("architectures") if isinstance(data, dict) else None
    if not isinstance(archs, list) or not archs:
        raise CLIError(
            ExitCode.NOT_A_CAUSAL_LM,
            f'{config} names no model architecture ("architectures" is missing); aot '
            "compiles causal language models such as LlamaForCausalLM",
        )
    if not any(isinstance(a, str) and a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        raise CLIError(
            ExitCode.NOT_A_CAUSAL_LM,
            f"{path} is a {', '.join(map(str, archs))}, not a causal language model; aot "
            "compiles text generators (architectures ending in ForCausalLM or LMHeadModel)",
        )
    weights = weights_problem(path)
    if weights is not None:
        raise CLIError(
            ExitCode.NOT_A_CAUSAL_LM,
            f"the model's weights cannot be loaded: {weights}. Copy the model again, or "
            "pass a directory whose weights are complete",
        )
    return path


def _gguf_model_dir(
    model: str,
    cache_root: str | os.PathLike[str] | None,
    on_gguf: Callable[[ConvertedModel], None] | None = None,
) -> Path | None:
    """The converted directory when ``model`` is a GGUF input, else None; its failures as
    ``CLIError``s with their exit codes."""
    from aot_core.errors import GGUFError, OptionalDependencyError
    from aot_core.models.gguf import resolve_gguf

    try:
        converted = resolve_gguf(model, root=cache_root, on_convert=progress)
    except OptionalDependencyError as exc:
        raise CLIError(ExitCode.MISSING_DEPENDENCY, str(exc)) from exc
    except GGUFError as exc:
        raise CLIError(ExitCode.NOT_A_CAUSAL_LM, str(exc)) from exc
    except SpecError as exc:  # a .gguf path that is missing or a directory
        raise CLIError(ExitCode.MODEL_NOT_FOUND, str(exc)) from exc
    if converted is None:
        return None
    progress(converted.note())
    if on_gguf is not None:
        on_gguf(converted)
    return converted.path


def load_spec(path: str | None) -> CompileSpec:
    """The spec in ``path`` (TOML or JSON), or the default spec."""
    if path is None:
        return CompileSpec()
    spec_path = Path(path).expanduser()
    if spec_path.is_dir():
        raise SpecError(f"spec file {path} is a directory; pass the .toml or .json file itself")
    if not (spec_path.exists() or spec_path.is_symlink()):
        raise SpecError(f"spec file {path} does not exist")
    if not spec_path.is_file():
        raise SpecError(
            f"spec file {path} is not a regular file (a broken link, a FIFO or a device); "
            "pass a .toml or .json file"
        )
    if spec_path.stat().st_size > _MAX_SPEC_BYTES:
        raise SpecError(f"spec file {path} is over {_MAX_SPEC_BYTES} bytes; not a spec file")
    return CompileSpec.load(spec_path)


_MAX_SPEC_BYTES = 1 << 20


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 1 to stderr for a while.

    Engines log to stdout (vLLM's logger holds the original stream, and its engine
    processes inherit the descriptor), so only an fd-level redirect keeps stdout for
    results that scripts read.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable stdout: nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def os_error_code(exc: OSError) -> ExitCode | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ExitCode.DISK_FULL
    if exc.errno in (
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.EISDIR,
        errno.ENOTEMPTY,
        errno.EBUSY,  # e.g. --out names a mount point, which cannot be renamed over
    ):
        return ExitCode.CACHE_NOT_WRITABLE
    return None


def writable_or_fail(directory: Path, what: str) -> None:
    """Create ``directory`` and write a probe file, or fail with CACHE_NOT_WRITABLE/DISK_FULL."""
    try:
        artifacts.ensure_writable(directory)
    except OSError as exc:
        code = os_error_code(exc) or ExitCode.CACHE_NOT_WRITABLE
        raise CLIError(
            code,
            f"cannot write to the {what} {directory}: {exc.strerror or exc}. Choose another "
            + (
                f"directory (--cache-dir or ${artifacts.CACHE_ENV_VAR})"
                if what.startswith("cache")
                else "path"
            )
            + " or fix its permissions",
        ) from exc


def open_store(args: argparse.Namespace) -> artifacts.ArtifactStore:
    store = artifacts.ArtifactStore(args.cache_dir)
    if store.root.exists() and not store.root.is_dir():
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE,
            f"the cache directory {store.root} is not a directory; choose another one "
            f"(--cache-dir or ${artifacts.CACHE_ENV_VAR})",
        )
    return store


def check_output_file(path: Path, what: str) -> None:
    """Fail now, not after a long run, if ``path`` cannot take a result file."""
    if not path.parent.is_dir():
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE, f"{what}: directory {path.parent} does not exist"
        )
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE,
            f"{what}: {path} exists and is not a regular file (a directory, a FIFO or a "
            "device); name a file",
        )
    writable_or_fail(path.parent, f"{what} directory")


def write_result(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CLIError(
            os_error_code(exc) or ExitCode.CACHE_NOT_WRITABLE,
            f"cannot write {path}: {exc.strerror or exc}",
        ) from exc


def fail(code: ExitCode, message: str) -> int:
    print(f"aot: error: {message}", file=sys.stderr, flush=True)
    return int(code)
