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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"aot: error: {message}\n")


def add_shape_option(p: argparse.ArgumentParser) -> None:
    from aot_core.models.shape_presets import known_shapes

    p.add_argument(
        "--shape",
        type=name_arg,
        metavar="NAME",
        help="instead of MODEL, a real architecture's published config with placeholder "
        f"weights (nothing downloaded): {', '.join(known_shapes())}",
    )
