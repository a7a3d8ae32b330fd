"""``ToyOptions``: the toy backend's one setting, a failure the tests ask for.

The exit codes aot documents for a failed compile (7), a benchmark with failed runs (13)
and an unexpected internal error (1) need a backend that fails for real, through the same
code paths a real backend's failure takes; this test-only backend fails on request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Self, cast

from aot_core.errors import SpecError
from aot_core.options import BackendOptions
from aot_core.spec import CompileSpec

FAILURES = ("compile", "close")
"""``backend_options.fail`` values: where the toy backend raises a plain RuntimeError."""


@dataclass(frozen=True, kw_only=True)
class ToyOptions(BackendOptions):
    """The ``backend_options`` the toy backend understands (only ``fail``)."""

    fail: Literal["compile", "close"] | None = None
    """Raise a RuntimeError, as a buggy backend would: "compile" while compiling (not in
    eager starts), "close" when a compiled model is closed; None: never."""

    @classmethod
    def validate(cls, spec: CompileSpec) -> Self:
        """Refuse any key but ``fail``, and any value of it but FAILURES."""
        opts = dict(spec.backend_options)
        fail = opts.pop("fail", None)
        if opts:
            raise SpecError(
                f"backend_options: the toy backend takes only 'fail', got {', '.join(opts)}",
                field="backend_options",
            )
        if fail is not None and fail not in FAILURES:
            raise SpecError(
                f"backend_options.fail: {fail!r} is not one of {', '.join(FAILURES)}",
                field="backend_options",
            )
        return cls(fail=cast(Literal["compile", "close"] | None, fail))
