"""Old module path of the integrated compiler (``engines.shared.integrated_aot_compiler``)."""

from __future__ import annotations

from aot_compat.facade import IntegratedAOTCompiler
from aot_compat.migration import Moved, getattr_migration

__getattr__ = getattr_migration(
    __name__,
    {
        "create_integrated_compiler": Moved(
            target="engines.shared:IntegratedAOTCompiler",
            note="call the class with the same keywords",
        ),
    },
)

__all__ = ["IntegratedAOTCompiler"]
