"""``VLLMOptions``: the vLLM backend's options class (``Compiler.options_class``).

It validates ``spec.backend_options`` once, without importing vLLM, into the object a start
reads: the keys the runtime reads (``runtime_options``) and the keys spelled for vLLM
(``engine_options``); and it answers where an old configuration key goes (``migration``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Self

from aot_core.options import BackendOptions, OptionPath
from aot_core.spec import CompileSpec

from aot_vllm.engine_options import check_engine_options
from aot_vllm.migration import MIGRATIONS
from aot_vllm.runtime_options import RuntimeOptions, check_runtime_options


@dataclass(frozen=True, kw_only=True)
class VLLMOptions(BackendOptions):
    """The vLLM backend's ``backend_options``, validated."""

    migrations: ClassVar[Mapping[str, OptionPath]] = MIGRATIONS

    runtime: RuntimeOptions
    """What the runtime itself reads (engine process, compile-cache path, best effort)."""

    engine: Mapping[str, Any]
    """The options spelled for vLLM, checked (values normalised)."""

    @classmethod
    def validate(cls, spec: CompileSpec) -> Self:
        """Check every key and value; unknown keys are ``SpecError``s naming the key."""
        # one pass over the spec's own mapping: no spec is rebuilt to validate it
        runtime = check_runtime_options(spec)
        checked = check_engine_options(spec)  # skips the runtime's keys
        return cls(runtime=runtime, engine=MappingProxyType(checked))
