"""The engine's ``backend_options``: the keys the translation spells for vLLM, each key's
check and help.

The runtime reads a few keys itself (``runtime_options.RUNTIME_OPTIONS``: where the engine
runs, which compile cache, best effort); they are known here too, so one unknown-key
error lists every key the backend takes, but they are left for the runtime. Both halves
are checked once, into ``options.VLLMOptions``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

from aot_vllm.releases import CUDAGRAPH_MODES, EXECUTORS
from aot_vllm.runtime_options import RUNTIME_OPTIONS

__all__ = ["ENGINE_OPTIONS", "BackendOption", "check_engine_options"]


@dataclass(frozen=True, kw_only=True)
class BackendOption:
    """One ``backend_options`` key the translation understands."""

    check: Callable[[str, Any], Any]
    """Validates a value and returns it normalised; raises ``SpecError`` naming the key."""

    help: str
    """One line for people: what the option does."""


def _bad(key: str, must: str, value: Any) -> SpecError:
    return SpecError(
        f"backend_options.{key}: must be {must}, got {value!r}", field="backend_options"
    )


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, "true or false", value)
    return value


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(key, "an integer >= 1", value)
    return value


def _fraction(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise _bad(key, "a number in (0, 1]", value)
    return float(value)


def _opt_level(key: str, value: Any) -> int:
    if isinstance(value, bool) or value not in (0, 1, 2, 3):
        raise _bad(key, "0, 1, 2 or 3", value)
    return int(value)


def _cudagraph_mode(key: str, value: Any) -> str:
    name = str(value).upper() if isinstance(value, str) else None
    if name not in CUDAGRAPH_MODES:
        raise SpecError(
            f"backend_options.{key}: unknown CUDA-graph mode {value!r}; allowed: "
            + ", ".join(CUDAGRAPH_MODES),
            field="backend_options",
        )
    return name


def _executor(key: str, value: Any) -> str:
    if value not in EXECUTORS:
        raise _bad(key, " or ".join(repr(e) for e in EXECUTORS), value)
    return str(value)


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(key, "a table of key = value", value)
    return dict(value)


ENGINE_OPTIONS: dict[str, BackendOption] = {
    "cudagraph_mode": BackendOption(
        check=_cudagraph_mode,
        help="vLLM CUDA-graph mode (NONE, PIECEWISE, FULL, FULL_DECODE_ONLY, FULL_AND_PIECEWISE)",
    ),
    "max_cudagraph_capture_size": BackendOption(
        check=_positive_int,
        help="largest batch to capture a CUDA graph for (sizes derived below it)",
    ),
    "compilation_config": BackendOption(
        check=_mapping, help="raw CompilationConfig fields, checked against the installed release"
    ),
    "engine_args": BackendOption(
        check=_mapping, help="extra vllm.LLM/EngineArgs keyword arguments, checked"
    ),
    "enforce_eager": BackendOption(
        check=_bool, help="only with compile_mode 'none'; see TRANSLATION.md"
    ),
    "gpu_memory_utilization": BackendOption(
        check=_fraction, help="fraction of device (or node) memory"
    ),
    "kv_cache_memory_bytes": BackendOption(check=_positive_int, help="KV-cache size in bytes"),
    "optimization_level": BackendOption(check=_opt_level, help="vLLM -O level (0.12+)"),
    "use_aot_compile": BackendOption(check=_bool, help="VLLM_USE_AOT_COMPILE (0.11.1+)"),
    "disable_compile_cache": BackendOption(check=_bool, help="VLLM_DISABLE_COMPILE_CACHE"),
    "distributed_executor_backend": BackendOption(
        check=_executor,
        help="vLLM's executor for several ranks: 'mp' (default, one machine) or 'ray' "
        "(a Ray cluster; GPUs only, vLLM's CPU platform has no Ray support)",
    ),
}
"""Every ``backend_options`` key the translation spells; any other key (but the runtime's)
is an error."""


def check_engine_options(spec: CompileSpec) -> dict[str, Any]:
    """The spec's backend options the translation spells, checked and normalised.

    Values are taken in the spec's JSON form (``CompileSpec.to_dict``: tables as dicts,
    lists as lists), which is what vLLM is given.
    """
    options: dict[str, Any] = spec.to_dict()["backend_options"]
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key in RUNTIME_OPTIONS:
            continue  # read by the runtime (runtime_options.py), not spelled for vLLM
        option = ENGINE_OPTIONS.get(key)
        if option is None:
            raise _unknown(key)
        checked[key] = option.check(key, value)
    return checked


def _unknown(key: str) -> SpecError:
    known = sorted([*ENGINE_OPTIONS, *RUNTIME_OPTIONS])
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return SpecError(
        f"backend_options.{key}: unknown option for the vLLM backend{hint} "
        f"Known options: {', '.join(known)}",
        field="backend_options",
    )
