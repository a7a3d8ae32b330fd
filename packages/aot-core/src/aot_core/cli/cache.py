"""`aot cache ls | verify | export | import | clear`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aot_core import artifacts
from aot_core.cli.arguments import Parser, path_arg, positive_int, sha256_arg
from aot_core.cli.command import (
    CLIError,
    ExitCode,
    open_store,
    os_error_code,
)
from aot_core.errors import (
    ArtifactError,
    NotOwnedError,
)


def _entry_path(store: artifacts.ArtifactStore, key: str) -> Path:
    """The store's path for ``key``; a name that cannot be a key is a bad command line."""
    try:
        return store.path(key)
    except ArtifactError as exc:
        raise CLIError(ExitCode.USAGE, str(exc)) from None


def _resolve_entry(store: artifacts.ArtifactStore, ref: str) -> Path:
    """An entry key of the store, or a path to an artifact directory."""
    as_path = Path(ref).expanduser()
    if as_path.is_dir():
        return artifacts.resolve_artifact_dir(as_path)
    if "/" in ref or ref.startswith("."):
        raise CLIError(ExitCode.ARTIFACT_CORRUPT, f"{ref}: no such artifact directory")
    path = _entry_path(store, ref)
    if not path.is_dir():
        raise CLIError(
            ExitCode.ARTIFACT_CORRUPT,
            f"no cache entry {ref!r} in {store.entries_dir}; `aot cache ls` lists them",
        )
    return path


def _ls_status(info: artifacts.EntryInfo, report: artifacts.VerifyReport | None) -> str:
    if info.problem:
        return f"NOT LOADABLE: {info.problem}"
    if report is None:
        return "not checked"
    return report.describe() if report.ok else f"CORRUPT: {report.describe()}"


def cmd_cache_ls(args: argparse.Namespace) -> int:
    """List the store's entries; checksums are read only with --verify."""
    from aot_core.stats import format_table

    store = open_store(args)
    infos = [store.info(k) for k in store.entry_keys()]
    reports = {i.key: artifacts.verify(i.path) if args.verify else None for i in infos}
    if args.json:
        print(json.dumps([_ls_record(i, reports[i.key]) for i in infos], indent=2))
        return ExitCode.OK
    print(f"cache: {store.entries_dir}")
    if not infos:
        print("(no entries)")
    else:
        rows = []
        for i in infos:
            m = i.manifest
            rows.append(
                (
                    i.key,
                    m.backend if m else "?",
                    Path(m.model).name if m else "?",
                    m.created_utc if m else "?",
                    artifacts.format_bytes(i.size_bytes),
                    _ls_status(i, reports[i.key]),
                )
            )
        print(format_table(("key", "backend", "model", "created", "size", "status"), rows))
        if not args.verify:
            print(
                "not checked: the manifest is consistent and fits this machine, but no file's "
                "checksum was read; `aot cache ls --verify` or `aot cache verify` reads them"
            )
        for i in infos:
            report = reports[i.key]
            if i.problem or (report is not None and not report.ok):
                print(f"{i.key}: {store.removal_hint(i.path)}")
    leftovers = store.leftovers()
    if leftovers:
        print(
            f"{len(leftovers)} leftover(s) of interrupted writes (never loaded); "
            "`aot cache clear --leftovers` removes them"
        )
    return ExitCode.OK


def _ls_record(info: artifacts.EntryInfo, report: artifacts.VerifyReport | None) -> dict[str, Any]:
    intact = None if report is None else report.ok
    return {
        "key": info.key,
        "path": str(info.path),
        "size_bytes": info.size_bytes,
        # Without --verify this says only that the manifest allows loading here.
        "loadable_here": not info.problem and intact is not False,
        "files_checked": report is not None,
        "intact": intact,
        "problem": info.problem or ("; ".join(report.problems()) if report else ""),
        "manifest": info.manifest.to_dict() if info.manifest else None,
    }


def cmd_cache_verify(args: argparse.Namespace) -> int:
    """Check checksums and compatibility of entries; non-zero when any is bad."""
    store = open_store(args)
    paths = [_resolve_entry(store, r) for r in args.entries] or [
        store.entries_dir / k for k in store.entry_keys()
    ]
    if not paths:
        print(f"no entries in {store.entries_dir}")
        return ExitCode.OK
    worst = ExitCode.OK
    for path in paths:
        report = artifacts.verify(path)
        if not report.ok:
            print(f"{path}: CORRUPT")
            for problem in report.problems():
                print(f"  {problem}")
            print(f"  {store.removal_hint(path)}")
            worst = ExitCode.ARTIFACT_CORRUPT
            continue
        assert report.manifest is not None
        problems = artifacts.check_compatible(report.manifest)
        if problems:
            print(f"{path}: intact, but INCOMPATIBLE with this environment")
            for problem in problems:
                print(f"  {problem}")
            print(f"  {store.removal_hint(path)}")
            if worst == ExitCode.OK:
                worst = ExitCode.ARTIFACT_INCOMPATIBLE
            continue
        print(f"{path}: {report.describe()}")
    return worst


def cmd_cache_export(args: argparse.Namespace) -> int:
    """Pack one entry into a single file."""
    store = open_store(args)
    path = _resolve_entry(store, args.entry)
    out = Path(args.out).expanduser()
    if out.is_dir():
        out = out / f"{path.name}.aot.tar.gz"
    if not out.parent.is_dir():
        raise CLIError(ExitCode.CACHE_NOT_WRITABLE, f"directory {out.parent} does not exist")
    problem = artifacts.export_target_problem(path, out, force=args.force)
    if problem is not None:
        raise CLIError(ExitCode.CACHE_NOT_WRITABLE, f"refusing to export: {problem}")
    try:
        digest = artifacts.export_artifact(path, out, force=args.force)
    except OSError as exc:
        raise CLIError(
            os_error_code(exc) or ExitCode.CACHE_NOT_WRITABLE,
            f"cannot write {out}: {exc.strerror or exc}; choose another output file",
        ) from exc
    print(out)
    print(f"  sha256: {digest}  (the receiver can pin it: aot cache import FILE --sha256 ...)")
    return ExitCode.OK


def cmd_cache_import(args: argparse.Namespace) -> int:
    """Check an exported artifact and place it in the store."""
    store = open_store(args)
    src = Path(args.archive).expanduser()
    if not (src.exists() or src.is_symlink()):
        raise CLIError(ExitCode.ARTIFACT_CORRUPT, f"{src}: no such file")
    if not src.is_file():
        raise CLIError(
            ExitCode.ARTIFACT_CORRUPT,
            f"{src} is not a regular file (a directory, a FIFO, a device or a broken link); "
            "pass the file `aot cache export` wrote",
        )
    try:
        store.ensure_writable()
    except OSError as exc:
        code = os_error_code(exc) or ExitCode.CACHE_NOT_WRITABLE
        raise CLIError(code, f"cannot write to the cache {store.entries_dir}: {exc}") from exc
    dest, manifest, placed = artifacts.import_artifact(
        src, store, replace=args.force, expected_sha256=args.sha256, max_members=args.max_files
    )
    print(dest)
    if not placed:
        print("  an identical entry was already present (the archive's checksums were verified)")
    for line in artifacts.describe_manifest(manifest):
        print(f"  {line}")
    return ExitCode.OK


def cmd_cache_clear(args: argparse.Namespace) -> int:
    """Remove entries (all, named, or those that cannot load here) and leftovers.

    Only what aot can prove it wrote is removed; anything else in the store is named and
    left alone, and the exit status says so.
    """
    store = open_store(args)
    removed = 0
    refused: list[str] = []
    for key in args.entries:
        _entry_path(store, key)  # every name checked before anything is removed
    if not args.leftovers:
        if args.entries:
            keys = list(args.entries)
        elif args.invalid:
            keys = [
                k
                for k in store.entry_keys()
                if store.info(k).problem or not artifacts.verify(store.path(k)).ok
            ]
        else:
            keys = store.entry_keys()
        for key in keys:
            try:
                if store.remove(key):
                    removed += 1
                elif args.entries:
                    raise CLIError(ExitCode.ARTIFACT_CORRUPT, f"no cache entry {key!r}")
            except NotOwnedError as exc:
                refused.append(str(exc))
            except artifacts.LockTimeoutError as exc:
                # Never queued: behind a compile it would delete what that compile published.
                refused.append(f"{exc}; not removed, try again when it has finished")
    cleaned = store.clean_leftovers()
    print(
        f"removed {removed} entr{'y' if removed == 1 else 'ies'}"
        + (f" and {cleaned} leftover(s)" if cleaned else "")
        + f" from {store.entries_dir}"
    )
    if refused:
        raise CLIError(ExitCode.CACHE_NOT_WRITABLE, "\n".join(refused))
    return ExitCode.OK


def add_parser(sub: Any, fmt: type[argparse.HelpFormatter], epilog: str) -> None:
    """The ``aot cache`` actions."""
    cache = sub.add_parser(
        "cache",
        help="list, verify, export, import or clear artifacts",
        epilog=epilog,
        formatter_class=fmt,
    )
    csub = cache.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=Parser)
    csub.required = True
    c = csub.add_parser("ls", help="list entries and whether each can load here")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.add_argument(
        "--verify", action="store_true", help="also read every file's checksum (else: not checked)"
    )
    c.set_defaults(func=cmd_cache_ls)
    c = csub.add_parser("verify", help="check every file's checksum and the compatibility")
    c.add_argument(
        "entries",
        nargs="*",
        type=path_arg,
        help="entry keys or artifact directories (default: all)",
    )
    c.set_defaults(func=cmd_cache_verify)
    c = csub.add_parser("export", help="pack an entry into one file (.tar or .tar.gz)")
    c.add_argument("entry", type=path_arg, help="entry key or artifact directory")
    c.add_argument("out", type=path_arg, help="output file (or directory)")
    c.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing file (never one in the artifact)",
    )
    c.set_defaults(func=cmd_cache_export)
    c = csub.add_parser("import", help="check an exported file and add it to the cache")
    c.add_argument("archive", type=path_arg, help="file written by `aot cache export`")
    c.add_argument("--sha256", type=sha256_arg, help="refuse the file unless its sha256 is this")
    c.add_argument("--force", action="store_true", help="replace an entry with other contents")
    c.add_argument(
        "--max-files",
        type=positive_int,
        metavar="N",
        help="refuse an archive of more than N members (default: "
        f"${artifacts.MAX_MEMBERS_ENV_VAR}, else {artifacts.DEFAULT_MAX_MEMBERS})",
    )
    c.set_defaults(func=cmd_cache_import)
    c = csub.add_parser("clear", help="remove entries (default: all)")
    c.add_argument("entries", nargs="*", type=path_arg, help="entry keys to remove (default: all)")
    c.add_argument(
        "--invalid", action="store_true", help="only entries that are damaged or cannot load here"
    )
    c.add_argument("--leftovers", action="store_true", help="only leftovers of interrupted writes")
    c.set_defaults(func=cmd_cache_clear)
