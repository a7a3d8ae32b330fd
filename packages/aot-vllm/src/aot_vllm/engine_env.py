"""Every environment variable aot-vllm gives a vLLM engine: its value, why, and the one writer.

vLLM reads part of its configuration only from the environment (``vllm.envs``). Each
variable aot-vllm sets is a member of ``EngineVar``, with the reason; the functions below
decide its value, and nothing else in aot-vllm names or writes one. ``EnvPatch``
(aot-core's one environment writer, shared with aot-legacy) is the only code that
changes ``os.environ``, and it puts every old value back when the engine closes.
Variables aot-vllm does not name are never touched.

They are set at two moments of a start:

1. before ``import vllm``: ``VLLM_LOGGING_CONFIG_PATH`` (vLLM configures logging at
   import);
2. before ``vllm.LLM(...)``: the rest (``vllm.envs`` reads them when asked, not at import).
   The translation decides the release-specific ones (``Translation.env``), the runtime
   the rest, and ``engine_environment`` joins them, refusing a variable decided twice.

To add a variable: a documented ``EngineVar`` member, a function that decides its value
from typed inputs, and its place in ``engine_environment``.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.env_patch import EnvPatch
from aot_core.spec import CompileSpec

from aot_vllm.parallel import World
from aot_vllm.runtime_options import RuntimeOptions

__all__ = [
    "CompileCache",
    "CompileCacheChoice",
    "EngineVar",
    "EnvPatch",
    "ThreadBinding",
    "aot_compile",
    "aot_load_fix",
    "cache_root",
    "choose_compile_cache",
    "compile_cache_disabled",
    "compile_cache_switch",
    "cpu_kv_cache_space",
    "cpu_threads_bind",
    "cpu_warmup_tokens",
    "engine_environment",
    "inductor_tuning",
    "log_capture",
    "runs_inline",
]


class EngineVar(enum.StrEnum):
    """The environment variables aot-vllm sets for an engine."""

    VLLM_CACHE_ROOT = "VLLM_CACHE_ROOT"
    """vLLM's cache root (compiled graphs, AOT artifacts, model-inspection results): the
    spec's ``cache_dir``, which the runtime makes the cache entry's ``files/vllm``, so no
    compiled code is shared with other specs or with ``~/.cache/vllm``. Not
    ``compilation_config.cache_dir``: vLLM appends no hash to that, and the AOT path
    ignores it."""

    TORCHINDUCTOR_CACHE_DIR = "TORCHINDUCTOR_CACHE_DIR"
    """Inductor's FX-graph and kernel cache: the entry's ``files/inductor``. On CPU vLLM
    compiles the whole model with Inductor, so this holds all compiled code."""

    VLLM_USE_AOT_COMPILE = "VLLM_USE_AOT_COMPILE"
    """vLLM's AOT artifacts on or off (0.11.1+): ``backend_options.use_aot_compile``, else
    the compile-cache choice (``CompileCache``)."""

    VLLM_DISABLE_COMPILE_CACHE = "VLLM_DISABLE_COMPILE_CACHE"
    """``backend_options.disable_compile_cache``: vLLM neither reads nor writes its cache."""

    VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE = "VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE"
    """Autotuning of static compile sizes (0.11.0+; vLLM defaults it on): on for
    ``max-autotune``, off for ``default``, stated so the user's environment cannot change the
    effort the spec asked for."""

    VLLM_ENABLE_INDUCTOR_COORDINATE_DESCENT_TUNING = (
        "VLLM_ENABLE_INDUCTOR_COORDINATE_DESCENT_TUNING"
    )
    """Coordinate-descent tuning of static compile sizes; set with the autotune switch."""

    VLLM_CPU_KVCACHE_SPACE = "VLLM_CPU_KVCACHE_SPACE"
    """The CPU KV-cache size in whole GiB: before 0.20 the CPU worker reads it nowhere else
    (``backend_options.kv_cache_memory_bytes``, rounded up)."""

    VLLM_ENABLE_V1_MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"
    """"0" runs the engine core in this process (``engine_process = inline``: no spawn,
    counters readable), "1" in vLLM's engine processes."""

    VLLM_CPU_OMP_THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"
    """CPU cores per rank of a multi-rank CPU engine, "0|1" style (one core list per rank).
    vLLM's default "auto" gives each rank a NUMA node of its own and refuses a world larger
    than the NUMA nodes; where there are fewer nodes than ranks aot-vllm splits the cores
    this process may use (``cpu_threads_bind``). A value the user set is never replaced."""

    AOT_VLLM_AOT_LOAD_FIX = "AOT_VLLM_AOT_LOAD_FIX"
    """"1" turns on aot-vllm's vLLM plugin (``vllm_plugin``) in every engine process, so a
    CPU engine can reload its own AOT artifact (release fact ``aot_load_finalizes``). Set
    only with ``CompileCache.AOT`` on CPU; a plain vLLM run never sees the plugin act."""

    AOT_VLLM_WARMUP_TOKENS = "AOT_VLLM_WARMUP_TOKENS"
    """Dummy tokens in a warm CPU start's compile warm-up (``vllm_plugin``): the compiled code
    is loaded by a small step instead of a whole step's token budget. Set only on a warm
    start of a compiled, single-rank CPU engine whose KV-cache size aot-vllm passes (release
    fact ``cpu_warmup_shrinkable``); a plain vLLM run never sees the plugin act."""

    VLLM_LOGGING_CONFIG_PATH = "VLLM_LOGGING_CONFIG_PATH"
    """A logging config that keeps vLLM's console output (or the user's config) and adds
    aot-vllm's capture file, applied by every engine process."""


def _set(var: EngineVar, value: str) -> dict[str, str]:
    return {var.value: value}


# --------------------------------------------------------------------------- decisions


def cache_root(directory: str) -> dict[str, str]:
    """vLLM's cache root for an engine whose spec names ``directory``."""
    return _set(EngineVar.VLLM_CACHE_ROOT, directory)


def inductor_tuning(*, on: bool) -> dict[str, str]:
    """Both Inductor tuning switches, on (``max-autotune``) or off (``default``)."""
    value = "1" if on else "0"
    return {
        **_set(EngineVar.VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE, value),
        **_set(EngineVar.VLLM_ENABLE_INDUCTOR_COORDINATE_DESCENT_TUNING, value),
    }


def aot_compile(*, on: bool) -> dict[str, str]:
    """vLLM's AOT compile on or off."""
    return _set(EngineVar.VLLM_USE_AOT_COMPILE, "1" if on else "0")


def aot_load_fix() -> dict[str, str]:
    """aot-vllm's plugin supplies the AOT loader's missing step in every engine process."""
    return _set(EngineVar.AOT_VLLM_AOT_LOAD_FIX, "1")


def compile_cache_switch(*, disabled: bool) -> dict[str, str]:
    """vLLM's compile cache off (``disabled``) or explicitly on."""
    return _set(EngineVar.VLLM_DISABLE_COMPILE_CACHE, "1" if disabled else "0")


def compile_cache_disabled() -> bool:
    """vLLM's compile cache is switched off in the current environment."""
    return os.environ.get(EngineVar.VLLM_DISABLE_COMPILE_CACHE.value, "0") == "1"


def cpu_kv_cache_space(gib: int) -> dict[str, str]:
    """The CPU KV-cache size for releases that read it from the environment alone."""
    return _set(EngineVar.VLLM_CPU_KVCACHE_SPACE, str(gib))


WARMUP_TOKENS = 16
"""Dummy tokens in a warm CPU start's compile warm-up: more than one, so the step is not a
size Dynamo specializes on, and small beside any real step."""


def cpu_warmup_tokens(
    *, shrinkable: bool, is_cpu: bool, compiles: bool, ranks: int, kv_sized: bool, warm: bool
) -> dict[str, str]:
    """The small compile warm-up of a warm CPU start, where nothing needs vLLM's own.

    ``shrinkable``: the release fact ``cpu_warmup_shrinkable``; ``kv_sized``: the engine is
    given its KV-cache size, so the warm-up's memory sizes nothing; ``warm``: the cache
    entry is intact, so the step loads compiled code rather than compiling it (a cold start
    keeps vLLM's warm-up, so what it compiles is unchanged). One rank only: a pipeline
    stage allocates its intermediate buffers in that step.
    """
    if shrinkable and is_cpu and compiles and ranks == 1 and kv_sized and warm:
        return _set(EngineVar.AOT_VLLM_WARMUP_TOKENS, str(WARMUP_TOKENS))
    return {}


def log_capture(config_file: Path | None) -> dict[str, str]:
    """The logging config every engine process applies (nothing when capture is off)."""
    return {} if config_file is None else _set(EngineVar.VLLM_LOGGING_CONFIG_PATH, str(config_file))


@dataclass(frozen=True, kw_only=True)
class ThreadBinding:
    """How the ranks of a CPU engine are bound to cores, and who chose it."""

    value: str
    """``VLLM_CPU_OMP_THREADS_BIND`` as the engine sees it ("auto" when unset)."""

    chosen_by: str
    """"user" (their variable, kept), "aot-vllm" (split from the allowed cores) or "vllm"
    (its NUMA-node default, which fits)."""

    env: Mapping[str, str]
    """What aot-vllm sets (empty unless it chose)."""

    note: str
    """One line for the stats notes."""


def cpu_threads_bind(*, ranks: int, cores: Sequence[int], numa_nodes: int) -> ThreadBinding:
    """The thread binding of a CPU engine with ``ranks`` worker processes.

    ``cores``: the cores this process may use (its affinity); ``numa_nodes``: how many NUMA
    nodes hold them. The user's ``VLLM_CPU_OMP_THREADS_BIND`` wins; else vLLM's "auto" is
    kept where it works (a NUMA node per rank); else the cores are split into ``ranks``
    equal contiguous groups (the remainder stays free for the engine's other processes).
    """
    var = EngineVar.VLLM_CPU_OMP_THREADS_BIND
    user = os.environ.get(var.value)
    if user:
        note = f"CPU thread binding: the user's {var.value}={user!r} is kept"
        return ThreadBinding(value=user, chosen_by="user", env={}, note=note)
    if numa_nodes >= ranks:
        note = (
            f"CPU thread binding: vLLM's default ({var.value}=auto, one of the {numa_nodes} "
            f"NUMA nodes per rank)"
        )
        return ThreadBinding(value="auto", chosen_by="vllm", env={}, note=note)
    per = len(cores) // ranks
    value = "|".join(_core_list(sorted(cores)[i * per : (i + 1) * per]) for i in range(ranks))
    note = (
        f"CPU thread binding: {var.value}={value!r} set by aot-vllm ({per} of the "
        f"{len(cores)} allowed core(s) per rank), because vLLM's default binds one NUMA node "
        f"per rank and this machine gives the process {numa_nodes} for {ranks} ranks"
    )
    return ThreadBinding(value=value, chosen_by="aot-vllm", env=_set(var, value), note=note)


def _core_list(cores: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the form vLLM parses in every release)."""
    runs: list[list[int]] = []
    for core in cores:
        if runs and core == runs[-1][-1] + 1:
            runs[-1].append(core)
        else:
            runs.append([core])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def runs_inline(runtime: RuntimeOptions, spec: CompileSpec) -> bool:
    """Whether the engine core runs in this process: as asked, else with a single device."""
    if runtime.engine_process is not None:
        return runtime.engine_process == "inline"
    return World.of(spec).size == 1


class CompileCache(enum.StrEnum):
    """Where an engine's compiled code is cached and reloaded from (README: "The compile cache")."""

    NONE = "none"
    """Nothing is compiled (``compile_mode = "none"``)."""

    INDUCTOR = "inductor"
    """Inductor's FX-graph cache (``VLLM_USE_AOT_COMPILE=0`` where the release has AOT)."""

    AOT = "aot"
    """vLLM's AOT artifacts (``VLLM_USE_AOT_COMPILE=1``)."""

    VLLM_DEFAULT = "vllm-default"
    """The release's own default, environment unchanged (GPUs, until an AOT load fails)."""


@dataclass(frozen=True, kw_only=True)
class CompileCacheChoice:
    """The compile cache picked for one start, and what selects it."""

    cache: CompileCache
    """The cache the engine uses."""

    env: Mapping[str, str]
    """Variables that select it (empty when the translation or the default already does)."""

    note: str = ""
    """Why, for the stats notes, when it is not what the user asked for in so many words."""


def choose_compile_cache(
    runtime: RuntimeOptions,
    *,
    spec: CompileSpec,
    has_aot_compile: bool,
    aot_load_finalizes: bool,
    is_cpu: bool,
    previous: Mapping[str, Any],
) -> CompileCacheChoice:
    """Which compile cache the engine uses (``backend_options.compile_cache``, default auto).

    ``previous`` is the cache entry's record of earlier starts: an AOT artifact that failed
    to load there sends later starts to Inductor's cache. An AOT start on CPU turns on the
    plugin that lets the release reload its artifact (``aot_load_finalizes``).
    """
    choice = _asked_or_auto(
        runtime, spec=spec, has_aot_compile=has_aot_compile, is_cpu=is_cpu, previous=previous
    )
    if choice.cache is CompileCache.AOT and is_cpu and aot_load_finalizes:
        return dataclasses.replace(choice, env={**choice.env, **aot_load_fix()})
    return choice


def _asked_or_auto(
    runtime: RuntimeOptions,
    *,
    spec: CompileSpec,
    has_aot_compile: bool,
    is_cpu: bool,
    previous: Mapping[str, Any],
) -> CompileCacheChoice:
    if not spec.compiles:
        return CompileCacheChoice(cache=CompileCache.NONE, env={})
    if not has_aot_compile:
        return CompileCacheChoice(cache=CompileCache.INDUCTOR, env={})
    if "use_aot_compile" in spec.backend_options:
        # The translation sets VLLM_USE_AOT_COMPILE from the option itself.
        on = bool(spec.backend_options["use_aot_compile"])
        return CompileCacheChoice(cache=CompileCache.AOT if on else CompileCache.INDUCTOR, env={})
    if runtime.compile_cache == "aot":
        return CompileCacheChoice(cache=CompileCache.AOT, env=aot_compile(on=True))
    if runtime.compile_cache == "inductor":
        return CompileCacheChoice(cache=CompileCache.INDUCTOR, env=aot_compile(on=False))
    return _auto_compile_cache(is_cpu=is_cpu, previous=previous, ranks=World.of(spec).size)


def _auto_compile_cache(
    *, is_cpu: bool, previous: Mapping[str, Any], ranks: int
) -> CompileCacheChoice:
    """On CPU, one rank: vLLM's AOT artifact, whose warm start loads the traced and compiled
    model without tracing it again with Dynamo (8 of the 11 s a warm SmolLM2 start spent on
    the Inductor path here). Several ranks, an entry whose AOT artifact failed to load, or
    ``VLLM_PLUGINS`` leaving out the plugin that reloads it on CPU: Inductor's cache."""
    failure = previous.get("aot_load_failure")
    if isinstance(failure, dict):
        note = (
            "compile cache: Inductor's FX-graph cache, because this entry's AOT artifact "
            f"failed to load under vLLM {failure.get('vllm_version')} "
            f"({failure.get('reason')})"
        )
        return CompileCacheChoice(cache=CompileCache.INDUCTOR, env=aot_compile(on=False), note=note)
    if not is_cpu:
        return CompileCacheChoice(cache=CompileCache.VLLM_DEFAULT, env={})
    why_not = _why_not_aot_on_cpu(ranks)
    if why_not:
        note = (
            "compile cache: Inductor's FX-graph cache (VLLM_USE_AOT_COMPILE=0): on CPU vLLM "
            f"compiles the whole model with Inductor, so that cache holds all compiled code; "
            f"not vLLM's AOT artifact, because {why_not}"
        )
        return CompileCacheChoice(cache=CompileCache.INDUCTOR, env=aot_compile(on=False), note=note)
    note = (
        "compile cache: vLLM's AOT artifact (VLLM_USE_AOT_COMPILE=1): a warm start loads the "
        "compiled model without tracing it with Dynamo again; backend_options.compile_cache "
        "= 'inductor' chooses Inductor's FX-graph cache"
    )
    return CompileCacheChoice(cache=CompileCache.AOT, env=aot_compile(on=True), note=note)


def _why_not_aot_on_cpu(ranks: int) -> str:
    """Why a CPU start keeps Inductor's cache, or "" when vLLM's AOT artifact is used."""
    if ranks > 1:
        return f"{ranks} ranks (the AOT path is run by the engine suite for one rank only)"
    plugins = os.environ.get("VLLM_PLUGINS")
    if plugins is not None and "aot_vllm" not in {p.strip() for p in plugins.split(",")}:
        return "VLLM_PLUGINS leaves out aot_vllm, whose plugin lets vLLM reload it on CPU"
    return ""


# ------------------------------------------------------------------- the engine's environment


def engine_environment(
    *,
    translated: Mapping[str, str],
    compile_cache: CompileCacheChoice,
    inductor_dir: Path,
    inline: bool,
    threads_bind: ThreadBinding | None = None,
    warmup: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Everything set before ``vllm.LLM(...)``: the translation's variables and the runtime's.

    Each variable is decided once; two decisions for one variable are a bug, refused here.
    """
    parts: tuple[Mapping[str, str], ...] = (
        translated,
        compile_cache.env,
        _set(EngineVar.TORCHINDUCTOR_CACHE_DIR, str(inductor_dir)),
        _set(EngineVar.VLLM_ENABLE_V1_MULTIPROCESSING, "0" if inline else "1"),
        threads_bind.env if threads_bind is not None else {},
        warmup or {},
    )
    out: dict[str, str] = {}
    for part in parts:
        for name, value in part.items():
            if name in out and out[name] != value:
                raise RuntimeError(f"aot-vllm decided {name} twice ({out[name]!r}, {value!r})")
            out[name] = value
    return out
