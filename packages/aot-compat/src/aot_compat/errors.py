"""Warnings and errors of the compatibility layer."""

from __future__ import annotations

from aot_core.errors import SpecError


class BackendFallbackWarning(UserWarning):
    """The preferred backend cannot run here, so another one was chosen; the message says why."""


class LegacyConfigWarning(UserWarning):
    """An old configuration key has no effect any more; the message names it and says why."""


class LegacyConfigError(SpecError):
    """An old configuration key or value that no backend understands; it names the key."""
