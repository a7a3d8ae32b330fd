"""Old module path of the Enhanced AOT compiler (``engines.shared.enhanced_aot_compiler``)."""

from __future__ import annotations

from aot_compat.facade import EnhancedAOTCompiler
from aot_compat.migration import Moved, getattr_migration

__getattr__ = getattr_migration(
    __name__,
    {
        "EnhancedAOTModelCompiler": Moved(target="engines.shared:EnhancedAOTCompiler"),
        "EnhancedCompiledModel": Moved(
            target="aot_compat:CompatCompiledModel",
            note="compile_model_aot returns it; do not construct it yourself",
        ),
    },
)

__all__ = ["EnhancedAOTCompiler"]
