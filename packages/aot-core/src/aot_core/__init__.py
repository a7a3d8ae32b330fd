"""aot-core: the interfaces, spec, stats and backend registry of the aot toolkit.

Importing this package never imports torch or vLLM; backends do that lazily.
"""

from aot_core.compiler import (
    Availability,
    CompiledModel,
    Compiler,
    Generation,
    GenerationParams,
    Prompt,
)
from aot_core.errors import (
    AOTError,
    ArtifactCorruptError,
    ArtifactError,
    ArtifactIncompatibleError,
    BackendUnavailableError,
    CompilationError,
    NoBackendInstalledError,
    NoUsableBackendError,
    SpecError,
)
from aot_core.options import BackendOptions
from aot_core.registry import (
    BackendInfo,
    Choice,
    choose,
    create_compiler,
    get_backend,
    list_backends,
)
from aot_core.scoring import Score, ScoreRequest
from aot_core.spec import CompileSpec
from aot_core.stats import CacheOutcome, Comparison, OptimizationStats, RankStats, compare

__version__ = "0.1.0"

__all__ = [
    "AOTError",
    "ArtifactCorruptError",
    "ArtifactError",
    "ArtifactIncompatibleError",
    "Availability",
    "BackendInfo",
    "BackendOptions",
    "BackendUnavailableError",
    "CacheOutcome",
    "Choice",
    "Comparison",
    "CompilationError",
    "CompileSpec",
    "CompiledModel",
    "Compiler",
    "Generation",
    "GenerationParams",
    "NoBackendInstalledError",
    "NoUsableBackendError",
    "OptimizationStats",
    "Prompt",
    "RankStats",
    "Score",
    "ScoreRequest",
    "SpecError",
    "choose",
    "compare",
    "create_compiler",
    "get_backend",
    "list_backends",
]
