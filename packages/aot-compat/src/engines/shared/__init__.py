"""The old ``engines.shared`` API, unchanged for old callers.

``create_enhanced_compiler(enable_cuda_graphs=True)`` returns a compiler whose
``compile_model_aot(model, inputs, config)`` and ``get_optimization_stats()`` behave as
before, running on the best installed aot backend: vLLM's native compilation
(``aot-vllm``) by default, the Enhanced AOT path on plain PyTorch (``aot-legacy``) where
vLLM cannot run (with a warning that says why), or whatever ``$AOT_BACKEND`` names.

Importing this package is cheap: the compiler classes and helpers are loaded on first use,
so it works with only some backends installed. New code should use ``aot_core`` directly::

    from aot_core import CompileSpec, create_compiler
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aot_compat.migration import Moved, Removed, dir_with, getattr_migration

if TYPE_CHECKING:
    from aot_compat.facade import (
        CompatCompiler,
        EnhancedAOTCompiler,
        IntegratedAOTCompiler,
        VLLMNativeAOTCompiler,
    )


def create_enhanced_compiler(
    enable_cuda_graphs: bool = True,
    use_vllm_native: bool = True,
    **options: Any,
) -> CompatCompiler:
    """Create the old "enhanced" compiler on the best backend installed here.

    ``use_vllm_native=True`` (the default) runs on vLLM when aot-vllm is installed and vLLM
    can run here, and otherwise falls back to the legacy backend with a
    ``BackendFallbackWarning`` saying why; ``use_vllm_native=False`` prefers legacy.
    ``$AOT_BACKEND`` overrides both. ``options`` are the old keywords (``batch_sizes``,
    ``cache_dir``, ``compilation_level``, ``enable_chunked_prefill``, ``base_compiler``,
    ...) or ``CompileSpec`` fields; ``spec=`` takes a ``CompileSpec``. A key no backend
    understands warns and is ignored; ``strict=True`` (or ``$AOT_COMPAT_STRICT=1``) makes it
    an error. Raises an ``ImportError`` that says what to pip install when no backend can
    run.
    """
    from aot_compat.facade import compiler_class_for
    from aot_compat.policy import preference
    from aot_compat.selection import choose_backend

    _check_flag("enable_cuda_graphs", enable_cuda_graphs)
    _check_flag("use_vllm_native", use_vllm_native)
    choice = choose_backend(preference(use_vllm_native), stacklevel=3)
    cls = compiler_class_for(choice.name)
    return cls(enable_cuda_graphs=enable_cuda_graphs, choice=choice, **options)


def create_vllm_native_compiler(
    enable_cuda_graphs: bool = True, **options: Any
) -> VLLMNativeAOTCompiler:
    """Create the old vLLM-native compiler; always the vllm backend.

    Raises an ``ImportError`` saying why when vLLM cannot run here (it never falls back:
    ``create_enhanced_compiler`` is the call that chooses).
    """
    from aot_compat.facade import VLLMNativeAOTCompiler

    _check_flag("enable_cuda_graphs", enable_cuda_graphs)
    return VLLMNativeAOTCompiler(enable_cuda_graphs=enable_cuda_graphs, **options)


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f"{name} must be True or False, got {type(value).__name__}. Old code that passed "
            "a base compiler as the first positional argument should pass base_compiler=... "
            "(it is no longer used)"
        )


_STATS_INSTEAD = (
    "stats now come from the compiler itself: compiler.get_optimization_stats() or "
    "compiled_model.stats (an aot_core.OptimizationStats); `aot bench` prints before/after "
    "tables"
)
_BACKENDS_INSTEAD = (
    "to see which backends are installed and usable, call aot_core.list_backends() "
    "(or run `aot backends`)"
)

_LAZY = {
    "VLLMNativeAOTCompiler": "aot_compat.facade:VLLMNativeAOTCompiler",
    "EnhancedAOTCompiler": "aot_compat.facade:EnhancedAOTCompiler",
    "IntegratedAOTCompiler": "aot_compat.facade:IntegratedAOTCompiler",
    "CompatCompiledModel": "aot_compat.facade:CompatCompiledModel",
    "CUDAGraphOptimizer": "engines.shared.cuda_graph_optimizer:CUDAGraphOptimizer",
    "plan_chunked_prefill": "engines.shared.vllm_chunked_prefill:plan_chunked_prefill",
    "VLLMChunkedPrefillConfig": "engines.shared.vllm_chunked_prefill:VLLMChunkedPrefillConfig",
    "create_vllm_enhanced_compiler": (
        "engines.shared.vllm_chunked_prefill:create_vllm_enhanced_compiler"
    ),
    "VLLMChunkedPrefillOptimizer": (
        "engines.shared.vllm_chunked_prefill:VLLMChunkedPrefillOptimizer"
    ),
}

_MIGRATIONS: dict[str, Moved | Removed] = {
    "EnhancedAOTModelCompiler": Moved(target="engines.shared:EnhancedAOTCompiler"),
    "CudaGraphOptimizer": Moved(target="engines.shared:CUDAGraphOptimizer"),
    "EnhancedCompiledModel": Moved(
        target="aot_compat:CompatCompiledModel",
        note="compile_model_aot returns it; do not construct it yourself",
    ),
    "create_integrated_compiler": Moved(
        target="engines.shared:IntegratedAOTCompiler", note="call the class with the same keywords"
    ),
    "create_enhanced_compiler_vllm": Moved(target="engines.shared:create_vllm_native_compiler"),
    "CudaGraphConfig": Removed(
        replacement="pass enable_cuda_graphs=... and batch_sizes=[...] to "
        "create_enhanced_compiler (cuda_graphs and cuda_graph_sizes in aot_core.CompileSpec)"
    ),
    "LEGACY_AVAILABLE": Removed(replacement=_BACKENDS_INSTEAD),
    "SimplePerformanceMonitor": Removed(replacement=_STATS_INSTEAD),
    "monitor_inference": Removed(replacement=_STATS_INSTEAD),
    "monitor_compilation": Removed(replacement=_STATS_INSTEAD),
    "monitor_evaluation": Removed(replacement=_STATS_INSTEAD),
    "get_optimization_summary": Removed(replacement=_STATS_INSTEAD),
}

__getattr__ = getattr_migration(
    __name__,
    _MIGRATIONS,
    lazy=_LAZY,
    requires={
        "CUDAGraphOptimizer": "aot-legacy",
        "plan_chunked_prefill": "aot-vllm",
    },
)

# Only names that import with no backend installed, so `from engines.shared import *` works
# anywhere; the backend-provided ones are listed by dir() and load on first use.
__all__ = [
    "CompatCompiledModel",
    "EnhancedAOTCompiler",
    "IntegratedAOTCompiler",
    "VLLMChunkedPrefillConfig",
    "VLLMChunkedPrefillOptimizer",
    "VLLMNativeAOTCompiler",
    "create_enhanced_compiler",
    "create_vllm_enhanced_compiler",
    "create_vllm_native_compiler",
]

__dir__ = dir_with(globals(), *_LAZY)
