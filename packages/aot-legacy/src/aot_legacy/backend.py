"""``LegacyBackend``: the legacy backend, as the registry sees it (availability, pins,
options class). A start (``startup.build``) loads a model, builds its static KV cache,
compiles its steps (``StepCompiler``), captures decode graphs (``CUDAGraphOptimizer``)
and returns a ``LegacyCompiledModel``.

This module imports torch only inside methods, so the registry can list the backend
without paying for torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from typing import Any, ClassVar, cast

from aot_core.compiler import Availability, CompiledModel, Compiler
from aot_core.errors import SpecError
from aot_core.options import BackendOptions
from aot_core.spec import CompileSpec

from aot_legacy.options import STEP_FORMAT, LegacyOptions

MIN_TORCH = (2, 6)


def _parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+", maxsplit=1)[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class LegacyBackend(Compiler):
    """Plain-PyTorch backend: torch.compile / AOTInductor / CUDA graphs over a static KV cache.

    ``compile_model`` loads a compatible AOTInductor package when one exists for this
    model, torch and device, else compiles with a persistent cache; ``compile_model_aot``
    builds those packages (and returns the model running them).
    """

    name: ClassVar[str] = "legacy"
    description: ClassVar[str] = "Enhanced AOT on plain PyTorch"
    priority: ClassVar[int] = 50
    distribution: ClassVar[str] = "aot-legacy"
    options_class: ClassVar[type[BackendOptions]] = LegacyOptions

    @classmethod
    def availability(cls) -> Availability:
        if importlib.util.find_spec("torch") is None:
            return Availability(
                usable=False,
                reason="torch is not installed; pip install 'aot-legacy' (it requires torch>=2.6)",
            )
        try:
            torch_version = dist_version("torch")
        except PackageNotFoundError:
            torch_version = ""
        if torch_version and _parse_version(torch_version) < MIN_TORCH:
            return Availability(
                usable=False,
                reason=f"torch {torch_version} is too old; pip install 'torch>=2.6'",
            )
        return Availability(usable=True)

    @classmethod
    def check_engine(cls) -> Availability:
        """torch imports in this process (an installed but broken torch passes
        ``availability`` and fails only here). Imports torch: seconds, once per process."""
        try:
            importlib.import_module("torch")
        except Exception as exc:  # any failure means the engine cannot run here
            return Availability(
                usable=False,
                reason=f"torch failed to import with this error: {type(exc).__name__}: {exc}",
            )
        return Availability(usable=True)

    @classmethod
    def pins(cls) -> dict[str, str | None]:
        """Compiled kernels and AOTInductor packages depend on the exact torch build, and on
        the graphs this version of the backend traces."""
        from aot_core.artifacts import torch_version

        return {"torch": torch_version(), "aot-legacy-steps": str(STEP_FORMAT)}

    def compile_model(self, model: Any, spec: CompileSpec | None = None) -> CompiledModel:
        return self._remember(self._start(model, spec, example_inputs=None, aot=False))

    def compile_model_aot(
        self, model: Any, example_inputs: Any, spec: CompileSpec | None = None
    ) -> CompiledModel:
        return self._remember(self._start(model, spec, example_inputs=example_inputs, aot=True))

    def _start(
        self, model: Any, spec: CompileSpec | None, *, example_inputs: Any, aot: bool
    ) -> Any:
        """``startup.build`` with the spec's options validated once (torch not imported
        until they pass)."""
        from aot_legacy.startup import build

        spec = spec if spec is not None else self.spec
        if not isinstance(spec, CompileSpec):
            raise SpecError(f"spec: expected a CompileSpec, got {type(spec).__name__}")
        # options_class is LegacyOptions, so that is what options_for validates into
        options = cast(LegacyOptions, self.options_for(spec))
        return build(
            model,
            spec,
            options,
            example_inputs=example_inputs,
            aot=aot,
            backend_version=self.version(),
        )
