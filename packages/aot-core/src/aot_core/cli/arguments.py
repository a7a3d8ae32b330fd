"""The argparse types and parser class every `aot` subcommand uses."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from aot_core.cli.command import (
    ExitCode,
)


def path_arg(text: str) -> str:
    # An empty path would silently mean the current directory.
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (an empty path means nothing)")
    if "\0" in text:
        raise argparse.ArgumentTypeError("must not contain a NUL character")
    return text


def name_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty; `aot backends` lists the names")
    return text


def sha256_arg(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256 (64 hex digits)")
    return text.lower()


def text_arg(text: str) -> str:
    """Any text, as long as it says something (a name that is not a path or a backend)."""
    if not text.strip() or "\0" in text:
        raise argparse.ArgumentTypeError("must be a non-empty string without NUL characters")
    return text


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"aot: error: {message}\n")


def add_model_or_shape(p: argparse.ArgumentParser, *, model_help: str) -> None:
    """The optional MODEL argument and ``--shape``, which names a real architecture
    instead (``aot compile`` and ``aot bench`` choose their model alike)."""
    from aot_core.models.shape_presets import known_shapes

    p.add_argument("model", nargs="?", type=path_arg, help=model_help)
    p.add_argument(
        "--shape",
        type=name_arg,
        metavar="NAME",
        help="instead of MODEL, a real architecture's published config with placeholder "
        f"weights (nothing downloaded): {', '.join(known_shapes())}",
    )
