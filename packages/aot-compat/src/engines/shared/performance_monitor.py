"""Old module path of the performance monitor (``engines.shared.performance_monitor``).

The monitor is gone: every compiled model carries measured ``aot_core.OptimizationStats``.
Old code imported both this module and the ``performance_monitor`` object from it (and
``from engines.shared import performance_monitor`` now finds this module), so every public
name read from it, the old object's methods included, raises an error that says so.
"""

from __future__ import annotations

from typing import Any

from aot_compat.migration import Removed, getattr_migration

_INSTEAD = Removed(
    replacement="stats now come from the compiler itself: compiler.get_optimization_stats() "
    "or compiled_model.stats (an aot_core.OptimizationStats); `aot bench` prints "
    "before/after tables"
)


class _EveryName(dict[str, Removed]):
    def get(self, key: str, default: Any = None) -> Any:
        return None if key.startswith("_") else _INSTEAD


__getattr__ = getattr_migration(__name__, _EveryName())

__all__: list[str] = []
