"""aot-legacy: the Enhanced AOT path on plain PyTorch.

torch.compile with persistent keyed caches, AOTInductor packages, CUDA graphs per batch
bucket, and a generate loop over a static KV cache, behind the aot-core interfaces.
Importing this package does not import torch; the torch-level classes load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aot_legacy.backend import LegacyBackend

if TYPE_CHECKING:
    from aot_legacy.compiled_model import LegacyCompiledModel
    from aot_legacy.cuda_graphs import CUDAGraphOptimizer
    from aot_legacy.decoder import KVLayout, StaticKVDecoder, TinyDecoder
    from aot_legacy.step_compiler import StepCompiler

__version__ = "0.1.0"

_LAZY = {
    "CUDAGraphOptimizer": "aot_legacy.cuda_graphs",
    "KVLayout": "aot_legacy.decoder",
    "LegacyCompiledModel": "aot_legacy.compiled_model",
    "StaticKVDecoder": "aot_legacy.decoder",
    "StepCompiler": "aot_legacy.step_compiler",
    "TinyDecoder": "aot_legacy.decoder",
}

__all__ = [
    "CUDAGraphOptimizer",
    "KVLayout",
    "LegacyBackend",
    "LegacyCompiledModel",
    "StaticKVDecoder",
    "StepCompiler",
    "TinyDecoder",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aot_legacy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
