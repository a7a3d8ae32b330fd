"""``EnvPatch``: the one way aot's backends set environment variables for an engine.

Engines read their cache paths and switches from the environment (Inductor's
``TORCHINDUCTOR_CACHE_DIR``, vLLM's ``VLLM_*``), so a backend sets them around a start
and must put back exactly what was there before, also when the start fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


class EnvPatch:
    """Sets environment variables and puts the old values back on ``restore``."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def apply(self, values: Mapping[str, str]) -> None:
        """Set ``values``, remembering what was there first."""
        for key, value in values.items():
            if key not in self._saved:
                self._saved[key] = os.environ.get(key)
            os.environ[key] = str(value)

    def restore(self) -> None:
        """Undo every ``apply``."""
        for key, old in self._saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._saved.clear()


@contextlib.contextmanager
def patched_env(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` set for the duration of the block, the old environment back after it."""
    patch = EnvPatch()
    patch.apply(values)
    try:
        yield
    finally:
        patch.restore()
