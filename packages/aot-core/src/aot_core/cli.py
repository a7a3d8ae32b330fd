"""The ``aot`` command: list backends, precompile artifacts, benchmark, manage the cache.

Every failure the user can fix gets a one-paragraph message on stderr and one of the
documented exit codes in ``ExitCode`` (also listed by ``aot --help``).
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from aot_core import artifacts, model_choice
from aot_core.command import (
    EXIT_CODE_HELP,
    CLIError,
    ExitCode,
    check_model,
    load_spec,
    stdout_to_stderr,
)
from aot_core.command import progress as _progress
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
from aot_core.prompts import default_prompts
from aot_core.spec import CompileSpec
from aot_core.workflow import INTERRUPTED, compile_into

if TYPE_CHECKING:
    from aot_core.machine_limits import DecodeLimit
    from aot_core.memory_estimate import MemoryEstimate

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


def _os_error_code(exc: OSError) -> ExitCode | None:
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


def _writable(directory: Path, what: str) -> None:
    """Create ``directory`` and write a probe file, or fail with CACHE_NOT_WRITABLE/DISK_FULL."""
    try:
        artifacts.ensure_writable(directory)
    except OSError as exc:
        code = _os_error_code(exc) or ExitCode.CACHE_NOT_WRITABLE
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


def _store(args: argparse.Namespace) -> artifacts.ArtifactStore:
    store = artifacts.ArtifactStore(args.cache_dir)
    if store.root.exists() and not store.root.is_dir():
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE,
            f"the cache directory {store.root} is not a directory; choose another one "
            f"(--cache-dir or ${artifacts.CACHE_ENV_VAR})",
        )
    return store


# --------------------------------------------------------------------------- aot backends


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


# --------------------------------------------------------------------------- aot compile


def cmd_compile(args: argparse.Namespace) -> int:
    """Precompile MODEL with one backend into a verified artifact."""
    from aot_core.registry import get_backend

    cache_root = _store(args).root
    chosen = _chosen_model(args, cache_root, default_tiny=False)
    model = chosen.path
    spec = _compile_spec(load_spec(args.spec), model, shape=chosen.shape)
    _fits(model, spec, max_model_len=spec.max_model_len or 0, max_num_seqs=spec.max_num_seqs or 1)
    cls = get_backend(args.backend)
    backend = args.backend
    key = artifacts.entry_key(
        backend=backend, backend_version=cls.version(), model=model, spec=spec
    )
    if args.out is not None:
        dest = Path(args.out).expanduser().absolute()
        where, what = dest.parent, "output directory"
    else:
        store = _store(args)
        dest = store.path(key)
        where, what = store.entries_dir, "cache directory"
    # A directory aot cannot prove it wrote is refused by build_and_publish, under the
    # entry's lock and before anything is compiled.
    try:
        _writable(where, what)
    except CLIError:
        # Read-only media: a valid entry is still used; only compiling needs write access.
        existing = None if args.force else artifacts.reusable_entry(dest, key=key, backend=backend)
        if existing is None:
            raise
        _progress(
            f"the {what} {where} cannot be written, but it holds a verified artifact for "
            "this model, spec and environment: using it"
        )
        _print_artifact(dest, existing)
        return ExitCode.OK
    _progress(f"compiling {model} with {backend} into {dest}")
    start = time.perf_counter()
    with stdout_to_stderr():
        manifest, compiled = compile_into(
            dest=dest,
            key=key,
            backend=backend,
            model=model,
            spec=spec,
            example_inputs=default_prompts(),
            force=args.force,
            progress=_progress,
        )
    if compiled:
        _progress(f"compiled in {time.perf_counter() - start:.1f} s")
    else:
        _progress("a verified artifact for this model, spec and environment already exists")
    _print_artifact(dest, manifest)
    return ExitCode.OK


def _print_artifact(dest: Path, manifest: artifacts.Manifest) -> None:
    print(dest)
    for line in artifacts.describe_manifest(manifest):
        print(f"  {line}")


# --------------------------------------------------------------------------- aot bench


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure eager vs compiled, cold vs warm, each start in a fresh process."""
    from aot_core import bench
    from aot_core.usage_records import record_bench

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
            _check_output_file(Path(out).expanduser().absolute(), what)
    if args.work_dir is not None:
        work = Path(args.work_dir).expanduser()
        if (work.exists() or work.is_symlink()) and not work.is_dir():
            raise CLIError(
                ExitCode.CACHE_NOT_WRITABLE, f"--work-dir: {work} exists and is not a directory"
            )
    # Everything the bench writes outside --work-dir goes under the store root (--cache-dir,
    # else $AOT_CACHE_DIR, else the default), and that is the directory checked.
    cache_root = _store(args).root
    _writable(cache_root, "cache directory")
    chosen = _chosen_model(args, cache_root, default_tiny=True, time_reuse=True)
    spec, dtype_note = _dtype_for_machine(load_spec(args.spec), chosen.path)
    if args.prompts and spec.max_num_seqs is None and args.prompts > 4:
        spec = spec.replace(max_num_seqs=args.prompts)  # the whole batch decodes together
    if args.prompt_mix == "mixed" and spec.max_num_batched_tokens is None:
        # A step budget below the long prompts' length, so chunked prefill splits them.
        spec = spec.replace(max_num_batched_tokens=MIXED_STEP_TOKENS)
    sized = spec.replace(
        **{k: v for k, v in bench.BENCH_SPEC_DEFAULTS.items() if getattr(spec, k) is None}
    )
    estimate = _fits(
        chosen.path,
        sized,
        max_model_len=sized.max_model_len or 0,
        max_num_seqs=sized.max_num_seqs or 1,
    )
    notes = [chosen.ready.note()] if chosen.ready else []
    notes += [dtype_note] if dtype_note else []
    if estimate is not None:
        notes.append(f"memory estimate per start: {estimate.describe()}")
    prompts, workload = _workload(args, sized, chosen.path)
    limit = _decode_limit(estimate, min(len(prompts), sized.max_num_seqs or len(prompts)))
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
    )
    if args.show_generations:
        from aot_core.bench_text import with_generations

        result = with_generations(result, chosen.path, prompts, count=args.show_generations)
    record_bench(result, model=args.model, cache_root=cache_root, warn=_progress)
    print(bench.format_report(result))
    if args.json is not None:
        _write_result(Path(args.json), json.dumps(result.to_dict(), indent=2) + "\n")
        _progress(f"wrote {args.json}")
    if args.plot is not None:
        bench.plot(result, Path(args.plot))
        _progress(f"wrote {args.plot}")
    if result.failures:
        return ExitCode.BENCH_FAILED
    return ExitCode.OK


# --prompt-mix mixed: the engine step's token budget (long prompts are 2-4x this).
MIXED_STEP_TOKENS = 64


def _workload(
    args: argparse.Namespace, spec: CompileSpec, model: Path
) -> tuple[list[list[int]], str]:
    """The bench's prompts from --prompts / --prompt-mix, and how to describe them."""
    from aot_core.prompts import TEXTS, workload_prompts

    if args.prompt_mix == "chat":
        from aot_core.bench_text import chat_workload

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


def _chosen_model(
    args: argparse.Namespace, cache_root: Path, *, default_tiny: bool, time_reuse: bool = False
) -> model_choice.ChosenModel:
    if args.shape is not None:
        from aot_core.shape_presets import get_shape

        try:
            get_shape(args.shape)  # an unknown name fails before anything is written
        except SpecError as exc:
            raise CLIError(ExitCode.USAGE, f"--shape: {exc}") from None
        _writable(cache_root, "cache directory")  # the shape's config-only directory goes there
    return model_choice.choose_model(
        args.model,
        args.shape,
        cache_root=cache_root,
        default_tiny=default_tiny,
        time_reuse=time_reuse,
    )


def _compile_spec(spec: CompileSpec, model: Path, *, shape: str | None) -> CompileSpec:
    """The spec ``aot compile`` keys and builds its entry with: its open fields resolved as
    ``aot eval`` resolves them (aot-core's ``resolve_start``, the same example prompts), so
    an eval job of the same model and spec finds this entry. A ``--shape`` preset's context
    (up to 131072 tokens) would size a huge KV cache, so it takes the bench's small engine
    unless the spec says otherwise, and its dtype is fixed here (its config says bfloat16)."""
    from aot_core.bench import BENCH_SPEC_DEFAULTS
    from aot_core.start_config import resolve_start

    start = resolve_start(
        spec,
        model,
        examples=default_prompts(),
        defaults=BENCH_SPEC_DEFAULTS if shape is not None else None,
    )
    resolved = start.apply(spec)
    if shape is not None:
        resolved, note = _dtype_for_machine(resolved, model)
        if note:
            _progress(note)
    return resolved


def _dtype_for_machine(spec: CompileSpec, model: Path) -> tuple[CompileSpec, str]:
    """dtype auto as every backend resolves it (aot-core's ``resolve_dtype``), put into the
    spec; with the reason, for the header (empty when there is nothing to say)."""
    from aot_core.dtype_choice import resolve_dtype

    choice = resolve_dtype(spec.dtype, model, gpu=bool(artifacts.cuda_capabilities()))
    if choice.dtype == spec.dtype:
        return spec, ""
    return spec.replace(dtype=choice.dtype), choice.reason


def _fits(
    model: Path, spec: CompileSpec, *, max_model_len: int, max_num_seqs: int
) -> MemoryEstimate | None:
    return model_choice.check_fits(
        model, spec, max_model_len=max_model_len, max_num_seqs=max_num_seqs
    )


def _decode_limit(estimate: MemoryEstimate | None, batch: int) -> DecodeLimit | None:
    """The bandwidth bound on decode tokens/s here (one 128 MiB copy, well under a second)."""
    from aot_core.machine_limits import DecodeLimit, measure_copy_bandwidth

    if estimate is None:
        return None
    return DecodeLimit(
        bandwidth_bytes_per_s=measure_copy_bandwidth(),
        weight_bytes=estimate.weight_bytes,
        batch=batch,
    )


def _check_output_file(path: Path, what: str) -> None:
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
    _writable(path.parent, f"{what} directory")


def _write_result(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CLIError(
            _os_error_code(exc) or ExitCode.CACHE_NOT_WRITABLE,
            f"cannot write {path}: {exc.strerror or exc}",
        ) from exc


# --------------------------------------------------------------------------- aot cache


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

    store = _store(args)
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
    store = _store(args)
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
    store = _store(args)
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
            _os_error_code(exc) or ExitCode.CACHE_NOT_WRITABLE,
            f"cannot write {out}: {exc.strerror or exc}; choose another output file",
        ) from exc
    print(out)
    print(f"  sha256: {digest}  (the receiver can pin it: aot cache import FILE --sha256 ...)")
    return ExitCode.OK


def cmd_cache_import(args: argparse.Namespace) -> int:
    """Check an exported artifact and place it in the store."""
    store = _store(args)
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
        code = _os_error_code(exc) or ExitCode.CACHE_NOT_WRITABLE
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
    store = _store(args)
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


# --------------------------------------------------------------------------- parser


def _epilog() -> str:
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"aot: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``aot``."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="aot",
        description="Compile LLM inference ahead of time and measure what it bought.",
        epilog=_epilog(),
        formatter_class=fmt,
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        type=_path,
        help=f"artifact store root (default: ${artifacts.CACHE_ENV_VAR} or ~/.cache/aot)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("backends", help="list installed backends and whether each can run here")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--check",
        action="store_true",
        help="also import each engine and look for its device (seconds each), as aot-compat does",
    )
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser(
        "compile",
        help="precompile a model into a verified artifact",
        epilog=_epilog(),
        formatter_class=fmt,
    )
    p.add_argument(
        "model",
        nargs="?",
        type=_path,
        help="local Hugging Face model directory (holding config.json; weights optional), "
        "a .gguf file, or a real model's name (smollm2-135m-instruct), converted once",
    )
    _add_shape_option(p)
    p.add_argument("--backend", required=True, type=_name, help="backend name (see `aot backends`)")
    p.add_argument("--spec", type=_path, help="compile spec file (.toml or .json)")
    p.add_argument(
        "--out",
        type=_path,
        help="write the artifact to this directory instead of the cache (new, empty, or an "
        "aot artifact; anything else is refused)",
    )
    p.add_argument("--force", action="store_true", help="recompile even if a valid one exists")
    p.set_defaults(func=cmd_compile)

    _add_bench_parser(sub, fmt)
    from aot_core.evaluation.command import add_parser as add_eval_parser

    add_eval_parser(sub, fmt, _epilog())
    from aot_core.serve_command import add_parser as add_serve_parser

    add_serve_parser(sub, fmt, _epilog())
    from aot_core.tune.command import add_parser as add_tune_parser

    add_tune_parser(sub, fmt, _epilog())
    from aot_core.usage_command import add_parser as add_usage_parser

    add_usage_parser(sub, fmt, _epilog())
    _add_cache_commands(sub)
    return parser


def _add_bench_parser(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """``aot bench`` and its options."""
    from aot_core.bench import DEFAULT_MAX_NEW_TOKENS, DEFAULT_REPEATS, DEFAULT_TIMEOUT_S
    from aot_core.prompts import WORKLOAD_MIXES

    p = sub.add_parser(
        "bench",
        help="measure eager vs compiled, cold vs warm starts, in fresh processes",
        epilog=_epilog(),
        formatter_class=fmt,
    )
    p.add_argument(
        "model",
        nargs="?",
        type=_path,
        help="model directory, .gguf file or real model's name such as smollm2-135m-instruct "
        "(default: built-in tiny Llama)",
    )
    _add_shape_option(p)
    p.add_argument(
        "--backend",
        action="append",
        type=_name,
        help="backend to measure (repeatable; default: every usable installed backend)",
    )
    p.add_argument("--spec", type=_path, help="base compile spec file; compile_mode is set per run")
    p.add_argument(
        "--repeats",
        type=_positive_int,
        default=DEFAULT_REPEATS,
        help=f"fresh-process starts per measurement, medians reported (default {DEFAULT_REPEATS})",
    )
    p.add_argument(
        "--new-tokens",
        "--max-new-tokens",
        dest="max_new_tokens",
        metavar="M",
        type=_positive_int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"tokens generated per prompt (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    p.add_argument(
        "--prompts",
        type=_positive_int,
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
        type=_positive_int,
        default=0,
        metavar="N",
        help="print the first N prompts' greedy outputs as text, eager beside compiled, per "
        "backend (decoded by the model's tokenizer, or as bytes without one)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_int,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds before one run is killed (default {DEFAULT_TIMEOUT_S})",
    )
    p.add_argument("--json", type=_path, help="write all results as JSON to this file")
    p.add_argument("--plot", type=_path, help="draw the results to this PNG (needs matplotlib)")
    p.add_argument(
        "--work-dir",
        type=_path,
        help="keep the runs' artifacts and logs here (default: a temporary directory under "
        "the cache directory, removed afterwards)",
    )
    p.set_defaults(func=cmd_bench)


def _add_shape_option(p: argparse.ArgumentParser) -> None:
    from aot_core.shape_presets import known_shapes

    p.add_argument(
        "--shape",
        type=_name,
        metavar="NAME",
        help="instead of MODEL, a real architecture's published config with placeholder "
        f"weights (nothing downloaded): {', '.join(known_shapes())}",
    )


def _add_cache_commands(sub: Any) -> None:
    """The ``aot cache`` actions."""
    cache = sub.add_parser("cache", help="list, verify, export, import or clear artifacts")
    csub = cache.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=_Parser)
    csub.required = True
    c = csub.add_parser("ls", help="list entries and whether each can load here")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.add_argument(
        "--verify", action="store_true", help="also read every file's checksum (else: not checked)"
    )
    c.set_defaults(func=cmd_cache_ls)
    c = csub.add_parser("verify", help="check every file's checksum and the compatibility")
    c.add_argument(
        "entries", nargs="*", type=_path, help="entry keys or artifact directories (default: all)"
    )
    c.set_defaults(func=cmd_cache_verify)
    c = csub.add_parser("export", help="pack an entry into one file (.tar or .tar.gz)")
    c.add_argument("entry", type=_path, help="entry key or artifact directory")
    c.add_argument("out", type=_path, help="output file (or directory)")
    c.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing file (never one in the artifact)",
    )
    c.set_defaults(func=cmd_cache_export)
    c = csub.add_parser("import", help="check an exported file and add it to the cache")
    c.add_argument("archive", type=_path, help="file written by `aot cache export`")
    c.add_argument("--sha256", type=_sha256, help="refuse the file unless its sha256 is this")
    c.add_argument("--force", action="store_true", help="replace an entry with other contents")
    c.add_argument(
        "--max-files",
        type=_positive_int,
        metavar="N",
        help="refuse an archive of more than N members (default: "
        f"${artifacts.MAX_MEMBERS_ENV_VAR}, else {artifacts.DEFAULT_MAX_MEMBERS})",
    )
    c.set_defaults(func=cmd_cache_import)
    c = csub.add_parser("clear", help="remove entries (default: all)")
    c.add_argument("entries", nargs="*", type=_path, help="entry keys to remove (default: all)")
    c.add_argument(
        "--invalid", action="store_true", help="only entries that are damaged or cannot load here"
    )
    c.add_argument("--leftovers", action="store_true", help="only leftovers of interrupted writes")
    c.set_defaults(func=cmd_cache_clear)


def _path(text: str) -> str:
    # An empty path would silently mean the current directory.
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (an empty path means nothing)")
    if "\0" in text:
        raise argparse.ArgumentTypeError("must not contain a NUL character")
    return text


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty; `aot backends` lists the names")
    return text


def _sha256(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256 (64 hex digits)")
    return text.lower()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fail(code: ExitCode, message: str) -> int:
    print(f"aot: error: {message}", file=sys.stderr, flush=True)
    return int(code)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, map every known failure to its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args))
    except CLIError as exc:
        return _fail(exc.code, str(exc))
    except EnvironmentVariableError as exc:
        return _fail(ExitCode.USAGE, str(exc))
    except ModelFilesError as exc:
        return _fail(ExitCode.NOT_A_CAUSAL_LM, str(exc))
    except SpecError as exc:
        where = []
        if exc.field:
            where.append(f"field {exc.field!r}")
        if exc.line:
            where.append(f"line {exc.line}")
        suffix = f" [{', '.join(where)}]" if where else ""
        return _fail(ExitCode.SPEC_ERROR, f"{exc}{suffix}")
    except BackendUnavailableError as exc:
        return _fail(ExitCode.BACKEND_UNAVAILABLE, str(exc))
    except ArtifactIncompatibleError as exc:
        return _fail(ExitCode.ARTIFACT_INCOMPATIBLE, str(exc))
    except ArtifactCorruptError as exc:
        return _fail(ExitCode.ARTIFACT_CORRUPT, str(exc))
    except CompilationError as exc:
        return _fail(ExitCode.COMPILATION_FAILED, str(exc))
    except artifacts.LockTimeoutError as exc:
        return _fail(ExitCode.CACHE_NOT_WRITABLE, f"{exc}; try again when it has finished")
    except NotOwnedError as exc:
        return _fail(ExitCode.CACHE_NOT_WRITABLE, str(exc))
    except ArtifactError as exc:
        return _fail(ExitCode.ARTIFACT_CORRUPT, str(exc))
    except FileExistsError as exc:
        return _fail(ExitCode.CACHE_NOT_WRITABLE, f"{exc.strerror}: {exc.filename}")
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            return _fail(
                ExitCode.USAGE,
                f"{exc.filename or 'a path'}: {exc.strerror}; check the paths on the command line",
            )
        code = _os_error_code(exc)
        if code is None:
            raise
        detail = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        if code == ExitCode.DISK_FULL:
            return _fail(
                code,
                f"no space left on the device ({detail}); the partial result was discarded and "
                "the cache was left as it was. Free some space or use --cache-dir elsewhere",
            )
        return _fail(code, f"cannot write ({detail}); use another --cache-dir or fix permissions")
    except KeyboardInterrupt:
        return _fail(
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
        return _fail(ExitCode.FAILURE, f"unexpected {type(exc).__name__}: {exc}")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
