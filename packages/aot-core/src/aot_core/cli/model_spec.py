"""The model and spec a command runs: chosen, resolved and checked to fit."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from aot_core.bench.prompts import default_prompts
from aot_core.cli.command import (
    CLIError,
    ExitCode,
    writable_or_fail,
)
from aot_core.cli.command import progress as _progress
from aot_core.errors import (
    SpecError,
)
from aot_core.models import choice as model_choice
from aot_core.spec import CompileSpec

if TYPE_CHECKING:
    from aot_core.models.memory_estimate import MemoryEstimate
    from aot_core.start_config import StartConfig


def chosen_model(
    args: argparse.Namespace, cache_root: Path, *, default_tiny: bool, time_reuse: bool = False
) -> model_choice.ChosenModel:
    if args.shape is not None:
        from aot_core.models.shape_presets import get_shape

        try:
            get_shape(args.shape)  # an unknown name fails before anything is written
        except SpecError as exc:
            raise CLIError(ExitCode.USAGE, f"--shape: {exc}") from None
        writable_or_fail(
            cache_root, "cache directory"
        )  # the shape's config-only directory goes there
    return model_choice.choose_model(
        args.model,
        args.shape,
        cache_root=cache_root,
        default_tiny=default_tiny,
        time_reuse=time_reuse,
    )


def compile_spec(
    spec: CompileSpec, model: Path, *, shape: str | None
) -> tuple[CompileSpec, StartConfig]:
    """The spec ``aot compile`` keys and builds its entry with: its open fields, dtype
    included, resolved as ``aot eval`` resolves them (aot-core's ``resolve_start``, the
    same example prompts), so an eval job of the same model and spec finds this entry. A
    ``--shape`` preset's context (up to 131072 tokens) would size a huge KV cache, so it
    takes the bench's small engine unless the spec says otherwise. Returns the spec and
    its start configuration (for the manifest)."""
    from aot_core.bench.run import BENCH_SPEC_DEFAULTS
    from aot_core.start_config import resolve_start

    start = resolve_start(
        spec,
        model,
        examples=default_prompts(),
        defaults=BENCH_SPEC_DEFAULTS if shape is not None else None,
    )
    if shape is not None and start.dtype.source != "spec":
        _progress(start.dtype.reason)  # a preset's config says bfloat16: say what runs
    return start.apply(spec), start


def fits(
    model: Path, spec: CompileSpec, *, max_model_len: int, max_num_seqs: int
) -> MemoryEstimate | None:
    return model_choice.check_fits(
        model, spec, max_model_len=max_model_len, max_num_seqs=max_num_seqs
    )
