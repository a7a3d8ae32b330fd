"""The old API's policy: which backend each old name and flag meant.

``engines.shared`` was written when there were two ways to compile: vLLM's native
compilation (``use_vllm_native=True``, ``VLLMNativeAOTCompiler``) and the Enhanced AOT
path on plain PyTorch (``use_vllm_native=False``, ``EnhancedAOTCompiler``,
``IntegratedAOTCompiler``). This module is the one place aot-compat names backends, and it
only says what the old names meant. What a backend is, whether it can run here, its
settings and where old keys go, come from the backend itself through aot-core's registry,
which also does the choosing (``aot_core.registry.choose``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

VLLM = "vllm"
"""The backend old code meant by "vLLM native" (``use_vllm_native=True``)."""

LEGACY = "legacy"
"""The backend old code meant by "Enhanced AOT" (``use_vllm_native=False``)."""

OLD_COMPILATION_SYSTEMS: Mapping[str, str] = MappingProxyType(
    {VLLM: "vLLM Native", LEGACY: "Enhanced AOT (legacy)"}
)
"""The old stats' ``compilation_system`` labels; any other backend reports its
``Compiler.description``."""


def preference(use_vllm_native: bool) -> str:
    """The backend the old ``use_vllm_native`` flag asks for first (the others follow by
    priority, with a ``BackendFallbackWarning``)."""
    return VLLM if use_vllm_native else LEGACY
