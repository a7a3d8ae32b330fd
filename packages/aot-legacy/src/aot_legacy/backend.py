"""``LegacyBackend``: the legacy backend. Loads a model, builds its static KV cache,
compiles its steps (``StepCompiler``), captures decode graphs
(``CUDAGraphOptimizer``) and returns a ``LegacyCompiledModel``.

This module imports torch only inside methods, so the registry can list the backend
without paying for torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, ClassVar

from aot_core.compiler import Availability, CompiledModel, Compiler
from aot_core.errors import SpecError
from aot_core.options import BackendOptions
from aot_core.spec import CompileSpec

from aot_legacy.options import LegacyOptions, default_cache_root

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
        """Compiled kernels and AOTInductor packages depend on the exact torch build."""
        from aot_core.artifacts import torch_version

        return {"torch": torch_version()}

    def compile_model(self, model: Any, spec: CompileSpec | None = None) -> CompiledModel:
        return self._remember(self._build(model, spec, example_inputs=None, aot=False))

    def compile_model_aot(
        self, model: Any, example_inputs: Any, spec: CompileSpec | None = None
    ) -> CompiledModel:
        return self._remember(self._build(model, spec, example_inputs=example_inputs, aot=True))

    # ------------------------------------------------------------------ internals

    def _build(
        self, model: Any, spec: CompileSpec | None, *, example_inputs: Any, aot: bool
    ) -> Any:
        spec = spec if spec is not None else self.spec
        if not isinstance(spec, CompileSpec):
            raise SpecError(f"spec: expected a CompileSpec, got {type(spec).__name__}")
        options = LegacyOptions.validate(spec)  # fails before torch is even imported
        t_start = time.perf_counter()
        phases: dict[str, float] = {}
        cache_root = default_cache_root(spec)
        package_dir = Path(options.package_dir).expanduser() if options.package_dir else None
        # Before any file of a published artifact is read: verify it against its manifest.
        artifact = _verify_artifact(cache_root, package_dir, backend=self.name)
        phases["verify_artifact"] = time.perf_counter() - t_start
        t0 = time.perf_counter()
        import torch

        from aot_legacy.model_source import load_model
        from aot_legacy.options import resolve_plan

        phases["import"] = time.perf_counter() - t0
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        device = _pick_device(options.device, torch)
        loaded = load_model(model, dtype=spec.dtype, device=device, phases=phases)
        dtype_name = str(loaded.dtype).removeprefix("torch.")
        example_prompts = _example_prompts(example_inputs, loaded.tokenizer)
        plan, notes = resolve_plan(
            spec,
            options,
            max_positions=loaded.max_positions,
            dtype=dtype_name,
            example_batch=len(example_prompts) if example_prompts else None,
            example_len=max((len(p) for p in example_prompts), default=None),
        )
        notes[:0] = loaded.notes
        step = loaded.step(plan.max_seq)
        from aot_legacy.step_compiler import StepCompiler

        compiler = StepCompiler(
            cache_root=cache_root,
            persistent_cache=options.persistent_cache,
            use_packages=options.aoti,
            package_dir=package_dir,
            read_only=artifact is not None,
        )
        return self._assemble(
            _Parts(
                spec=spec,
                step=step,
                loaded=loaded,
                plan=plan,
                notes=notes,
                device=device,
                compiler=compiler,
                artifact=artifact,
                phases=phases,
                t_start=t_start,
                # a transformers module passed in is called like itself afterwards
                module_name=_module_name(model, loaded.source),
            ),
            example_prompts=example_prompts,
            aot=aot,
        )

    def _assemble(self, parts: _Parts, *, example_prompts: list[list[int]], aot: bool) -> Any:
        """KV cache, compiled steps, CUDA graphs, the generator and the compiled model."""
        import torch

        from aot_legacy.compiled_model import LegacyCompiledModel
        from aot_legacy.cuda_graphs import CUDAGraphOptimizer
        from aot_legacy.decoder import allocate_kv
        from aot_legacy.generation import StaticKVGenerator

        step, plan, device, phases = parts.step, parts.plan, parts.device, parts.phases
        t0 = time.perf_counter()
        kv = allocate_kv(
            step.layout,
            max_batch=plan.max_batch,
            max_seq=plan.max_seq,
            dtype=parts.loaded.dtype,
            device=device,
        )
        phases["kv_cache"] = time.perf_counter() - t0
        use_graphs = parts.spec.cuda_graphs and device.type == "cuda"
        t0 = time.perf_counter()
        try:
            runners = parts.compiler.prepare(
                step, plan, kv, build=aot, manual_cuda_graphs=use_graphs
            )
        except BaseException:
            parts.compiler.close()
            raise
        loaded_only = runners.tier == "package" and runners.cache.status == "hit"
        phases["package_load" if loaded_only else "compile_warmup"] = time.perf_counter() - t0
        parts.notes.extend(runners.notes)
        graphs = CUDAGraphOptimizer(
            runners.decode,
            buckets=plan.buckets,
            device=device,
            enabled=parts.spec.cuda_graphs,
            pad_token_id=step.pad_token_id,
        )
        if graphs.note == "" and use_graphs:
            graphs.capture()
            phases["cuda_graph_capture"] = graphs.capture_time_s or 0.0
        generator = StaticKVGenerator(
            prefill=runners.prefill,
            decode=graphs if graphs.active else runners.decode,
            buckets=plan.buckets,
            max_seq=plan.max_seq,
            vocab_size=step.layout.vocab_size,
            pad_token_id=step.pad_token_id,
            eos_token_ids=step.eos_token_ids,
            device=device,
            kv=kv,
        )
        if example_prompts:
            # Run the examples once: proves the compiled steps on real inputs before the
            # model is handed out, and warms allocator and kernels.
            from aot_core.compiler import GenerationParams

            t0 = time.perf_counter()
            generator.generate(example_prompts, GenerationParams(max_new_tokens=2))
            phases["example_run"] = time.perf_counter() - t0
        stats = self._stats(parts, runners=runners, graphs=graphs, kv=kv, torch=torch)
        return LegacyCompiledModel(
            generator=generator,
            stats=stats,
            tokenizer=parts.loaded.tokenizer,
            owned=[step, kv, runners],
            graphs=graphs,
            compiler=parts.compiler,
            module_name=parts.module_name,
        )

    def _stats(self, parts: _Parts, *, runners: Any, graphs: Any, kv: Any, torch: Any) -> Any:
        from aot_core.stats import OptimizationStats

        from aot_legacy.compiled_model import peak_host_memory_bytes
        from aot_legacy.decoder import kv_bytes
        from aot_legacy.environment import describe_device

        plan, device = parts.plan, parts.device
        return OptimizationStats(
            backend=self.name,
            backend_version=self.version(),
            torch_version=str(torch.__version__),
            device=describe_device(device),
            compile_mode={
                "package": "aot-inductor",
                "compile": f"torch.compile ({plan.compile_mode})",
                "eager": "eager",
            }[runners.tier],
            compile_time_s=runners.compile_time_s,
            cache=runners.cache,
            cuda_graph_sizes=graphs.sizes,
            cuda_graph_capture_time_s=graphs.capture_time_s,
            cuda_graphs_note=graphs.note,
            peak_host_memory_bytes=peak_host_memory_bytes(),
            peak_device_memory_bytes=(
                int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
            ),
            kv_cache_tokens=plan.max_batch * plan.max_seq,
            startup_s=time.perf_counter() - parts.t_start,
            startup_phases=parts.phases,
            resolved_config={
                "tier": runners.tier,
                "device": str(device),
                "dtype": plan.dtype,
                "max_batch": plan.max_batch,
                "max_model_len": plan.max_seq,
                "batch_buckets": list(plan.buckets),
                "kv_cache_bytes": kv_bytes(kv),
                "cache_dir": str(runners.cache_dir) if runners.cache_dir else None,
                "cuda_graphs": bool(graphs.active),
                "chunked_prefill": False,
                "weights": _WEIGHTS_NOTE if runners.tier != "eager" else "eager (nothing compiled)",
                "model_loader": parts.loaded.loader,
                "placeholder_weights": parts.loaded.placeholder,
                "verified_artifact": str(parts.artifact) if parts.artifact else None,
            },
            notes=tuple(parts.notes),
        )


_WEIGHTS_NOTE = "inputs: compiled code holds no weights and serves any checkpoint of this config"


@dataclass(kw_only=True)
class _Parts:
    """What ``_build`` resolved, handed to ``_assemble``."""

    spec: CompileSpec
    step: Any
    loaded: Any
    plan: Any
    notes: list[str]
    device: Any
    compiler: Any
    artifact: Path | None
    phases: dict[str, float]
    t_start: float
    module_name: str | None = None


def _verify_artifact(cache_root: Path, package_dir: Path | None, *, backend: str) -> Path | None:
    """The published aot artifact the caches lie in, verified; None for a plain cache, or
    for an artifact being built (its manifest lists no files yet: ours to fill, see
    ``CompileSpec.cache_dir``).

    ``aot_core.artifacts.verify_for_load`` checks every file against the artifact's
    manifest (no file changed, truncated, missing or added) and the manifest against this
    environment; it raises ``ArtifactCorruptError`` / ``ArtifactIncompatibleError``, and
    nothing of the artifact is read before it passes.
    """
    from aot_core.artifacts import artifact_root, verify_for_load

    for given in (cache_root, package_dir):
        if given is None:
            continue
        path = given.absolute()
        for candidate in (path, *path.parents):
            root = artifact_root(candidate)
            if root is not None and path.is_relative_to(root):
                listed = verify_for_load(root, backend=backend).files
                return root if listed else None
    return None


def _module_name(model: Any, source: Any) -> str | None:
    """The class name of a transformers module the caller passed (None for a path or a
    ``StaticKVDecoder``, which are not called like transformers modules)."""
    from aot_legacy.hf_adapter import is_hf_model

    if isinstance(model, (str, os.PathLike)) or not is_hf_model(source):
        return None
    return type(source).__name__


def _pick_device(choice: str, torch: Any) -> Any:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(choice)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            f"backend_options.device: {choice!r} was asked for but torch sees no CUDA device "
            f"(torch {torch.__version__}); use device 'cpu' or 'auto'",
            field="backend_options",
        )
    return dev


def _example_prompts(example_inputs: Any, tokenizer: Any | None) -> list[list[int]]:
    """Token-id prompts from ``example_inputs``: a list of prompts, a dict with
    ``prompts``/``input_ids``, or a tensor of ids."""
    if example_inputs is None:
        return []
    if isinstance(example_inputs, dict):
        for key in ("prompts", "input_ids"):
            if key in example_inputs:
                example_inputs = example_inputs[key]
                break
        else:
            raise SpecError(
                "example_inputs: a dict needs a 'prompts' or 'input_ids' entry",
                field="example_inputs",
            )
    if hasattr(example_inputs, "tolist") and not isinstance(example_inputs, (list, tuple)):
        example_inputs = example_inputs.tolist()
    if isinstance(example_inputs, str):
        example_inputs = [example_inputs]
    if not isinstance(example_inputs, Sequence) or not example_inputs:
        raise SpecError(
            "example_inputs: pass a non-empty list of prompts (token-id lists or strings)",
            field="example_inputs",
        )
    if all(isinstance(t, int) for t in example_inputs):
        example_inputs = [example_inputs]
    out = []
    for i, prompt in enumerate(example_inputs):
        p = prompt
        if isinstance(p, str):
            if tokenizer is None:
                raise SpecError(
                    f"example_inputs[{i}]: text needs a tokenizer beside the model; pass token ids",
                    field="example_inputs",
                )
            p = tokenizer(p)["input_ids"]
        ids = [int(t) for t in p]
        if not ids:
            raise SpecError(f"example_inputs[{i}]: empty prompt", field="example_inputs")
        out.append(ids)
    return out
