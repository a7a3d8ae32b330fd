"""``IntegratedAOTCompiler``: the legacy backend. Loads a model, builds its static KV cache,
compiles its steps (``EnhancedAOTCompiler``), captures decode graphs
(``CUDAGraphOptimizer``) and returns a ``LegacyCompiledModel``.

This module imports torch only inside methods, so the registry can list the backend
without paying for torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, ClassVar

from aot_core.compiler import Availability, CompiledModel, Compiler
from aot_core.errors import SpecError
from aot_core.options import BackendOptions
from aot_core.spec import CompileSpec

from aot_legacy.options import LegacyOptions

MIN_TORCH = (2, 6)


def _parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+", maxsplit=1)[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class IntegratedAOTCompiler(Compiler):
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
        import torch

        phases["import"] = time.perf_counter() - t_start
        if options.threads is not None:
            torch.set_num_threads(options.threads)

        from aot_legacy.compiled_model import LegacyCompiledModel, peak_host_memory_bytes
        from aot_legacy.cuda_graphs import CUDAGraphOptimizer
        from aot_legacy.decoder import StaticKVDecoder, allocate_kv, kv_bytes
        from aot_legacy.enhanced import EnhancedAOTCompiler
        from aot_legacy.environment import describe_device
        from aot_legacy.generation import StaticKVGenerator
        from aot_legacy.hf_adapter import HFCausalLMStep, is_hf_model, load_hf_model, load_tokenizer
        from aot_legacy.options import default_cache_root, resolve_plan

        device = _pick_device(options.device, torch)
        t0 = time.perf_counter()
        model_dir: Path | None = None
        want_dtype = None if spec.dtype == "auto" else getattr(torch, spec.dtype)
        if isinstance(model, (str, Path)):
            model_dir = Path(model).expanduser()
            if not model_dir.is_dir():
                raise SpecError(
                    f"model: {model_dir} is not a directory; pass a local Hugging Face model "
                    "directory (no hub downloads), a transformers model or a StaticKVDecoder",
                    field="model",
                )
            hf_model = load_hf_model(model_dir, dtype=want_dtype)
        elif isinstance(model, StaticKVDecoder):
            hf_model = None
        elif is_hf_model(model):
            hf_model = model
            path = getattr(model, "name_or_path", "") or ""
            if path and Path(path).is_dir():
                model_dir = Path(path)
        else:
            raise SpecError(
                f"model: cannot compile a {type(model).__name__}; pass a local Hugging Face "
                "model directory, a transformers causal LM, or an aot_legacy.StaticKVDecoder",
                field="model",
            )
        source = hf_model if hf_model is not None else model
        first = next(source.parameters(), None)
        dtype = want_dtype or (first.dtype if first is not None else torch.float32)
        source = source.to(device=device, dtype=dtype).eval()
        dtype_name = str(dtype).removeprefix("torch.")
        tokenizer = load_tokenizer(model_dir)
        phases["model_load"] = time.perf_counter() - t0

        example_prompts = _example_prompts(example_inputs, tokenizer)
        max_positions = (
            int(source.config.max_position_embeddings)
            if hf_model is not None
            else source.layout.max_positions
        )
        plan, notes = resolve_plan(
            spec,
            options,
            max_positions=max_positions,
            dtype=dtype_name,
            example_batch=len(example_prompts) if example_prompts else None,
            example_len=max((len(p) for p in example_prompts), default=None),
        )
        step = HFCausalLMStep(source, max_seq=plan.max_seq) if hf_model is not None else source

        t0 = time.perf_counter()
        kv = allocate_kv(
            step.layout, max_batch=plan.max_batch, max_seq=plan.max_seq, dtype=dtype, device=device
        )
        phases["kv_cache"] = time.perf_counter() - t0

        use_graphs = spec.cuda_graphs and device.type == "cuda"
        compiler = EnhancedAOTCompiler(
            cache_root=default_cache_root(spec),
            persistent_cache=options.persistent_cache,
            use_packages=options.aoti,
            package_dir=Path(options.package_dir).expanduser() if options.package_dir else None,
        )
        t0 = time.perf_counter()
        runners = compiler.prepare(step, plan, kv, build=aot, manual_cuda_graphs=use_graphs)
        phases["package_load" if runners.tier == "package" and not aot else "compile_warmup"] = (
            time.perf_counter() - t0
        )
        notes.extend(runners.notes)

        graphs = CUDAGraphOptimizer(
            runners.decode,
            buckets=plan.buckets,
            device=device,
            enabled=spec.cuda_graphs,
            pad_token_id=step.pad_token_id,
        )
        if graphs.note == "" and use_graphs:
            graphs.capture()
            phases["cuda_graph_capture"] = graphs.capture_time_s or 0.0
        decode = graphs if graphs.active else runners.decode

        generator = StaticKVGenerator(
            prefill=runners.prefill,
            decode=decode,
            buckets=plan.buckets,
            max_seq=plan.max_seq,
            vocab_size=step.layout.vocab_size,
            pad_token_id=step.pad_token_id,
            eos_token_ids=step.eos_token_ids,
            device=device,
        )
        if example_prompts:
            # Run the examples once: proves the compiled steps on real inputs before the
            # model is handed out, and warms allocator and kernels.
            from aot_core.compiler import GenerationParams

            t0 = time.perf_counter()
            generator.generate(example_prompts, GenerationParams(max_new_tokens=2))
            phases["example_run"] = time.perf_counter() - t0

        startup = time.perf_counter() - t_start
        from aot_core.stats import OptimizationStats

        stats = OptimizationStats(
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
            startup_s=startup,
            startup_phases=phases,
            resolved_config={
                "tier": runners.tier,
                "device": str(device),
                "dtype": dtype_name,
                "max_batch": plan.max_batch,
                "max_model_len": plan.max_seq,
                "batch_buckets": list(plan.buckets),
                "kv_cache_bytes": kv_bytes(kv),
                "cache_dir": str(runners.cache_dir) if runners.cache_dir else None,
                "cuda_graphs": bool(graphs.active),
                "chunked_prefill": False,
            },
            notes=tuple(notes),
        )
        return LegacyCompiledModel(
            generator=generator,
            stats=stats,
            tokenizer=tokenizer,
            owned=[step, kv, runners],
            graphs=graphs,
            compiler=compiler,
        )


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
