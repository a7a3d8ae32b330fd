"""Where keys of the old ``engines.shared`` configuration go in this backend's options.

The one table of old keys for aot-legacy (as pydantic keeps its renames in
``_migration.py``): keys the old Enhanced AOT configuration took that are settings of
this backend rather than ``CompileSpec`` fields. aot-compat reads it through
``LegacyOptions.migrate``; nothing outside this package lists these keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from aot_core.options import OptionPath

MIGRATIONS: Mapping[str, OptionPath] = MappingProxyType(
    {
        "device": ("device",),
        "threads": ("threads",),
        "batch_buckets": ("batch_buckets",),
    }
)
"""Old config key -> its place in ``backend_options``."""
