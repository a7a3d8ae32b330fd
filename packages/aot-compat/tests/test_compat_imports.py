"""Old import paths keep working, stay cheap, and explain moved or removed names."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

OLD_MODULES = [
    "engines.shared",
    "engines.shared.vllm_native_aot",
    "engines.shared.vllm_chunked_prefill",
    "engines.shared.enhanced_aot_compiler",
    "engines.shared.cuda_graph_optimizer",
    "engines.shared.integrated_aot_compiler",
    "engines.shared.performance_monitor",
]


def test_import_is_cheap_and_loads_no_engine() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import engines.shared; "
        "from engines.shared import *; "
        "import engines.shared.vllm_native_aot, engines.shared.vllm_chunked_prefill; "
        "import engines.shared.cuda_graph_optimizer, engines.shared.enhanced_aot_compiler; "
        "dt = time.perf_counter() - t; "
        "heavy = sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules); "
        "print(heavy, dt)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "[]", f"importing engines.shared loaded {out}"
    assert float(out[1]) < 2.0


@pytest.mark.parametrize("module", OLD_MODULES)
def test_old_module_paths_import_with_any_backend_set(module: str) -> None:
    importlib.import_module(module)


def test_star_import_works_with_any_backend_set() -> None:
    namespace: dict[str, object] = {}
    exec("from engines.shared import *", namespace)
    assert "create_enhanced_compiler" in namespace
    assert "VLLMNativeAOTCompiler" in namespace


def test_compiler_classes_are_exposed_lazily() -> None:
    from engines import shared

    assert {
        "VLLMNativeAOTCompiler",
        "EnhancedAOTCompiler",
        "IntegratedAOTCompiler",
        "CUDAGraphOptimizer",
    } <= set(dir(shared))
    assert shared.VLLMNativeAOTCompiler.__name__ == "VLLMNativeAOTCompiler"
    assert shared.EnhancedAOTCompiler.backend_name == "legacy"


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("engines.shared", "EnhancedAOTModelCompiler", "EnhancedAOTCompiler"),
        ("engines.shared", "create_enhanced_compiler_vllm", "create_vllm_native_compiler"),
        ("engines.shared", "create_integrated_compiler", "IntegratedAOTCompiler"),
        ("engines.shared", "EnhancedCompiledModel", "CompatCompiledModel"),
        ("engines.shared.vllm_native_aot", "VLLMNativeEnhancedModel", "CompatCompiledModel"),
        ("engines.shared.enhanced_aot_compiler", "EnhancedAOTModelCompiler", "EnhancedAOTCompiler"),
    ],
)
def test_moved_names_warn_and_still_work(module: str, old: str, new: str) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{old}.*use `from \S+ import {new}`"):
        value = getattr(mod, old)
    assert value.__name__ == new


@pytest.mark.parametrize(
    ("module", "name", "hint"),
    [
        ("engines.shared.performance_monitor", "get_summary", "get_optimization_stats"),
        ("engines.shared", "CudaGraphConfig", "batch_sizes"),
        ("engines.shared", "LEGACY_AVAILABLE", "list_backends"),
        ("engines.shared.performance_monitor", "monitor_inference", "OptimizationStats"),
        ("engines.shared.vllm_native_aot", "VLLM_AVAILABLE", "list_backends"),
    ],
)
def test_removed_names_explain_on_attribute_access(module: str, name: str, hint: str) -> None:
    mod = importlib.import_module(module)
    with pytest.raises(AttributeError, match=hint):
        getattr(mod, name)
    assert not hasattr(mod, name)


def test_removed_names_explain_on_from_import() -> None:
    with pytest.raises(ImportError, match="was removed; stats now come from the compiler"):
        exec("from engines.shared import monitor_inference", {})
    with pytest.raises(ImportError, match="was removed; stats now come from the compiler"):
        exec("from engines.shared.performance_monitor import performance_monitor", {})
    with pytest.raises(ImportError, match=r"CudaGraphConfig.*batch_sizes"):
        exec("from engines.shared.cuda_graph_optimizer import CudaGraphConfig", {})


def test_unknown_name_is_a_plain_attribute_error() -> None:
    from engines import shared

    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        shared.nonexistent  # noqa: B018


def test_create_functions_reject_an_old_positional_base_compiler() -> None:
    from engines.shared import create_enhanced_compiler

    with warnings.catch_warnings(), pytest.raises(TypeError, match="base_compiler="):
        create_enhanced_compiler(object())  # type: ignore[arg-type]
