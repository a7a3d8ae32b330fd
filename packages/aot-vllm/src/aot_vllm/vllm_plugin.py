"""aot-vllm's vLLM general plugin: a fix vLLM needs in every engine process, off by default.

vLLM loads its ``vllm.general_plugins`` entry points in every process it starts (the caller,
the engine core, each tensor-parallel worker); nothing else reaches a worker process.
Installing aot-vllm must not change a plain vLLM run, so the fix acts only while aot-vllm's
engine environment turns it on (``EngineVar.AOT_VLLM_AOT_LOAD_FIX``, decided from the
release's facts). Registering wraps torch's loader, which vLLM has already imported; the
wrapper passes the loaded function through untouched while the variable is unset.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from aot_vllm.engine_env import EngineVar

_PATCHED = "_aot_vllm_aot_load_fix"


def register() -> None:
    """vLLM's plugin hook: install the fix; it acts only while aot-vllm's engine env asks.

    vLLM calls this once per process, at its first engine, so the variable is read when a
    model is loaded, not here: a later aot engine in the same process still gets the fix,
    and an engine without the variable gets torch's loader's result untouched.
    """
    _install_aot_load_fix()


def _install_aot_load_fix() -> None:
    import torch.compiler

    load = torch.compiler.load_compiled_function
    if getattr(load, _PATCHED, False):
        return

    def load_compiled_function(*args: Any, **kwargs: Any) -> Any:
        loaded = load(*args, **kwargs)
        if os.environ.get(EngineVar.AOT_VLLM_AOT_LOAD_FIX) == "1":
            _let_aot_artifact_load(loaded)
        return loaded

    setattr(load_compiled_function, _PATCHED, True)
    torch.compiler.load_compiled_function = load_compiled_function


def _let_aot_artifact_load(loaded: Any) -> None:
    """Let vLLM reload the AOT artifact it wrote when its compile backend is Inductor itself.

    vLLM 0.18+ finishes an AOT load with ``compiled_fn.finalize_loading(config)``, a method
    only its own piecewise backend's functions have. On CPU vLLM compiles with Inductor
    directly, torch hands back an Inductor function, and every reload fails with "'function'
    object has no attribute 'finalize_loading'", after which vLLM traces and compiles again.
    An Inductor function is whole once torch has deserialized it, so its finalize step is
    nothing; functions that have the method are left as they are.
    """
    compiled = getattr(getattr(loaded, "_artifacts", None), "compiled_fn", None)
    if compiled is not None and not hasattr(compiled, "finalize_loading"):
        # An object that takes no attributes is left alone: vLLM then reports the failed
        # load and compiles again, as it would without this plugin.
        with contextlib.suppress(AttributeError, TypeError):
            compiled.finalize_loading = _nothing_to_finalize


def _nothing_to_finalize(_vllm_config: Any) -> None:
    """The finalize step of a function torch has already loaded whole."""
