"""Entry point of the ``legacy`` backend in the ``aot.backends`` group (imports no torch)."""

from aot_legacy.integrated import IntegratedAOTCompiler

LegacyAOTCompiler = IntegratedAOTCompiler
"""The registered backend class (the integrated compiler under its registry-facing name)."""

__all__ = ["IntegratedAOTCompiler", "LegacyAOTCompiler"]
