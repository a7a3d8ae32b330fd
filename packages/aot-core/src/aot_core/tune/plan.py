"""``aot tune``'s plan, decided before any trial runs: the model, the workload, the base
spec, the trials (every one's spec validated), the sweep's directory and its results keys."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.cli.command import CLIError, ExitCode
from aot_core.spec import CompileSpec
from aot_core.tune.results import RESULTS_NAME, TrialResults
from aot_core.tune.runner import TuneRun, Workload
from aot_core.tune.sweep import KNOBS, MODES, KnobError, Trial, expand, load_sweep_file, parse_knob

DEFAULT_PROMPTS = 4


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """Everything the sweep needs, checked."""

    run: TuneRun
    """What every trial shares."""

    model_label: str
    """The model as the user named it."""

    trials: list[Trial]
    """Every trial, in the order they run."""

    context: Mapping[str, Any]
    """Model, workload, base spec and versions: with a trial, its results key."""

    results: TrialResults
    """Where finished trials are kept."""

    notes: list[str]
    """Lines for the report's header."""


def plan_sweep(args: argparse.Namespace, progress: Callable[[str], None]) -> SweepPlan:
    """Check the command line and build the sweep; raises ``CLIError`` / ``SpecError``."""
    from aot_core import artifacts
    from aot_core.cli.command import load_spec
    from aot_core.models import choice as model_choice

    chosen_knobs = _knobs(args)
    workload = _workload(args)
    base = load_spec(args.spec)
    if args.max_model_len is not None:
        base = base.replace(max_model_len=args.max_model_len)
    store = artifacts.ArtifactStore(args.cache_dir)
    _writable(store.root, "cache directory")
    chosen = model_choice.choose_model(args.model, None, cache_root=store.root, default_tiny=True)
    base = _resolved_base(base, chosen.path, workload)
    tunable = _backends(chosen_knobs)
    defaults = _defaults(workload, tunable)
    trials, notes = expand(chosen_knobs, defaults=defaults, tunable=tunable)
    if not trials:
        raise CLIError(ExitCode.USAGE, "the sweep is empty: no trial to run; give knob values")
    for trial in trials:
        trial.config.spec(base)  # an impossible combination fails now, naming the field
    context = _context(chosen.path, workload, base, sorted(tunable))
    work = _work_dir(args, store.root, chosen.label, context)
    run = TuneRun(
        model=chosen.path,
        base=base,
        workload=workload,
        work=work,
        cache_root=store.root,
        timeout_s=float(args.timeout),
    )
    return SweepPlan(
        run=run,
        model_label=chosen.label,
        trials=trials,
        context=context,
        results=TrialResults(path=work / RESULTS_NAME),
        notes=notes,
    )


def _knobs(args: argparse.Namespace) -> dict[str, tuple[Any, ...]]:
    knobs: dict[str, tuple[Any, ...]] = {}
    if args.sweep is not None:
        path = Path(args.sweep).expanduser()
        if not path.is_file():
            raise CLIError(ExitCode.USAGE, f"--sweep {args.sweep}: no such file")
        knobs.update(load_sweep_file(path))
    for text in args.knob:
        try:
            name, values = parse_knob(text)
        except KnobError as exc:
            raise CLIError(ExitCode.USAGE, f"--knob: {exc}") from None
        knobs[name] = values
    return knobs


def _workload(args: argparse.Namespace) -> Workload:
    from aot_core.bench.prompts import workload_prompts

    if args.tasks is not None:
        if args.prompts is not None or args.new_tokens is not None:
            raise CLIError(
                ExitCode.USAGE,
                "--tasks runs your lm-eval tasks as each job; --prompts/--new-tokens describe "
                "a generation job instead: give one or the other",
            )
        if not args.tasks.strip():
            raise CLIError(ExitCode.USAGE, "--tasks: name at least one task")
        include = (
            str(Path(args.include_path).expanduser().absolute()) if args.include_path else None
        )
        return Workload(tasks=args.tasks, include_path=include, limit=args.limit)
    if args.include_path is not None or args.limit is not None:
        raise CLIError(ExitCode.USAGE, "--include-path and --limit go with --tasks")
    prompts = workload_prompts(args.prompts or DEFAULT_PROMPTS)
    return Workload(prompts=tuple(tuple(p) for p in prompts), new_tokens=args.new_tokens or 64)


def _resolved_base(base: CompileSpec, model: Path, workload: Workload) -> CompileSpec:
    """A generation job's context fits its prompts and new tokens (as ``aot compile`` sizes
    it for examples); an eval job resolves its own, as ``aot eval`` does."""
    if workload.is_eval:
        return base
    from aot_core.start_config import resolve_start

    start = resolve_start(
        base,
        model,
        examples=[list(p) for p in workload.prompts],
        max_new_tokens=workload.new_tokens,
    )
    return (
        base.replace(max_model_len=start.max_model_len.value)
        if base.max_model_len is None
        else base
    )


def _backends(knobs: Mapping[str, tuple[Any, ...]]) -> dict[str, tuple[str, ...]]:
    """The backends to measure and the spec fields each acts on (``Compiler.tunable``)."""
    from aot_core.registry import get_backend, list_backends

    names = knobs.get("backend")
    if names is None:
        get_backend()  # nothing installed or usable: its own clear error (exit 6)
        names = tuple(i.name for i in list_backends() if i.availability.usable)
    return {name: tuple(get_backend(name).tunable) for name in names}


def _defaults(
    workload: Workload, tunable: Mapping[str, tuple[str, ...]]
) -> dict[str, tuple[Any, ...]]:
    from aot_core import artifacts
    from aot_core.dtype_choice import cpu_has_native_bf16

    native_bf16 = bool(artifacts.cuda_capabilities()) or cpu_has_native_bf16()
    seqs = (None,) if workload.is_eval else (len(workload.prompts),)
    values: dict[str, tuple[Any, ...]] = {
        "backend": tuple(tunable),
        "mode": MODES,
        "dtype": ("float32", "bfloat16") if native_bf16 else ("float32",),
        "max_num_seqs": seqs,
        "max_num_batched_tokens": (None,),
    }
    assert set(values) == set(KNOBS)
    return values


def _context(
    model: Path, workload: Workload, base: CompileSpec, backends: list[str]
) -> dict[str, Any]:
    """What a results key depends on besides the trial: an upgrade of aot-core or torch
    reruns every trial, one of a backend (``backends``) that backend's."""
    from aot_core import artifacts
    from aot_core.registry import installed_backends

    installed = installed_backends()
    versions: dict[str, Any] = {
        "aot-core": artifacts.package_version("aot-core"),
        "torch": artifacts.torch_version(),
        "host": artifacts.host_fingerprint(),
    }
    return {
        "model": {"path": str(model), "config": artifacts.model_config_hash(model)},
        "workload": workload.identity(),
        "base_spec": base.fingerprint(),
        "versions": versions,
        "backends": {
            name: {"version": installed[name].version(), **installed[name].pins()}
            for name in backends
        },
    }


def _work_dir(args: argparse.Namespace, root: Path, label: str, context: Mapping[str, Any]) -> Path:
    if args.work_dir is not None:
        work = Path(args.work_dir).expanduser().absolute()
    else:
        mine = {k: context[k] for k in ("model", "workload", "base_spec")}
        digest = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:12]
        name = "".join(c if c.isalnum() or c in "._-" else "-" for c in label)[:40]
        work = root / "tune" / f"{name.strip('-.') or 'model'}-{digest}"
    _writable(work, "sweep directory (--work-dir)")
    return work


def _writable(directory: Path, what: str) -> None:
    from aot_core import artifacts

    if directory.exists() and not directory.is_dir():
        raise CLIError(ExitCode.CACHE_NOT_WRITABLE, f"the {what} {directory} is not a directory")
    try:
        artifacts.ensure_writable(directory)
    except OSError as exc:
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE,
            f"cannot write to the {what} {directory}: {exc.strerror or exc}; choose another "
            "(--cache-dir, --work-dir) or fix its permissions",
        ) from exc
