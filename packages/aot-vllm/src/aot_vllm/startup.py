"""Starting one ``vllm.LLM`` for a spec, as a sequence of named steps.

``build`` runs them in order; each returns a typed result the next one reads:

1. ``request_start`` -> ``StartRequest`` (model, options, cache entry; no vLLM yet);
2. the log capture's variable is set, vLLM is imported;
3. ``set_up_engine`` -> ``EngineSetup`` (KV cache sized, spec translated, placement);
4. with the cache entry locked: ``_launch`` -> ``Launch`` (entry verified, compile cache
   chosen, environment set, engine started);
5. ``read_start`` -> ``StartReading`` (log lines, cache verdict, resolved config), then
   the stats, the warm-up run of ``compile_model_aot``'s examples, and the entry sealed.

A failure at any step closes what was opened and restores the environment.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aot_core.errors import CompilationError
from aot_core.spec import CompileSpec
from aot_core.stats import OptimizationStats

from aot_vllm import engine, engine_env, evidence, process_tree, ranks, vllm_plugin
from aot_vllm.cache import OpenedEntry
from aot_vllm.compiled_model import VLLMCompiledModel
from aot_vllm.example_inputs import ExampleInputs
from aot_vllm.options import VLLMOptions
from aot_vllm.start_report import (
    Launch,
    StartReading,
    device_name,
    manifest_extra,
    manifest_ranks,
    read_start,
    start_stats,
)
from aot_vllm.start_setup import EngineSetup, request_start, set_up_engine

__all__ = ["AOTVLLMWarning", "Prepared", "build", "prepare_launch", "seal_entry"]


class AOTVLLMWarning(UserWarning):
    """Something about a start the user should know (a fallback, a refused setting)."""


def _warn(message: str, *, below_build: int = 0) -> None:
    """Warn at the user's line that called ``compile_model(_aot)``.

    ``below_build``: how many of this module's functions sit between ``build`` and the caller.
    """
    # _warn, [steps below build], build, the compiler method, the user's line.
    warnings.warn(f"aot-vllm: {message}", AOTVLLMWarning, stacklevel=4 + below_build)


def build(
    model: Any,
    spec: CompileSpec,
    *,
    options: VLLMOptions | None = None,
    warmup: ExampleInputs | None = None,
    extra_notes: Sequence[str] = (),
) -> VLLMCompiledModel:
    """Start a ``vllm.LLM`` for ``model`` and ``spec`` and measure how it started
    (``options``: the spec's backend options as the backend validated them)."""
    request = request_start(model, spec, options=options, notes=extra_notes)
    env = engine_env.EnvPatch()
    memory = process_tree.PeakMemory()
    try:
        env.apply(engine_env.log_capture(request.log.prepare()))
        engine.import_vllm()
        setup = set_up_engine(request)
        for message in setup.translation.warnings:
            _warn(message)
        request.log.attach_in_process()
        with request.entry.locked():
            launch = _launch(setup, env, memory)
            compiled = _compiled_model(setup, launch, env, memory)
            try:
                _finish(setup, launch, compiled, memory, warmup)
            except BaseException:
                compiled.close()
                raise
        return compiled
    except BaseException:
        memory.stop()
        request.log.detach()
        env.restore()
        raise


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """The cache entry opened and the engine's environment set, nothing started yet."""

    opened: OpenedEntry
    """The cache entry as found (absent, intact or refused) and its earlier record."""

    compile_cache: engine_env.CompileCacheChoice
    """The compile cache the engine is pointed at."""

    engine_env: dict[str, str]
    """Every variable set for the engine (besides the log capture's)."""


def prepare_launch(setup: EngineSetup, env: engine_env.EnvPatch) -> Prepared:
    """Verify the entry, choose the compile cache, set the environment (call with the entry
    locked): every step before an engine starts, for ``build`` and ``aot serve`` alike."""
    entry = setup.request.entry
    opened = entry.open()
    entry.seed_modelinfos()
    release = setup.translation.release
    choice = engine_env.choose_compile_cache(
        setup.request.runtime,
        spec=setup.engine_spec,
        has_aot_compile=release.facts.has_aot_compile,
        aot_load_finalizes=release.facts.aot_load_finalizes,
        is_cpu=setup.is_cpu,
        previous=opened.extra,
    )
    warmup = engine_env.cpu_warmup_tokens(
        shrinkable=release.facts.cpu_warmup_shrinkable,
        is_cpu=setup.is_cpu,
        compiles=setup.engine_spec.compiles,
        ranks=setup.world.size,
        kv_sized="kv_cache_memory_bytes" in setup.llm_kwargs,
        warm=opened.state == "intact",
    )
    variables = engine_env.engine_environment(
        translated=setup.translation.env,
        compile_cache=choice,
        inductor_dir=entry.inductor_dir,
        inline=setup.inline,
        threads_bind=setup.threads_bind,
        warmup=warmup,
    )
    env.apply(variables)
    if setup.inline and setup.is_cpu:
        engine.match_cpu_worker_inductor_config()
    if warmup and setup.inline:
        # vLLM registers its plugins once per process; an engine in this process after
        # the first still needs the wrapper (it acts only while the variable is set).
        vllm_plugin.install_warmup_tokens()
    return Prepared(opened=opened, compile_cache=choice, engine_env=variables)


def _launch(
    setup: EngineSetup, env: engine_env.EnvPatch, memory: process_tree.PeakMemory
) -> Launch:
    """Verify the entry, choose the compile cache, set the environment, start the engine."""
    prepared = prepare_launch(setup, env)
    before = setup.request.entry.snapshot()
    counters_before = evidence.read_counters() if setup.inline else None
    memory.start()
    t_engine = time.time()
    try:
        running = engine.start(setup.request.source.name_or_path, setup.llm_kwargs)
    except CompilationError as exc:
        raise _which_rank_died(exc, setup, memory) from exc
    t_ready = time.time()
    memory.stop()
    return Launch(
        running=running,
        opened=prepared.opened,
        compile_cache=prepared.compile_cache,
        engine_env=prepared.engine_env,
        before=before,
        counters_before=counters_before,
        t_engine=t_engine,
        t_ready=t_ready,
    )


def _which_rank_died(
    exc: CompilationError, setup: EngineSetup, memory: process_tree.PeakMemory
) -> CompilationError:
    """The start's error, naming the rank whose process exited first (several ranks)."""
    if setup.world.size == 1:
        return exc
    memory.stop()
    records = setup.request.log.records(since=setup.request.t_start - 1.0)
    pids = {**ranks.rank_pids_from_titles(memory.titles, setup.world), **ranks.rank_pids(records)}
    death = ranks.describe_death(memory.gone, pids, setup.world, t_start=setup.request.t_start)
    if not death:
        return exc
    return CompilationError(f"{death}; every other engine process was stopped. {exc}")


def _compiled_model(
    setup: EngineSetup,
    launch: Launch,
    env: engine_env.EnvPatch,
    memory: process_tree.PeakMemory,
) -> VLLMCompiledModel:
    request = setup.request
    return VLLMCompiledModel(
        running=launch.running,
        source=request.source,
        stats=OptimizationStats(backend="vllm"),
        env=env,
        log_capture=request.log,
        memory=memory,
        has_tokenizer=setup.has_tokenizer,
        vocab_size=setup.vocab_size,
        eos_token_ids=setup.eos_token_ids,
        llm_kwargs=setup.llm_kwargs,
        engine_env=launch.engine_env,
        spec=request.spec,
    )


def _finish(
    setup: EngineSetup,
    launch: Launch,
    compiled: VLLMCompiledModel,
    memory: process_tree.PeakMemory,
    warmup: ExampleInputs | None,
) -> None:
    """Read the start, set the stats, run the examples once, seal the cache entry."""
    request = setup.request
    records = request.log.records(since=request.t_start - 1.0)
    reading = read_start(
        setup,
        launch,
        records=records,
        peak_memory=memory.peak,
        peaks_by_pid=memory.by_pid,
        titles=memory.titles,
    )
    if reading.aot_failure is not None:
        _warn(
            f"vLLM {setup.translation.vllm_version} could not load its AOT artifact "
            f"({reading.aot_failure}) and compiled again; later starts of this cache entry "
            "use Inductor's FX-graph cache instead",
            below_build=1,
        )
    stats = start_stats(setup, reading)
    compiled._set_stats(stats)
    if warmup is not None:
        compiled.generate(warmup.prompts, warmup.params)
        compiled._set_stats(stats.replace(peak_host_memory_bytes=memory.peak))
    problem = seal_entry(setup, reading)
    if problem:
        _warn(problem, below_build=1)
        sealed = compiled.stats
        compiled._set_stats(sealed.replace(notes=(*sealed.notes, problem)))


def seal_entry(setup: EngineSetup, reading: StartReading) -> str:
    """Record the start in the cache entry's manifest (call with the entry locked); returns
    why it could not be sealed, or "" when it was."""
    entry = setup.request.entry
    entry.share_modelinfos()
    try:
        entry.seal(
            device=device_name(setup.is_cpu),
            extra=manifest_extra(setup, reading),
            ranks=manifest_ranks(setup, reading),
        )
    except Exception as exc:
        return (
            f"the compile cache entry {entry.path} could not be sealed ({exc}); "
            "the next start compiles again"
        )
    return ""
