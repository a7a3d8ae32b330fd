"""Old module path of the chunked-prefill helper (``engines.shared.vllm_chunked_prefill``).

The old names (``VLLMChunkedPrefillConfig``, ``VLLMChunkedPrefillOptimizer``,
``create_vllm_enhanced_compiler``) work without aot-vllm; the planner itself
(``plan_chunked_prefill`` and its types) comes from aot-vllm and loads on first use.
"""

from __future__ import annotations

from aot_compat.chunked_prefill import (
    VLLMChunkedPrefillConfig,
    VLLMChunkedPrefillOptimizer,
    create_vllm_enhanced_compiler,
)
from aot_compat.migration import Moved, Removed, dir_with, getattr_migration

_LAZY = {
    "ChunkedPrefillSettings": "aot_vllm.chunked_prefill:ChunkedPrefillSettings",
    "PrefillPlan": "aot_vllm.chunked_prefill:PrefillPlan",
    "Workload": "aot_vllm.chunked_prefill:Workload",
    "chunked_prefill_settings": "aot_vllm.chunked_prefill:chunked_prefill_settings",
    "plan_chunked_prefill": "aot_vllm.chunked_prefill:plan_chunked_prefill",
}

__getattr__ = getattr_migration(
    __name__,
    {
        "EnhancedAOTWithVLLMChunking": Moved(
            target="aot_compat:CompatCompiler",
            note="create it with create_vllm_enhanced_compiler(...)",
        ),
        "VLLMChunkedModelWrapper": Removed(
            replacement="compiled models record the chunked-prefill settings vLLM resolved in "
            "compiled_model.stats.resolved_config; no wrapper is needed"
        ),
    },
    lazy=_LAZY,
    requires=dict.fromkeys(_LAZY, "aot-vllm"),
)

__all__ = [
    "VLLMChunkedPrefillConfig",
    "VLLMChunkedPrefillOptimizer",
    "create_vllm_enhanced_compiler",
]
__dir__ = dir_with(globals(), *_LAZY)
