"""Module ``__getattr__`` hooks for names that moved or were removed.

The pattern follows pydantic's ``getattr_migration``: a module keeps a table of old names;
reading a moved name warns with ``DeprecationWarning`` and returns the object from its new
home, reading a removed name raises an error that names the replacement.

A removed name raises ``RemovedNameError`` (an ``AttributeError``, so ``hasattr`` keeps
working). ``from module import name`` would turn any ``AttributeError`` into a generic
"cannot import name" and lose the explanation, so for that statement the hook raises
``RemovedNameImportError`` (an ``ImportError``) carrying the same message instead.
"""

from __future__ import annotations

import dis
import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_IMPORT_FROM = dis.opmap.get("IMPORT_FROM", -1)


class RemovedNameError(AttributeError):
    """An old name was removed; the message says what to use instead."""


class RemovedNameImportError(ImportError):
    """``from module import name`` of a removed name; the message says what to use instead."""


@dataclass(frozen=True, kw_only=True)
class Moved:
    """An old name that still works from its new home, with a DeprecationWarning."""

    target: str
    """Where it lives now, as "module:attribute"."""

    note: str = ""
    """What else changed, appended to the warning."""


@dataclass(frozen=True, kw_only=True)
class Removed:
    """An old name that no longer exists; reading it raises an error naming the replacement."""

    replacement: str
    """What to use instead, as an import line or a sentence."""


def _importing_from(depth: int) -> bool:
    """Whether the frame ``depth`` levels up is executing ``from module import name``."""
    try:
        frame = sys._getframe(depth + 1)
        return frame.f_code.co_code[frame.f_lasti] == _IMPORT_FROM
    except Exception:  # frame layout differs on other interpreters; fall back to AttributeError
        return False


class MissingDependencyError(AttributeError):
    """A name needs a package that is not installed; the message says what to pip install."""


class MissingDependencyImportError(ImportError):
    """``from module import name`` of a name whose package is not installed."""


def _raise(message: str, name: str, module: str, *, removed: bool) -> None:
    importing = _importing_from(2)
    if removed:
        if importing:
            raise RemovedNameImportError(message, name=name)
        raise RemovedNameError(message, name=name, obj=sys.modules.get(module))
    if importing:
        raise MissingDependencyImportError(message, name=name)
    raise MissingDependencyError(message, name=name, obj=sys.modules.get(module))


def _from_handle_fromlist(depth: int) -> bool:
    """Whether importlib's ``_handle_fromlist`` is probing the name with ``hasattr``; the
    ``IMPORT_FROM`` that follows reads it again, so warning here would warn twice."""
    try:
        return sys._getframe(depth + 1).f_code.co_name == "_handle_fromlist"
    except Exception:
        return False


def resolve(target: str) -> Any:
    """Import "module:attribute" (the attribute may be dotted)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def getattr_migration(
    module: str,
    table: Mapping[str, Moved | Removed],
    *,
    lazy: Mapping[str, str] | None = None,
    requires: Mapping[str, str] | None = None,
) -> Callable[[str], Any]:
    """Build a module-level ``__getattr__`` for ``module``.

    ``lazy`` maps current names to "module:attribute" targets imported on first use (no
    warning): this keeps importing the package cheap and lets it work with only some
    backends installed. ``requires`` maps a lazy name to the distribution that provides it,
    named in the error when its import fails.
    """
    lazy = dict(lazy or {})
    requires = dict(requires or {})

    def __getattr__(name: str) -> Any:
        if name in lazy:
            try:
                value = resolve(lazy[name])
            except (ImportError, AttributeError) as exc:
                dist = requires.get(name)
                if dist is None:
                    raise
                _raise(
                    f"`{module}.{name}` comes from {dist}, which is not installed or failed to "
                    f"import ({type(exc).__name__}: {exc}); pip install {dist}",
                    name,
                    module,
                    removed=False,
                )
            setattr(sys.modules[module], name, value)  # later reads skip this hook
            return value
        entry = table.get(name)
        if isinstance(entry, Moved):
            new_module, _, new_attr = entry.target.partition(":")
            message = (
                f"`{module}.{name}` is deprecated; use `from {new_module} import {new_attr}`"
                + (f" ({entry.note})" if entry.note else "")
            )
            if not _from_handle_fromlist(1):
                warnings.warn(message, DeprecationWarning, stacklevel=2)
            return resolve(entry.target)
        if isinstance(entry, Removed):
            message = f"`{module}.{name}` was removed; {entry.replacement}"
            _raise(message, name, module, removed=True)
        raise AttributeError(f"module {module!r} has no attribute {name!r}", name=name)

    return __getattr__


def dir_with(module_globals: Mapping[str, Any], *names: str) -> Callable[[], list[str]]:
    """Build a module ``__dir__`` that lists lazily exported names too."""

    def __dir__() -> list[str]:
        return sorted(set(module_globals) | set(names))

    return __dir__
