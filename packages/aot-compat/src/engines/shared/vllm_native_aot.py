"""Old module path of the vLLM-native compiler (``engines.shared.vllm_native_aot``)."""

from __future__ import annotations

from aot_compat.facade import VLLMNativeAOTCompiler
from aot_compat.migration import Moved, Removed, getattr_migration

from engines.shared import create_vllm_native_compiler

_IMPORT_FROM_VLLM = "import it from vllm directly (aot-vllm builds vLLM's settings for you)"

__getattr__ = getattr_migration(
    __name__,
    {
        "VLLMNativeEnhancedModel": Moved(
            target="aot_compat:CompatCompiledModel",
            note="compile_model_aot returns it; do not construct it yourself",
        ),
        "VLLMNativeEnhancedCompiledModel": Moved(
            target="aot_compat:CompatCompiledModel",
            note="compile_model_aot returns it; do not construct it yourself",
        ),
        "create_enhanced_compiler_vllm": Moved(target="engines.shared:create_vllm_native_compiler"),
        "VLLM_AVAILABLE": Removed(
            replacement="call aot_core.list_backends() (or run `aot backends`) to see whether "
            "the vllm backend can run here, and why not"
        ),
        "LLM": Removed(replacement=_IMPORT_FROM_VLLM),
        "SamplingParams": Removed(
            replacement="generate() takes max_tokens=/temperature= keywords or an "
            "aot_core.GenerationParams"
        ),
        "CompilationConfig": Removed(replacement=_IMPORT_FROM_VLLM),
    },
)

__all__ = ["VLLMNativeAOTCompiler", "create_vllm_native_compiler"]
