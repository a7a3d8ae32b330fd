"""`aot backends`: the installed backends and whether each can run here."""

from __future__ import annotations

import argparse
import json
from typing import Any

from aot_core.cli.command import (
    ExitCode,
    stdout_to_stderr,
)


def cmd_backends(args: argparse.Namespace) -> int:
    """List installed backends with versions and whether each can run here.

    "Can run here" has the registry's one meaning: each backend's own cheap check, and
    with --check also its engine check (the engine imports and finds a device: what
    aot-compat requires before it chooses a backend; seconds per backend).
    """
    from aot_core.registry import install_hint, list_backends

    with stdout_to_stderr():  # engines may log to stdout while they import
        infos = list_backends(deep=args.check)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "description": i.description,
                        "version": i.version,
                        "distribution": i.distribution,
                        "priority": i.priority,
                        "usable": i.availability.usable,
                        "reason": i.availability.reason,
                        "engine_checked": args.check,
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
        return ExitCode.OK
    if not infos:
        print(f"No aot backends are installed. To {install_hint()}.")
        return ExitCode.OK
    from aot_core.stats import format_table

    rows = [
        (
            i.name,
            i.version or "?",
            i.distribution or "?",
            i.description or "-",
            "yes" if i.availability.usable else "no",
            i.availability.reason if not i.availability.usable else "",
        )
        for i in infos
    ]
    header = ("backend", "version", "package", "what", "usable here", "why not")
    print(format_table(header, rows))
    if not args.check:
        print(
            "(engines not imported; `aot backends --check` also imports each, as aot-compat does)"
        )
    return ExitCode.OK


def add_parser(sub: Any, fmt: type[argparse.HelpFormatter], epilog: str) -> None:
    """``aot backends`` and its options."""
    p = sub.add_parser("backends", help="list installed backends and whether each can run here")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--check",
        action="store_true",
        help="also import each engine and look for its device (seconds each), as aot-compat does",
    )
    p.set_defaults(func=cmd_backends)
