"""aot-vllm's vLLM general plugin: what vLLM needs in every engine process, off by default.

vLLM loads its ``vllm.general_plugins`` entry points in every process it starts (the caller,
the engine core, each tensor-parallel worker); nothing else reaches a worker process.
Installing aot-vllm must not change a plain vLLM run, so each part acts only while aot-vllm's
engine environment turns it on, decided from the release's facts:

- ``EngineVar.AOT_VLLM_AOT_LOAD_FIX``: registering wraps torch's loader, which vLLM has
  already imported; the wrapper passes the loaded function through untouched while the
  variable is unset.
- ``EngineVar.AOT_VLLM_WARMUP_TOKENS``: a warm CPU start runs vLLM's compile warm-up with
  that many dummy tokens instead of a whole step's budget (``install_warmup_tokens``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from aot_vllm.engine_env import EngineVar

_PATCHED = "_aot_vllm_aot_load_fix"
_WARMUP_PATCHED = "_aot_vllm_warmup_tokens"


def register() -> None:
    """vLLM's plugin hook: install the fix; it acts only while aot-vllm's engine env asks.

    vLLM calls this once per process, at its first engine, so the variable is read when a
    model is loaded, not here: a later aot engine in the same process still gets the fix,
    and an engine without the variable gets torch's loader's result untouched.
    """
    _install_aot_load_fix()
    if os.environ.get(EngineVar.AOT_VLLM_WARMUP_TOKENS):
        # Only then: the runner's module is heavy, and most processes vLLM starts (the
        # model-inspection one, a front end) never run a model.
        install_warmup_tokens()


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


def install_warmup_tokens() -> None:
    """Wrap the CPU model runner's compile warm-up so it runs ``AOT_VLLM_WARMUP_TOKENS``
    dummy tokens when the variable is set (a no-op while it is unset, or on a release whose
    runner lacks the method or the budget attribute).

    vLLM's CPU warm-up (``warming_up_model``) is ``profile_run``: one dummy step of the
    whole token budget (``max_num_tokens``, 4096 by default) and a sampler run with top-k
    and top-p over ``max_num_seqs`` rows of the vocabulary. It exists to trigger the
    compile (or the load of compiled code) and to measure memory for the KV cache. With the
    KV-cache size given (aot-vllm sizes it on CPU) nothing reads that memory, and loading
    compiled code needs only one step of any size the graph's dynamic token dimension
    takes, so a warm start runs a small step: the same load, without a forward pass over
    thousands of dummy tokens. The budget is lowered for the warm-up alone and restored.
    """
    try:
        from vllm.v1.worker import cpu_model_runner
    except Exception:  # another layout, or no CPU runner: vLLM's warm-up stays as it is
        return
    runner = getattr(cpu_model_runner, "CPUModelRunner", None)
    warm_up = getattr(runner, "warming_up_model", None)
    if runner is None or warm_up is None or getattr(warm_up, _WARMUP_PATCHED, False):
        return

    def warming_up_model(self: Any) -> Any:
        tokens = _warmup_tokens()
        budget = getattr(self, "max_num_tokens", None)
        if tokens is None or not isinstance(budget, int) or tokens >= budget:
            return warm_up(self)
        self.max_num_tokens = tokens
        try:
            return warm_up(self)
        finally:
            self.max_num_tokens = budget

    setattr(warming_up_model, _WARMUP_PATCHED, True)
    runner.warming_up_model = warming_up_model


def _warmup_tokens() -> int | None:
    """``AOT_VLLM_WARMUP_TOKENS`` as a positive count, else None (vLLM's own warm-up)."""
    try:
        tokens = int(os.environ.get(EngineVar.AOT_VLLM_WARMUP_TOKENS, ""))
    except ValueError:
        return None
    return tokens if tokens > 0 else None
