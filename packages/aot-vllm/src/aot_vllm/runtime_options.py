"""``backend_options`` keys the runtime itself reads (the rest go to ``translate``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

EngineProcess = Literal["inline", "subprocess"]
CachePath = Literal["auto", "aot", "inductor"]

RUNTIME_OPTIONS: dict[str, str] = {
    "engine_process": (
        "'inline' runs vLLM's engine core in this process (no spawn, counters readable; "
        "default for one device) or 'subprocess' (vLLM's default multiprocessing)"
    ),
    "compile_cache": (
        "'auto' (default), 'aot' (vLLM's AOT artifacts) or 'inductor' (Inductor's FX-graph "
        "cache, VLLM_USE_AOT_COMPILE=0); see the README for what 'auto' picks"
    ),
    "best_effort": "true: settings the installed vLLM cannot honour become warnings",
}


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """What the runtime was asked to do beyond the translated engine arguments."""

    engine_process: EngineProcess | None
    """Where the engine core runs; None picks by device count."""

    compile_cache: CachePath
    """Which compile-cache path to use."""

    best_effort: bool
    """Turn untranslatable settings into warnings."""


def check_runtime_options(spec: CompileSpec) -> RuntimeOptions:
    """The runtime's own keys of ``spec.backend_options``, validated (the rest left alone)."""
    options: Mapping[str, Any] = spec.backend_options
    process = options.get("engine_process")
    if process is not None and process not in ("inline", "subprocess"):
        raise SpecError(
            f"backend_options.engine_process: must be 'inline' or 'subprocess', got {process!r}",
            field="backend_options",
        )
    cache = options.get("compile_cache", "auto")
    if cache not in ("auto", "aot", "inductor"):
        raise SpecError(
            f"backend_options.compile_cache: must be 'auto', 'aot' or 'inductor', got {cache!r}",
            field="backend_options",
        )
    best = options.get("best_effort", False)
    if not isinstance(best, bool):
        raise SpecError(
            f"backend_options.best_effort: must be true or false, got {best!r}",
            field="backend_options",
        )
    if cache != "auto" and "use_aot_compile" in options:
        wanted = options["use_aot_compile"]
        if (cache == "aot") != bool(wanted):
            raise SpecError(
                f"backend_options.compile_cache={cache!r} contradicts "
                f"use_aot_compile={wanted!r}; set only one of them",
                field="backend_options",
            )
    if process == "inline" and spec.tensor_parallel_size * spec.pipeline_parallel_size > 1:
        raise SpecError(
            "backend_options.engine_process: 'inline' needs a single device, but the spec "
            f"asks for tensor_parallel_size={spec.tensor_parallel_size} x "
            f"pipeline_parallel_size={spec.pipeline_parallel_size}; use 'subprocess'",
            field="backend_options",
        )
    return RuntimeOptions(engine_process=process, compile_cache=cache, best_effort=best)
