"""``BackendOptions``: the class each backend validates its ``backend_options`` with.

A backend owns its settings: which ``backend_options`` keys it accepts, what their values
may be, and where a key of the old ``engines.shared`` configuration goes now. aot-core and
aot-compat never list a backend's keys; they ask its options class
(``Compiler.options_class``). The old-key table (``migrations``) lives in one module per
backend package, as pydantic keeps its renames in ``_migration.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, Self

from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

OptionPath = tuple[str, ...]
"""Where a setting lives in ``backend_options``: ``("seed",)`` at the top level,
``("engine_args", "seed")`` inside the ``engine_args`` table."""


class BackendOptions:
    """A backend's ``backend_options``, validated; subclasses add fields and checks.

    The base class accepts no options at all, which is right for a backend with no
    settings of its own.
    """

    migrations: ClassVar[Mapping[str, OptionPath]] = MappingProxyType({})
    """Old configuration keys this backend still honours, and where in ``backend_options``
    each one goes now (aot-compat translates old dict configs with it)."""

    @classmethod
    def validate(cls, spec: CompileSpec) -> Self:
        """Check ``spec.backend_options`` (the spec gives context for cross-field checks).

        Raises ``SpecError`` with ``field="backend_options"`` naming the offending key and
        what is accepted; an unknown key is an error, never ignored.
        """
        if spec.backend_options:
            raise SpecError(
                "backend_options: this backend takes no options, got "
                + ", ".join(sorted(spec.backend_options)),
                field="backend_options",
            )
        return cls()

    @classmethod
    def migrate(cls, key: str) -> OptionPath | None:
        """Where the old configuration key ``key`` goes in ``backend_options`` (None: not
        a setting of this backend)."""
        return cls.migrations.get(key)
