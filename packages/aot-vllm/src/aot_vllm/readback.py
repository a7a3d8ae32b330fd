"""Reading back what a running engine resolved, and saying where it differs from the spec.

vLLM adapts settings to the platform after accepting the arguments (the CPU backend
compiles with level 2 instead of piecewise level 3 and captures no CUDA graphs; old
releases on ARM/POWER turn chunked prefill off; a token budget is raised to
``max_model_len`` when chunked prefill is off). ``read_resolved_config`` reads the result
off any supported release's config objects, and ``resolution_notes`` states each
difference, so none is silent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from aot_core.spec import CompileSpec

from aot_vllm.releases import CompileLevel

__all__ = ["read_resolved_config", "resolution_notes"]

_SCHEDULER_READS = ("max_num_batched_tokens", "max_num_seqs", "long_prefill_token_threshold")


def read_resolved_config(llm: Any) -> dict[str, Any]:
    """What the running engine actually resolved: compile mode, CUDA graphs, scheduler.

    Works on a ``vllm.LLM`` (or anything with ``llm_engine.vllm_config``) from every
    supported release. Missing values are None, never guessed.
    """
    config = _vllm_config(llm)
    out = _compilation(getattr(config, "compilation_config", None))
    out.update(_scheduler(getattr(config, "scheduler_config", None)))
    mc = getattr(config, "model_config", None)
    out["max_model_len"] = getattr(mc, "max_model_len", None) if mc is not None else None
    out["enforce_eager"] = getattr(mc, "enforce_eager", None) if mc is not None else None
    # The dtype the weights run in (vLLM may downcast "auto"), as the spec spells it.
    dtype = getattr(mc, "dtype", None) if mc is not None else None
    out["dtype"] = None if dtype is None else str(dtype).removeprefix("torch.")
    return out


def _compilation(cc: Any) -> dict[str, Any]:
    def read(name: str) -> Any:
        return getattr(cc, name, None) if cc is not None else None

    mode_key = "mode" if _has_field(cc, "mode") else "level"
    mode, graph, sizes, compile_sizes = (
        read(mode_key),
        read("cudagraph_mode"),
        read("cudagraph_capture_sizes"),
        read("compile_sizes"),
    )
    return {
        "mode_key": mode_key,
        "mode": None if mode is None else int(mode),
        "mode_name": getattr(mode, "name", None) if mode is not None else None,
        "cudagraph_mode": None if graph is None else getattr(graph, "name", str(graph)),
        "cudagraph_capture_sizes": None if sizes is None else sorted(int(s) for s in sizes),
        "compile_sizes": None if compile_sizes is None else list(compile_sizes),
        "compile_backend": read("backend"),
    }


def _scheduler(sc: Any) -> dict[str, Any]:
    # <=0.11.0 keeps the resolved flag in chunked_prefill_enabled (enable_chunked_prefill
    # is the user's raw input there); later releases renamed it.
    chunked_attr = (
        "chunked_prefill_enabled"
        if _has_field(sc, "chunked_prefill_enabled")
        else "enable_chunked_prefill"
    )
    chunked = getattr(sc, chunked_attr, None) if sc is not None else None
    out: dict[str, Any] = {"enable_chunked_prefill": None if chunked is None else bool(chunked)}
    for name in _SCHEDULER_READS:
        out[name] = getattr(sc, name, None) if sc is not None else None
    return out


def resolution_notes(spec: CompileSpec, resolved: Mapping[str, Any]) -> tuple[str, ...]:
    """Where the engine resolved something other than what ``spec`` asked for, and why."""
    notes = _mode_notes(spec, resolved)
    graphs = resolved.get("cudagraph_mode")
    if spec.cuda_graphs and spec.compiles and graphs == "NONE":
        notes.append("CUDA graphs were asked for but vLLM captures none on this platform")
    sizes = resolved.get("cudagraph_capture_sizes")
    if (
        spec.cuda_graph_sizes
        and sizes is not None
        and graphs != "NONE"
        and sorted(sizes) != sorted(spec.cuda_graph_sizes)
    ):
        notes.append(
            f"vLLM captures CUDA graphs for sizes {sorted(sizes)}, not the requested "
            f"{list(spec.cuda_graph_sizes)}"
        )
    chunked = resolved.get("enable_chunked_prefill")
    if chunked is not None and chunked != spec.chunked_prefill:
        notes.append(
            f"chunked prefill is {'on' if chunked else 'off'} in the engine although the spec "
            f"asked for it {'on' if spec.chunked_prefill else 'off'}"
        )
    for name in ("max_num_batched_tokens", "max_num_seqs", "max_model_len"):
        want, got = getattr(spec, name), resolved.get(name)
        if want is not None and got is not None and want != got:
            notes.append(f"vLLM resolved {name}={got}, the spec asked for {want}")
    return tuple(notes)


def _mode_notes(spec: CompileSpec, resolved: Mapping[str, Any]) -> list[str]:
    mode = resolved.get("mode")
    if mode is None:
        return []
    if not spec.compiles and mode != CompileLevel.NONE:
        return [f"asked for no compilation but vLLM resolved compile mode {mode}"]
    if spec.compiles and mode == CompileLevel.NONE:
        return ["asked for compilation but vLLM resolved compile mode 0 (none)"]
    if spec.compiles and mode != CompileLevel.VLLM_COMPILE:
        name = resolved.get("mode_name") or mode
        return [
            f"vLLM compiles with mode {name} here, not its piecewise mode 3 (the CPU "
            "backend compiles the whole model with Inductor)"
        ]
    return []


def _vllm_config(llm: Any) -> Any:
    for path in (
        ("llm_engine", "vllm_config"),
        ("vllm_config",),
        ("llm_engine", "engine_core", "vllm_config"),
    ):
        obj = llm
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    getter = getattr(getattr(llm, "llm_engine", None), "get_vllm_config", None)
    if callable(getter):
        return getter()
    raise TypeError(f"cannot find a vllm_config on {type(llm).__name__}; pass a vllm.LLM instance")


def _has_field(obj: Any, name: str) -> bool:
    if obj is None:
        return False
    if dataclasses.is_dataclass(obj):
        return any(f.name == name for f in dataclasses.fields(obj))
    return name in getattr(obj, "__dict__", {})
