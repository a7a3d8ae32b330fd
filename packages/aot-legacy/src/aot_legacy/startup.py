"""Starting one model on the legacy backend for a spec, as a sequence of named steps
(the shape of aot-vllm's ``startup.py``).

``build`` runs them in order; each returns a typed result the next one reads:

1. ``request_start`` -> ``StartRequest`` (options, cache root, the published artifact the
   caches lie in verified; torch not imported yet, so a bad spec fails cheaply);
2. ``load_start`` -> ``LoadedStart`` (torch imported, device chosen, model loaded, example
   prompts read, static shapes planned, the store entry named, the step compiler made);
3. ``compile_steps`` -> ``CompiledSteps`` (KV cache allocated, the store entry locked and
   verified, steps loaded or compiled, the entry sealed, decode graphs captured);
4. ``finish`` -> the ``LegacyCompiledModel`` (generator, the examples run once, stats).

A failure while compiling closes the step compiler (its private directories go).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

from aot_legacy.options import LegacyOptions

BACKEND = "legacy"
"""The backend's registry name: it names the directory of its caches under aot's cache
root and the backend an artifact must have been published by."""

_WEIGHTS_NOTE = "inputs: compiled code holds no weights and serves any checkpoint of this config"


@dataclass(frozen=True, kw_only=True)
class StartRequest:
    """One start as asked for, checked before torch is imported."""

    model: Any
    """The model as the caller passed it (a path, a transformers module, a step)."""

    spec: CompileSpec
    """The spec the start runs with."""

    options: LegacyOptions
    """``spec.backend_options``, validated once."""

    cache_root: Path
    """``spec.cache_dir``, else aot's cache root (``aot_core.artifacts.default_cache_root``):
    inside an aot artifact, where keyed cache directories live; else the root of the store
    whose entry holds them (``cache_entry``)."""

    in_artifact: bool
    """``spec.cache_dir`` lies inside an aot artifact (published, or being built by
    ``aot compile``): its owner holds the lock and writes the manifest."""

    package_dir: Path | None
    """An explicit directory of AOTInductor packages (``backend_options.package_dir``)."""

    artifact: Path | None
    """The published aot artifact the caches lie in, verified; None for a plain cache."""

    aot: bool
    """``compile_model_aot``: build packages when none fit."""

    backend_version: str
    """aot-legacy's version (recorded in stats and in the store entry's manifest)."""

    t_start: float
    """``perf_counter`` when the start began."""

    phases: dict[str, float]
    """Seconds per start-up phase, filled in by each step."""


@dataclass(frozen=True, kw_only=True)
class LoadedStart:
    """The model loaded and its static shapes planned (torch imported, nothing compiled)."""

    request: StartRequest
    """What was asked for."""

    loaded: Any
    """The ``LoadedModel``: step factory, tokenizer, dtype, loader facts."""

    step: Any
    """The ``StaticKVDecoder`` for ``plan.max_seq``."""

    plan: Any
    """The ``StepPlan``: static shapes and modes the steps are built for."""

    device: Any
    """The torch device the model runs on."""

    compiler: Any
    """The ``StepCompiler`` that loads or compiles the steps."""

    entry: Any
    """The ``cache_entry.StoreEntry`` the compile caches live in; None inside an aot
    artifact, or when nothing is compiled (compile_mode "none")."""

    example_prompts: list[list[int]]
    """``example_inputs`` as token ids (empty for ``compile_model``)."""

    module_name: str | None
    """The class name of a transformers module passed in (it is called like itself)."""

    notes: list[str]
    """Notes so far, in order."""


@dataclass(frozen=True, kw_only=True)
class CompiledSteps:
    """The steps ready to run: KV cache, runners and decode graphs."""

    kv: Any
    """The static KV cache tensors."""

    runners: Any
    """The ``StepRunners``: prefill and decode callables and how they were obtained."""

    graphs: Any
    """The ``CUDAGraphOptimizer`` over the decode step (inactive on CPU)."""


def build(
    model: Any,
    spec: CompileSpec,
    options: LegacyOptions,
    *,
    example_inputs: Any,
    aot: bool,
    backend_version: str,
) -> Any:
    """Start ``model`` for ``spec`` and measure how it started: the four steps in order."""
    request = request_start(model, spec, options, aot=aot, backend_version=backend_version)
    start = load_start(request, example_inputs)
    steps = compile_steps(start)
    return finish(start, steps, backend_version=backend_version)


def request_start(
    model: Any, spec: CompileSpec, options: LegacyOptions, *, aot: bool, backend_version: str
) -> StartRequest:
    """Where the caches are, and the published artifact among them verified (no torch)."""
    from aot_core.artifacts import default_cache_root

    t_start = time.perf_counter()
    cache_root = Path(spec.cache_dir).expanduser() if spec.cache_dir else default_cache_root()
    package_dir = Path(options.package_dir).expanduser() if options.package_dir else None
    # Before any file of a published artifact is read: verify it against its manifest.
    artifact = _verify_artifact(cache_root, package_dir, backend=BACKEND)
    return StartRequest(
        model=model,
        spec=spec,
        options=options,
        cache_root=cache_root,
        in_artifact=_artifact_of(cache_root) is not None,
        package_dir=package_dir,
        artifact=artifact,
        aot=aot,
        backend_version=backend_version,
        t_start=t_start,
        phases={"verify_artifact": time.perf_counter() - t_start},
    )


def load_start(request: StartRequest, example_inputs: Any) -> LoadedStart:
    """Import torch, choose the device, load the model, plan its static shapes."""
    t0 = time.perf_counter()
    import torch

    from aot_legacy.model_source import load_model
    from aot_legacy.options import resolve_plan
    from aot_legacy.step_compiler import StepCompiler

    phases, options, spec = request.phases, request.options, request.spec
    phases["import"] = time.perf_counter() - t0
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    device = _pick_device(options.device, torch)
    loaded = load_model(request.model, dtype=spec.dtype, device=device, phases=phases)
    example_prompts = _example_prompts(example_inputs, loaded.tokenizer)
    plan, notes = resolve_plan(
        spec,
        options,
        max_positions=loaded.max_positions,
        dtype=str(loaded.dtype).removeprefix("torch."),
        example_batch=len(example_prompts) if example_prompts else None,
        example_len=max((len(p) for p in example_prompts), default=None),
    )
    step = loaded.step(plan.max_seq)
    entry = _store_entry(request, step, compiles=plan.compile_mode != "none")
    compiler = StepCompiler(
        cache_root=entry.files_dir if entry is not None else request.cache_root,
        persistent_cache=options.persistent_cache,
        use_packages=options.aoti,
        package_dir=request.package_dir,
        read_only=request.artifact is not None,
    )
    return LoadedStart(
        request=request,
        loaded=loaded,
        step=step,
        plan=plan,
        device=device,
        compiler=compiler,
        entry=entry,
        example_prompts=example_prompts,
        # a transformers module passed in is called like itself afterwards
        module_name=_module_name(request.model, loaded.source),
        notes=[*loaded.notes, *notes],
    )


def compile_steps(start: LoadedStart) -> CompiledSteps:
    """Allocate the KV cache, load or compile the steps, capture the decode graphs."""
    from aot_legacy.cuda_graphs import CUDAGraphOptimizer
    from aot_legacy.decoder import allocate_kv

    step, plan, device = start.step, start.plan, start.device
    spec, phases = start.request.spec, start.request.phases
    t0 = time.perf_counter()
    kv = allocate_kv(
        step.layout,
        max_batch=plan.max_batch,
        max_seq=plan.max_seq,
        dtype=start.loaded.dtype,
        device=device,
    )
    phases["kv_cache"] = time.perf_counter() - t0
    use_graphs = spec.cuda_graphs and device.type == "cuda"
    try:
        with contextlib.ExitStack() as held:
            if start.entry is not None:
                # Locked and verified before any compiled file in it is read; sealed
                # over what this start added when the steps are ready.
                from aot_legacy.cache_entry import opened

                t0 = time.perf_counter()
                start.compiler.read_only = not held.enter_context(opened(start.entry))
                phases["verify_cache_entry"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            runners = start.compiler.prepare(
                step, plan, kv, build=start.request.aot, manual_cuda_graphs=use_graphs
            )
            t_ready = time.perf_counter()
    except BaseException:
        start.compiler.close()
        raise
    loaded_only = runners.tier == "package" and runners.cache.status == "hit"
    phases["package_load" if loaded_only else "compile_warmup"] = t_ready - t0
    start.notes.extend(runners.notes)
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
    return CompiledSteps(kv=kv, runners=runners, graphs=graphs)


def finish(start: LoadedStart, steps: CompiledSteps, *, backend_version: str) -> Any:
    """The generator, the examples run once, the stats and the compiled model."""
    from aot_legacy.compiled_model import LegacyCompiledModel
    from aot_legacy.generation import StaticKVGenerator

    step, plan, runners, graphs = start.step, start.plan, steps.runners, steps.graphs
    generator = StaticKVGenerator(
        prefill=runners.prefill,
        decode=graphs if graphs.active else runners.decode,
        buckets=plan.buckets,
        max_seq=plan.max_seq,
        vocab_size=step.layout.vocab_size,
        pad_token_id=step.pad_token_id,
        eos_token_ids=step.eos_token_ids,
        device=start.device,
        kv=steps.kv,
    )
    if start.example_prompts:
        # Run the examples once: proves the compiled steps on real inputs before the
        # model is handed out, and warms allocator and kernels.
        from aot_core.compiler import GenerationParams

        t0 = time.perf_counter()
        generator.generate(start.example_prompts, GenerationParams(max_new_tokens=2))
        start.request.phases["example_run"] = time.perf_counter() - t0
    return LegacyCompiledModel(
        generator=generator,
        stats=start_stats(start, steps, backend_version=backend_version),
        tokenizer=start.loaded.tokenizer,
        owned=[step, steps.kv, runners],
        graphs=graphs,
        compiler=start.compiler,
        module_name=start.module_name,
    )


def start_stats(start: LoadedStart, steps: CompiledSteps, *, backend_version: str) -> Any:
    """The ``OptimizationStats`` of a finished start."""
    import torch
    from aot_core.stats import OptimizationStats

    from aot_legacy.compiled_model import peak_host_memory_bytes
    from aot_legacy.decoder import kv_bytes
    from aot_legacy.environment import describe_device

    plan, device, runners, graphs = start.plan, start.device, steps.runners, steps.graphs
    request = start.request
    return OptimizationStats(
        backend=BACKEND,
        backend_version=backend_version,
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
        startup_s=time.perf_counter() - request.t_start,
        startup_phases=request.phases,
        resolved_config={
            "tier": runners.tier,
            "device": str(device),
            "dtype": plan.dtype,
            "max_batch": plan.max_batch,
            "max_model_len": plan.max_seq,
            "batch_buckets": list(plan.buckets),
            "kv_cache_bytes": kv_bytes(steps.kv),
            "cache_dir": str(runners.cache_dir) if runners.cache_dir else None,
            "cuda_graphs": bool(graphs.active),
            "chunked_prefill": False,
            "weights": _WEIGHTS_NOTE if runners.tier != "eager" else "eager (nothing compiled)",
            "model_loader": start.loaded.loader,
            "placeholder_weights": start.loaded.placeholder,
            "verified_artifact": str(request.artifact) if request.artifact else None,
        },
        notes=tuple(start.notes),
    )


def _store_entry(request: StartRequest, step: Any, *, compiles: bool) -> Any:
    """The store entry this start's compile caches live in (``cache_entry``): None inside an
    aot artifact, beside a verified published artifact (read-only, copied privately), or
    when nothing is compiled."""
    if request.in_artifact or request.artifact is not None or not compiles:
        return None
    from aot_legacy.cache_entry import store_entry

    model = request.model
    label = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    return store_entry(
        root=request.spec.cache_dir,
        spec=request.spec,
        model=label,
        config=dict(step.config_dict),
        version=request.backend_version,
    )


def _artifact_of(path: Path) -> Path | None:
    """The aot artifact ``path`` lies in (published or being built), or None."""
    from aot_core.artifacts import artifact_root

    path = path.absolute()
    for candidate in (path, *path.parents):
        root = artifact_root(candidate)
        if root is not None and path.is_relative_to(root):
            return root
    return None


def _verify_artifact(cache_root: Path, package_dir: Path | None, *, backend: str) -> Path | None:
    """The published aot artifact the caches lie in, verified; None for a plain cache, or
    for an artifact being built (its manifest lists no files yet: ours to fill, see
    ``CompileSpec.cache_dir``).

    ``aot_core.artifacts.verify_for_load`` checks every file against the artifact's
    manifest (no file changed, truncated, missing or added) and the manifest against this
    environment; it raises ``ArtifactCorruptError`` / ``ArtifactIncompatibleError``, and
    nothing of the artifact is read before it passes.
    """
    from aot_core.artifacts import verify_for_load

    for given in (cache_root, package_dir):
        root = _artifact_of(given) if given is not None else None
        if root is not None:
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
