"""aot-compat: the old ``engines.shared`` compiler API on whichever aot backend is installed.

Old code keeps importing ``engines.shared``; this package holds the machinery behind it:
backend choice (``choose_backend``), the old dict configuration mapped to a ``CompileSpec``
(``translate``), and the old compiler and compiled-model objects (``CompatCompiler``).
"""

from aot_compat.errors import (
    BackendFallbackWarning,
    LegacyConfigError,
    LegacyConfigWarning,
    UnknownConfigKeyWarning,
)
from aot_compat.facade import (
    CompatCompiledModel,
    CompatCompiler,
    EnhancedAOTCompiler,
    IntegratedAOTCompiler,
    LegacyGeneration,
    LegacyStats,
    VLLMNativeAOTCompiler,
    compiler_class_for,
)
from aot_compat.legacy_config import LegacyTranslation, translate
from aot_compat.selection import BackendChoice, choose_backend, install_hint

__version__ = "0.1.0"

__all__ = [
    "BackendChoice",
    "BackendFallbackWarning",
    "CompatCompiledModel",
    "CompatCompiler",
    "EnhancedAOTCompiler",
    "IntegratedAOTCompiler",
    "LegacyConfigError",
    "LegacyConfigWarning",
    "LegacyGeneration",
    "LegacyStats",
    "LegacyTranslation",
    "UnknownConfigKeyWarning",
    "VLLMNativeAOTCompiler",
    "choose_backend",
    "compiler_class_for",
    "install_hint",
    "translate",
]
