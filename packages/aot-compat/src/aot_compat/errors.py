"""Warnings and errors of the compatibility layer."""

from __future__ import annotations

from aot_core.errors import SpecError


class BackendFallbackWarning(UserWarning):
    """The preferred backend cannot run here, so another one was chosen; the message says why."""


class LegacyConfigWarning(UserWarning):
    """An old configuration key has no effect any more; the message names it and says why."""


class UnknownConfigKeyWarning(LegacyConfigWarning):
    """An old configuration key no backend understands was ignored; the message names it and
    suggests the closest known key. ``strict=True`` (or ``AOT_COMPAT_STRICT=1``) makes it a
    ``LegacyConfigError``."""


class LegacyConfigError(SpecError):
    """An old configuration value that no backend understands (or, under ``strict``, an
    unknown key); it names the key."""
