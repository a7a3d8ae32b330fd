"""Where keys of the old ``engines.shared`` configuration go in this backend's options.

The one table of old keys for aot-vllm (as pydantic keeps its renames in
``_migration.py``): each key a vLLM-era config dict could hold that is a vLLM setting
rather than a ``CompileSpec`` field, and its place in ``backend_options`` now. aot-compat
reads it through ``VLLMOptions.migrate``; nothing outside this package lists these keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from aot_core.options import OptionPath

MIGRATIONS: Mapping[str, OptionPath] = MappingProxyType(
    {
        # backend_options keys of their own
        "gpu_memory_utilization": ("gpu_memory_utilization",),
        "kv_cache_memory_bytes": ("kv_cache_memory_bytes",),
        "optimization_level": ("optimization_level",),
        "cudagraph_mode": ("cudagraph_mode",),
        "max_cudagraph_capture_size": ("max_cudagraph_capture_size",),
        # raw vllm.LLM keywords, checked against the installed release
        "disable_custom_all_reduce": ("engine_args", "disable_custom_all_reduce"),
        "trust_remote_code": ("engine_args", "trust_remote_code"),
        "seed": ("engine_args", "seed"),
        "swap_space": ("engine_args", "swap_space"),
        "block_size": ("engine_args", "block_size"),
        "enable_prefix_caching": ("engine_args", "enable_prefix_caching"),
        "kv_cache_dtype": ("engine_args", "kv_cache_dtype"),
        # raw CompilationConfig fields, checked against the installed release
        "cudagraph_num_of_warmups": ("compilation_config", "cudagraph_num_of_warmups"),
    }
)
"""Old config key -> its place in ``backend_options``."""
