"""`aot compile`: precompile a model into a verified artifact."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from aot_core import artifacts
from aot_core.bench.prompts import default_prompts
from aot_core.cli.arguments import add_model_or_shape, name_arg, path_arg
from aot_core.cli.command import (
    CLIError,
    ExitCode,
    load_spec,
    open_store,
    stdout_to_stderr,
    writable_or_fail,
)
from aot_core.cli.command import progress as _progress
from aot_core.cli.model_spec import chosen_model, compile_spec, fits
from aot_core.cli.workflow import compile_into, manifest_record


def cmd_compile(args: argparse.Namespace) -> int:
    """Precompile MODEL with one backend into a verified artifact."""
    from aot_core.registry import get_backend

    cache_root = open_store(args).root
    chosen = chosen_model(args, cache_root, default_tiny=False)
    model = chosen.path
    spec, start_config = compile_spec(load_spec(args.spec), model, shape=chosen.shape)
    fits(model, spec, max_model_len=spec.max_model_len or 0, max_num_seqs=spec.max_num_seqs or 1)
    cls = get_backend(args.backend)
    backend = args.backend
    key = artifacts.entry_key(
        backend=backend, backend_version=cls.version(), model=model, spec=spec
    )
    if args.out is not None:
        dest = Path(args.out).expanduser().absolute()
        where, what = dest.parent, "output directory"
    else:
        store = open_store(args)
        dest = store.path(key)
        where, what = store.entries_dir, "cache directory"
    # A directory aot cannot prove it wrote is refused by build_and_publish, under the
    # entry's lock and before anything is compiled.
    try:
        writable_or_fail(where, what)
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
            resolved=manifest_record(start_config, dest),
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


def add_parser(sub: Any, fmt: type[argparse.HelpFormatter], epilog: str) -> None:
    """``aot compile`` and its options."""
    p = sub.add_parser(
        "compile",
        help="precompile a model into a verified artifact",
        epilog=epilog,
        formatter_class=fmt,
    )
    add_model_or_shape(
        p,
        model_help="local Hugging Face model directory (holding config.json; weights "
        "optional), a .gguf file, or a real model's name (smollm2-135m-instruct), converted "
        "once",
    )
    p.add_argument(
        "--backend", required=True, type=name_arg, help="backend name (see `aot backends`)"
    )
    p.add_argument("--spec", type=path_arg, help="compile spec file (.toml or .json)")
    p.add_argument(
        "--out",
        type=path_arg,
        help="write the artifact to this directory instead of the cache (new, empty, or an "
        "aot artifact; anything else is refused)",
    )
    p.add_argument("--force", action="store_true", help="recompile even if a valid one exists")
    p.set_defaults(func=cmd_compile)
