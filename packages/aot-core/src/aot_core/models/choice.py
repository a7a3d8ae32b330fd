"""What ``aot compile`` and ``aot bench`` run on: a model directory, a ``--shape`` preset or
the built-in tiny Llama, checked to fit this machine's memory before any engine starts."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aot_core.cli.command import CLIError, ExitCode, check_model
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

if TYPE_CHECKING:
    from aot_core.models.gguf import ConvertedModel
    from aot_core.models.memory_estimate import MemoryEstimate


@dataclass(frozen=True, kw_only=True)
class ModelReady:
    """How long a GGUF input took to become a verified model directory in aot's cache."""

    source: str
    """The GGUF file's name."""

    converted: bool
    """True when this command converted it; False when an earlier conversion was reused."""

    first_s: float
    """Seconds this command took to have the checked model directory (conversion included
    when it converted)."""

    reused_s: float | None = None
    """Seconds a second resolution took right after: the remembered digest and the cache
    entry verified file by file, what every later start pays (None: not measured)."""

    def note(self) -> str:
        """One line for the report and the JSON result's notes."""
        how = "converted into a verified cache entry" if self.converted else "cache entry reused"
        line = f"model ready from GGUF {self.source}: {how} in {self.first_s:.2f} s"
        if self.reused_s is not None:
            line += f"; reused right after in {self.reused_s:.2f} s (what each later start pays)"
        return line

    def to_dict(self) -> dict[str, Any]:
        """The measurement as the JSON result holds it."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class ChosenModel:
    """The model directory a command runs on, and how to name it."""

    path: Path
    """The model directory (for a shape: its config-only directory)."""

    label: str
    """For reports: "built-in tiny Llama", "shape smollm2-135m (...)", the path, or what
    was asked for and the directory it was converted to."""

    shape: str | None = None
    """The ``--shape`` preset's name, when one was chosen."""

    ready: ModelReady | None = None
    """For a GGUF input, how long it took to be ready (None for any other model)."""


def choose_model(
    model: str | None,
    shape: str | None,
    *,
    cache_root: Path,
    default_tiny: bool,
    time_reuse: bool = False,
) -> ChosenModel:
    """Resolve MODEL / ``--shape`` (exactly one, unless the tiny model is the default).

    ``time_reuse``: for a GGUF input, also time a second resolution (``ModelReady``)."""
    if model is not None and shape is not None:
        raise CLIError(ExitCode.USAGE, "pass either a model directory or --shape, not both")
    if shape is not None:
        from aot_core.models.shape_presets import ensure_shape_dir, get_shape

        try:
            preset = get_shape(shape)
        except SpecError as exc:
            raise CLIError(ExitCode.USAGE, f"--shape: {exc}") from None
        path = ensure_shape_dir(preset, cache_root)
        return ChosenModel(
            path=path,
            label=f"shape {preset.name} ({preset.title}'s config, placeholder weights)",
            shape=preset.name,
        )
    if model is None:
        if not default_tiny:
            raise CLIError(
                ExitCode.USAGE,
                "name a model directory or a preset with --shape NAME "
                "(`aot bench --help` lists the shapes)",
            )
        from aot_core.models.tiny import ensure_tiny_llama

        return ChosenModel(path=ensure_tiny_llama(cache_root), label="built-in tiny Llama")
    seen: list[ConvertedModel] = []
    t = time.perf_counter()
    path = check_model(model, cache_root=cache_root, on_gguf=seen.append)
    ready = None
    if seen:
        ready = ModelReady(
            source=seen[0].gguf.name, converted=seen[0].written, first_s=time.perf_counter() - t
        )
        if time_reuse:
            ready = dataclasses.replace(ready, reused_s=_resolve_again(model, cache_root))
    # a GGUF file or a real model's name became a directory in the model cache
    label = str(path) if path == Path(model).expanduser() else f"{model} (converted: {path})"
    return ChosenModel(path=path, label=label, ready=ready)


def _resolve_again(model: str, cache_root: Path) -> float:
    """Seconds a GGUF input's second resolution takes (its entry is reused, verified)."""
    from aot_core.models.gguf import resolve_gguf

    t = time.perf_counter()
    resolve_gguf(model, root=cache_root)
    return time.perf_counter() - t


def check_fits(
    model: Path, spec: CompileSpec, *, max_model_len: int, max_num_seqs: int
) -> MemoryEstimate | None:
    """The memory estimate of one start, or a NOT_ENOUGH_MEMORY ``CLIError`` when it does not
    fit; None when config.json is not of a family the estimate knows."""
    from aot_core.models.memory_estimate import estimate

    config = _config(model)
    try:
        est = estimate(
            config, dtype=spec.dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs
        )
    except (KeyError, TypeError, ValueError):
        return None  # not a Llama-family config: the backend's own checks decide
    if not est.fits:
        raise CLIError(
            ExitCode.NOT_ENOUGH_MEMORY,
            f"{model.name} is estimated not to fit in this machine's memory, so no engine was "
            f"started: {est.describe()}. Free memory, choose a smaller shape, a smaller "
            "max_model_len / max_num_seqs, or dtype bfloat16 in the spec",
        )
    return est


def _config(model: Path) -> dict[str, Any]:
    data = json.loads((model / "config.json").read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}
