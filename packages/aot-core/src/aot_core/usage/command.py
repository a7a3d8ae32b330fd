"""The ``aot usage`` command: what the jobs in the usage log cost, and what compiling saved
or lost against eager (``aot_core.usage.report``). ``add_parser`` puts it into ``aot``'s
parser; the log itself is ``aot_core.usage.log``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aot_core.cli.command import CLIError, ExitCode

EXAMPLES = """examples:
  aot usage
  aot usage --model smollm2-135m-instruct
  aot usage --json
  aot usage --plot usage.png

Every `aot eval` and `aot bench` job adds one line to <cache>/usage/usage.jsonl (bench: one
per fresh-process run). AOT_USAGE_LOG=0 stops recording; the log keeps the newest records
within 1 MiB."""


def add_parser(sub: Any, fmt: type[argparse.HelpFormatter], epilog: str) -> None:
    """Add ``aot usage`` to ``aot``'s subcommands."""
    p = sub.add_parser(
        "usage",
        help="jobs per model and spec, and the time compiling saved or lost against eager",
        epilog=f"{EXAMPLES}\n\n{epilog}",
        formatter_class=fmt,
    )
    p.add_argument("--model", metavar="M", help="only this model (its name, path or directory)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--plot", metavar="PNG", help="draw time spent and saved/lost per group (matplotlib)"
    )
    p.set_defaults(func=cmd_usage)


def cmd_usage(args: argparse.Namespace) -> int:
    """Read the log, group it, print the report (and the plot)."""
    from aot_core.artifacts import ArtifactStore
    from aot_core.usage import log as usage_log
    from aot_core.usage import report as usage_report

    recording = usage_log.recording_enabled()  # a bad $AOT_USAGE_LOG: exit 2
    plot_path = _plot_target(args.plot) if args.plot is not None else None
    root = ArtifactStore(args.cache_dir).root
    contents = _read(root)
    records, invalid = usage_report.parse_records(contents.records)
    if args.model is not None:
        chosen = [r for r in records if usage_report.matches(r, args.model)]
        if records and not chosen:
            known = sorted({r.model for r in records})
            raise CLIError(
                ExitCode.USAGE,
                f"--model {args.model!r}: no job of that model in the usage log "
                f"{contents.path}; it has jobs of: {', '.join(known)} (name one as shown, or "
                "its directory)",
            )
        records = chosen
    groups = usage_report.group_usage(records)
    corrupt = contents.corrupt_lines + invalid
    if args.json:
        out = {
            "log": str(contents.path),
            "recording": recording,
            "jobs": len(records),
            "corrupt_lines": corrupt,
            "estimate": usage_report.ESTIMATE_NOTE,
            "groups": [g.to_dict() for g in groups],
        }
        print(json.dumps(out, indent=2))
    elif not records:
        print(
            f"no jobs in the usage log {contents.path} yet"
            + (f" ({corrupt} corrupt line(s) skipped)" if corrupt else "")
            + "; every `aot eval` and `aot bench` adds its jobs"
            + ("" if recording else " (recording is off: $AOT_USAGE_LOG=0)")
        )
    else:
        print(
            usage_report.format_report(
                groups, path=contents.path, jobs=len(records), corrupt=corrupt, recording=recording
            )
        )
    if plot_path is not None and groups:
        usage_report.plot(groups, plot_path)
        print(f"wrote {plot_path}")
    return ExitCode.OK


def _read(root: Path) -> Any:
    from aot_core.usage import log as usage_log

    try:
        return usage_log.read(root)
    except usage_log.UsageLogNotOwnedError as exc:
        raise CLIError(ExitCode.CACHE_NOT_WRITABLE, str(exc)) from exc
    except usage_log.UsageLogError as exc:
        raise CLIError(ExitCode.CACHE_NOT_WRITABLE, f"{exc}; try again") from exc
    except OSError as exc:
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE,
            f"cannot read the usage log {usage_log.log_path(root)}: {exc.strerror or exc}; fix "
            "its permissions or choose another cache (--cache-dir)",
        ) from exc


def _plot_target(text: str) -> Path:
    """--plot's file, checked before anything is read: matplotlib (exit 12), a directory
    that exists and a path that is not a directory (exit 10)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(
            ExitCode.MISSING_DEPENDENCY,
            "--plot needs matplotlib, which is not installed: `pip install 'aot-core[plot]'` "
            "(or `pip install matplotlib`), or drop --plot",
        ) from None
    path = Path(text).expanduser().absolute()
    if not path.parent.is_dir():
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE, f"--plot: directory {path.parent} does not exist"
        )
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE, f"--plot: {path} exists and is not a regular file"
        )
    return path
