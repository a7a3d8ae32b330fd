"""aot-vllm: compile LLM inference ahead of time with vLLM's native machinery.

``VllmBackend`` (registered as the ``vllm`` aot backend) starts a real
``vllm.LLM`` from a ``CompileSpec``: torch.compile, CUDA graphs where there is a GPU, a
verified per-spec compile cache so later processes start warm, chunked prefill, and
measured ``OptimizationStats``. Importing this package does not import vLLM or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "VllmBackend": "aot_vllm.backend",
    "AOTVLLMWarning": "aot_vllm.backend",
    "VLLMCompiledModel": "aot_vllm.compiled_model",
    "CacheWarning": "aot_vllm.cache",
    "ChunkedPrefillSettings": "aot_vllm.chunked_prefill",
    "Workload": "aot_vllm.chunked_prefill",
    "PrefillPlan": "aot_vllm.chunked_prefill",
    "chunked_prefill_settings": "aot_vllm.chunked_prefill",
    "plan_chunked_prefill": "aot_vllm.chunked_prefill",
}

if TYPE_CHECKING:
    from aot_vllm.backend import AOTVLLMWarning, VllmBackend
    from aot_vllm.cache import CacheWarning
    from aot_vllm.chunked_prefill import (
        ChunkedPrefillSettings,
        PrefillPlan,
        Workload,
        chunked_prefill_settings,
        plan_chunked_prefill,
    )
    from aot_vllm.compiled_model import VLLMCompiledModel


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aot_vllm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AOTVLLMWarning",
    "CacheWarning",
    "ChunkedPrefillSettings",
    "PrefillPlan",
    "VLLMCompiledModel",
    "VllmBackend",
    "Workload",
    "chunked_prefill_settings",
    "plan_chunked_prefill",
]
