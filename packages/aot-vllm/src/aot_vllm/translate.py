"""Spelling a ``CompileSpec`` for one vLLM release: ``translate(spec) -> Translation``.

``translate`` turns a backend-neutral spec into the keyword arguments for
``vllm.LLM(**kwargs)`` plus the environment variables that must be set before vLLM
starts, for the release that is installed (0.10.2 up to 0.33) or a named one. What the
release accepts comes from ``releases.resolve_release`` (its fact table and its classes);
which variables mean what comes from ``engine_env``; the option checks from ``options``.

Rules it enforces, because vLLM itself does not:

* never pass a key a release does not know: 0.10.2 silently drops every
  ``compilation_config`` key from the first unknown one on, 0.11-0.15 raise a bare
  ``StopIteration``, later ones raise ``ValueError``;
* never pass ``max_num_partial_prefills`` / ``max_long_partial_prefills`` (a non-default
  value fails in 0.10.2-0.26, the fields are gone from 0.27);
* never use ``enforce_eager`` to mean "no CUDA graphs": from 0.17 it also turns
  compilation off; "no CUDA graphs" is ``cudagraph_mode="NONE"``;
* a setting the release cannot honour (chunked prefill off before 0.11.1, AOT compile
  before 0.11.1, ...) raises ``SpecError`` naming the release and the setting, or becomes
  a warning in ``Translation.warnings`` when ``best_effort=True``. Nothing is dropped
  without a word.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

from aot_vllm import engine_env
from aot_vllm.engine_options import check_engine_options
from aot_vllm.releases import (
    NEWEST_KNOWN,
    CompileLevel,
    InstalledClasses,
    Release,
    ReleaseFacts,
    format_version,
    parse_version,
    resolve_release,
)

__all__ = ["Translation", "scheduler_args", "translate"]

_PARTIAL_PREFILL_ARGS = ("max_num_partial_prefills", "max_long_partial_prefills")
_MEMORY_ARGS = ("gpu_memory_utilization", "kv_cache_memory_bytes")
_SCHEDULER_FIELDS = ("max_num_batched_tokens", "max_num_seqs", "max_model_len")


@dataclass(frozen=True, kw_only=True)
class Translation:
    """A ``CompileSpec`` spelled for one vLLM release."""

    llm_kwargs: dict[str, Any]
    """Keyword arguments for ``vllm.LLM(model=..., **llm_kwargs)`` (model not included)."""

    env: dict[str, str]
    """Environment variables to set before the engine starts (see ``engine_env``)."""

    warnings: tuple[str, ...]
    """Settings that were adapted or could not be honoured (best effort), one per line."""

    vllm_version: str
    """The vLLM release translated for, as its package reports it."""

    checked_against_classes: bool = True
    """True when keys were checked against the installed release's own classes."""

    release: Release
    """The release and the facts the translation used (the runtime reads its facts here)."""


@dataclass(kw_only=True)
class _Spelling:
    """The state of one translation: inputs, facts, and what has been produced so far."""

    spec: CompileSpec
    """The spec being spelled."""

    options: dict[str, Any]
    """Its engine options, checked (``VLLMOptions.engine``, or ``check_engine_options``)."""

    release: Release
    """The release spelled for, with its facts."""

    best_effort: bool
    """Turn settings the release cannot honour into warnings instead of errors."""

    cpu: bool = False
    """The engine runs on vLLM's CPU platform."""

    cc: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``compilation_config`` so far."""

    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Other ``vllm.LLM`` keyword arguments so far."""

    env: dict[str, str] = dataclasses.field(default_factory=dict)
    """Environment variables so far (each from an ``engine_env`` function)."""

    warnings: list[str] = dataclasses.field(default_factory=list)
    """Adaptations and, under best effort, refusals, in the order they happened."""

    @property
    def facts(self) -> ReleaseFacts:
        """What the release accepts and does."""
        return self.release.facts

    @property
    def version(self) -> str:
        """The release, for messages."""
        return self.release.version

    def cannot(self, setting: str, why: str, fix: str, *, field: str | None = None) -> None:
        """A setting this release cannot honour: an error, or a warning under best effort."""
        message = f"vLLM {self.version} cannot honour {setting}: {why}"
        if self.best_effort:
            self.warnings.append(f"{message}; best effort goes on without it. {fix}")
            return
        raise SpecError(f"{message}. {fix}", field=field)

    def note(self, message: str) -> None:
        """Something the user should know that is not a failure."""
        self.warnings.append(message)


def translate(
    spec: CompileSpec,
    *,
    options: Mapping[str, Any] | None = None,
    vllm_version: str | None = None,
    best_effort: bool = False,
    cpu: bool = False,
) -> Translation:
    """Spell ``spec`` for one vLLM release: the installed one unless ``vllm_version`` is given.

    ``options``: the spec's engine options as a start validated them (``VLLMOptions.engine``
    plus the KV-cache size aot-vllm chose); None checks ``spec.backend_options`` here.

    ``cpu``: the engine runs on vLLM's CPU platform, where releases before 0.20 size the
    KV cache only from ``VLLM_CPU_KVCACHE_SPACE``.

    When ``vllm_version`` names a release other than the installed one (or nothing is
    installed), the built-in fact table is used alone and ``checked_against_classes`` is
    False. Raises ``SpecError`` for a setting the release cannot honour unless
    ``best_effort``, which turns those into ``Translation.warnings``.
    """
    release = resolve_release(vllm_version)
    s = _Spelling(
        spec=spec,
        options=dict(options) if options is not None else check_engine_options(spec),
        release=release,
        best_effort=best_effort,
        cpu=cpu,
    )
    _note_release(s)
    for step in _STEPS:
        step(s)
    if release.classes is not None:
        _check_against_classes(s, release.classes)
    kwargs = dict(s.kwargs)
    kwargs["compilation_config"] = s.cc
    return Translation(
        llm_kwargs=kwargs,
        env=s.env,
        warnings=tuple(s.warnings),
        vllm_version=release.version,
        checked_against_classes=release.classes is not None,
        release=release,
    )


def _note_release(s: _Spelling) -> None:
    release = s.release
    if release.classes is None:
        why = (
            "no vLLM is installed"
            if release.installed is None
            else f"the installed release is {release.installed}"
        )
        s.note(
            f"translated for vLLM {release.version} from the built-in table only: {why}, "
            "so keys were not checked against that release's classes"
        )
    if parse_version(release.version) > NEWEST_KNOWN:
        s.note(
            f"vLLM {release.version} is newer than {format_version(NEWEST_KNOWN)}, the newest "
            "release this translation was checked against; field names were read from its classes"
        )


# --------------------------------------------------------------------------- compilation


def _compile_level(s: _Spelling) -> None:
    level = CompileLevel.VLLM_COMPILE if s.spec.compiles else CompileLevel.NONE
    s.cc[s.facts.compile_key] = int(level)


def _graph_mode(s: _Spelling) -> None:
    spec = s.spec
    graph_mode = s.options.get("cudagraph_mode")
    if not spec.cuda_graphs:
        if graph_mode not in (None, "NONE"):
            raise SpecError(
                f"backend_options.cudagraph_mode: {graph_mode!r} contradicts cuda_graphs = "
                "false; drop the option or set cuda_graphs = true",
                field="backend_options",
            )
        graph_mode = "NONE"
    elif not spec.compiles:
        _graphs_without_compile(s, graph_mode)
        graph_mode = "NONE"
    if graph_mode is not None:
        s.cc["cudagraph_mode"] = graph_mode
    if spec.cuda_graphs and spec.compiles and spec.cuda_graph_sizes:
        s.cc["cudagraph_capture_sizes"] = list(spec.cuda_graph_sizes)


def _graphs_without_compile(s: _Spelling, graph_mode: str | None) -> None:
    # "none" stays fully eager in every release: piecewise graphs need vLLM's compile
    # (0.12+ override them to NONE without it), and eager FULL-graph capture depends on
    # the release and attention backend. A raw compilation_config override can still ask.
    if graph_mode not in (None, "NONE") or s.spec.cuda_graph_sizes:
        s.cannot(
            "CUDA graphs with compile_mode 'none'",
            "compile_mode 'none' runs vLLM fully eager, and aot-vllm captures CUDA graphs "
            "only of the compiled model",
            "Set cuda_graphs = false, or pick compile_mode 'default'.",
            field="cuda_graphs",
        )
    else:
        s.note("compile_mode 'none': no CUDA graphs are captured without compiling")


def _max_capture_size(s: _Spelling) -> None:
    max_size = s.options.get("max_cudagraph_capture_size")
    if max_size is None:
        return
    if not s.spec.cuda_graphs:
        raise SpecError(
            "backend_options.max_cudagraph_capture_size: given but cuda_graphs is false",
            field="backend_options",
        )
    if s.spec.cuda_graph_sizes:
        raise SpecError(
            "backend_options.max_cudagraph_capture_size: give either cuda_graph_sizes or "
            "a maximum capture size, not both",
            field="backend_options",
        )
    if s.facts.max_capture_key is not None:
        s.cc[s.facts.max_capture_key] = max_size
    elif s.facts.engine_capture_sizes_key == "cuda_graph_sizes":
        # <=0.11.0: one entry N in SchedulerConfig.cuda_graph_sizes expands to
        # [1, 2, 4, 8, 16, ..., N]; that is how those releases take a maximum.
        s.kwargs["cuda_graph_sizes"] = [max_size]
    else:  # pragma: no cover - no such release is known
        s.cannot(
            "max_cudagraph_capture_size",
            "no field takes it",
            "Give cuda_graph_sizes instead.",
            field="backend_options",
        )


def _compile_sizes_and_effort(s: _Spelling) -> None:
    spec, facts = s.spec, s.facts
    if spec.compiles and spec.compile_sizes:
        s.cc["compile_sizes"] = list(spec.compile_sizes)
    if spec.compile_mode == "max-autotune":
        s.cc["inductor_compile_config"] = {"max_autotune": True, "coordinate_descent_tuning": True}
        if facts.has_max_autotune_env:
            s.env.update(engine_env.inductor_tuning(on=True))
    elif spec.compile_mode == "default" and facts.has_max_autotune_env:
        # vLLM's own default autotunes static compile sizes; "default" effort means none.
        s.env.update(engine_env.inductor_tuning(on=False))
    elif spec.compile_mode == "default" and spec.compile_sizes:
        s.note(
            f"vLLM {s.version} always autotunes (max_autotune) the static compile_sizes "
            f"{list(spec.compile_sizes)}; 'default' effort cannot switch that off before 0.11.0"
        )


def _enforce_eager(s: _Spelling) -> None:
    eager = s.options.get("enforce_eager")
    if eager is None:
        return
    if eager and s.spec.compiles:
        raise SpecError(
            "backend_options.enforce_eager: true contradicts compile_mode "
            f"{s.spec.compile_mode!r} (from vLLM 0.17 it turns compilation off; before, "
            "an explicit compile level overrides it). Use compile_mode = 'none' for eager, "
            "or cuda_graphs = false for compiled without CUDA graphs",
            field="backend_options",
        )
    s.kwargs["enforce_eager"] = eager


def _optimization_level(s: _Spelling) -> None:
    level = s.options.get("optimization_level")
    if level is None:
        return
    if s.facts.has_optimization_level:
        s.kwargs["optimization_level"] = level
    else:
        s.cannot(
            f"optimization_level={level}",
            "the -O levels arrived in vLLM 0.12",
            "Drop backend_options.optimization_level or upgrade vLLM to >=0.12.",
            field="backend_options",
        )


def _compile_cache_options(s: _Spelling) -> None:
    aot = s.options.get("use_aot_compile")
    if aot is not None:
        if s.facts.has_aot_compile:
            s.env.update(engine_env.aot_compile(on=aot))
        elif aot:
            s.cannot(
                "use_aot_compile=true",
                "AOT compile arrived in vLLM 0.11.1",
                "Drop backend_options.use_aot_compile or upgrade vLLM to >=0.11.1.",
                field="backend_options",
            )
    disabled = s.options.get("disable_compile_cache")
    if disabled is not None:
        s.env.update(engine_env.compile_cache_switch(disabled=disabled))


# --------------------------------------------------------------------------- scheduler, resources


def scheduler_args(spec: CompileSpec) -> dict[str, Any]:
    """The scheduler's engine arguments for ``spec``, as every release spells them.

    ``translate`` adds the release's own limits (chunked prefill off before 0.11.1).
    """
    out: dict[str, Any] = {"enable_chunked_prefill": spec.chunked_prefill}
    for name in _SCHEDULER_FIELDS:
        value = getattr(spec, name)
        if value is not None:
            out[name] = value
    if spec.long_prefill_token_threshold:
        out["long_prefill_token_threshold"] = spec.long_prefill_token_threshold
    return out


def _scheduler(s: _Spelling) -> None:
    args = scheduler_args(s.spec)
    if not s.spec.chunked_prefill and not s.facts.honours_chunked_prefill_off:
        s.cannot(
            "enable_chunked_prefill=False",
            "its V1 engine turns chunked prefill on for every generative model",
            "Set chunked_prefill = true, or upgrade vLLM to >=0.11.1.",
            field="chunked_prefill",
        )
        args["enable_chunked_prefill"] = True
    s.kwargs.update(args)


def _resources(s: _Spelling) -> None:
    spec = s.spec
    s.kwargs["dtype"] = spec.dtype
    s.kwargs["tensor_parallel_size"] = spec.tensor_parallel_size
    s.kwargs["pipeline_parallel_size"] = spec.pipeline_parallel_size
    if s.cpu and not s.facts.cpu_kv_cache_arg:
        _cpu_kv_cache_env(s)
    else:
        s.kwargs.update({k: s.options[k] for k in _MEMORY_ARGS if k in s.options})
    if spec.cache_dir is not None:
        s.env.update(engine_env.cache_root(spec.cache_dir))


def _cpu_kv_cache_env(s: _Spelling) -> None:
    """Before 0.20 the CPU worker reads its KV-cache size from the environment alone."""
    options = s.options
    if "gpu_memory_utilization" in options:
        s.cannot(
            f"gpu_memory_utilization={options['gpu_memory_utilization']} on CPU",
            "its CPU worker sizes the KV cache from VLLM_CPU_KVCACHE_SPACE only",
            "Use backend_options.kv_cache_memory_bytes, or upgrade vLLM to >=0.20.",
            field="backend_options",
        )
    nbytes = options.get("kv_cache_memory_bytes")
    if nbytes is None:
        return
    gib = -(-int(nbytes) // (1 << 30))
    if gib << 30 != nbytes:
        s.note(
            f"kv_cache_memory_bytes={nbytes} rounded up to {gib} GiB: vLLM {s.version} on CPU "
            "takes the KV-cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE)"
        )
    s.env.update(engine_env.cpu_kv_cache_space(gib))


def _parallel(s: _Spelling) -> None:
    """The executor for several ranks, and what the CPU platform cannot run."""
    spec = s.spec
    executor = s.options.get("distributed_executor_backend")
    if executor == "ray" and s.cpu:
        _ray_on_cpu(s)
        executor = "mp"
    if (
        s.cpu
        and spec.pipeline_parallel_size > 1
        and not spec.compiles
        and s.facts.cpu_eager_skips_warmup
        and "kv_cache_memory_bytes" in s.options
    ):
        s.cannot(
            f"pipeline_parallel_size={spec.pipeline_parallel_size} with compile_mode 'none' on CPU",
            "its CPU worker skips the warm-up run in eager mode when the KV-cache size is "
            "given, so a pipeline stage never allocates its buffer for the activations it "
            "receives and the first request fails",
            "Use compile_mode 'default' (its warm-up allocates the buffers), or "
            "tensor_parallel_size instead of pipeline stages.",
            field="pipeline_parallel_size",
        )
    if spec.tensor_parallel_size * spec.pipeline_parallel_size > 1 or executor is not None:
        # Stated even when it is vLLM's default: inside a Ray placement group (a Ray actor)
        # vLLM would otherwise pick Ray by itself.
        s.kwargs["distributed_executor_backend"] = executor or "mp"


def _ray_on_cpu(s: _Spelling) -> None:
    if s.facts.cpu_ray_executor == "mp":
        why = "its CPU platform replaces Ray with its multiprocessing executor (with a warning)"
    else:
        why = (
            "its CPU platform declares no Ray device, so vLLM's Ray executor raises "
            "'current platform cpu does not support ray'"
        )
    s.cannot(
        "distributed_executor_backend='ray' on CPU",
        why,
        "Use 'mp' (the default) on CPU; to spread work over a Ray cluster of CPU machines, "
        "run one engine per node from an exported artifact (README: Scale-out).",
        field="backend_options",
    )


# --------------------------------------------------------------------------- raw overrides


def _compilation_overrides(s: _Spelling) -> None:
    for raw_key, value in s.options.get("compilation_config", {}).items():
        key = _cc_spelling(raw_key, s)
        if key is None:
            continue
        if key in s.cc and s.cc[key] != value:
            s.note(
                f"backend_options.compilation_config.{raw_key}={value!r} replaces "
                f"{key}={s.cc[key]!r} derived from the spec"
            )
        s.cc[key] = value


def _engine_arg_overrides(s: _Spelling) -> None:
    for key, value in s.options.get("engine_args", {}).items():
        refused = _refused_engine_arg(key)
        if refused is not None:
            raise SpecError(
                f"backend_options.engine_args.{key}: {refused}", field="backend_options"
            )
        if key in s.kwargs and s.kwargs[key] != value:
            raise SpecError(
                f"backend_options.engine_args.{key}: set by the spec already "
                f"({s.kwargs[key]!r}); change the spec field instead",
                field="backend_options",
            )
        s.kwargs[key] = value


def _refused_engine_arg(key: str) -> str | None:
    """Why an engine argument may not be passed raw, or None."""
    if key in _PARTIAL_PREFILL_ARGS:
        return (
            "not supported; a non-default value fails in vLLM 0.10.2-0.26 and the argument "
            "is gone from 0.27. Remove it"
        )
    if key in _MEMORY_ARGS:
        return (
            f"use backend_options.{key}, which is checked and spelled for the installed "
            "release (on CPU before vLLM 0.20 it becomes VLLM_CPU_KVCACHE_SPACE)"
        )
    if key == "compilation_config":
        return "use backend_options.compilation_config (a table of fields) instead"
    if key == "distributed_executor_backend":
        return (
            "use backend_options.distributed_executor_backend, which is checked against "
            "what the platform can run"
        )
    return None


# (the fact that must be true for the key to exist, why it does not, what to do instead)
_REMOVED_CC_KEYS: dict[str, tuple[str, str, str]] = {
    "use_cudagraph": (
        "has_legacy_cudagraph_flags",
        "it was removed in vLLM 0.11.1",
        "Use backend_options.cudagraph_mode (NONE, PIECEWISE, FULL, ...) instead.",
    ),
    "full_cuda_graph": (
        "has_legacy_cudagraph_flags",
        "it was removed in vLLM 0.11.1",
        "Use backend_options.cudagraph_mode (NONE, PIECEWISE, FULL, ...) instead.",
    ),
    "use_inductor": (
        "has_use_inductor",
        "it was removed in vLLM 0.12",
        "Use compilation_config.backend = 'inductor' or 'eager' instead.",
    ),
}


def _cc_spelling(key: str, s: _Spelling) -> str | None:
    """The release's name for a compilation_config key; None drops it (best effort)."""
    facts = s.facts
    removed = _REMOVED_CC_KEYS.get(key)
    if removed is not None and not getattr(facts, removed[0]):
        s.cannot(f"compilation_config.{key}", removed[1], removed[2], field="backend_options")
        return None
    new = _renamed_cc_key(key, facts)
    if new is None:
        s.cannot(
            f"compilation_config.{key}",
            "releases before 0.11.1 compute the largest capture size and do not let it be set",
            "Use backend_options.max_cudagraph_capture_size, which those releases take "
            "as cuda_graph_sizes = [N].",
            field="backend_options",
        )
    elif new != key:
        s.note(f"compilation_config.{key} is spelled {new} in vLLM {s.version}")
    return new


def _renamed_cc_key(key: str, facts: ReleaseFacts) -> str | None:
    """``key`` as the release spells it; None when the release cannot set it at all."""
    if key in ("max_capture_size", "max_cudagraph_capture_size"):
        return facts.max_capture_key
    if key == "level" and facts.compile_key == "mode" and not facts.level_alias:
        return "mode"
    if key == "mode" and facts.compile_key == "level":
        return "level"
    return key


_STEPS: tuple[Callable[[_Spelling], None], ...] = (
    _compile_level,
    _graph_mode,
    _max_capture_size,
    _compile_sizes_and_effort,
    _enforce_eager,
    _optimization_level,
    _compile_cache_options,
    _scheduler,
    _resources,
    _parallel,
    _compilation_overrides,
    _engine_arg_overrides,
)
"""The spelling, in order: later steps see (and may refuse to override) earlier results."""


# ------------------------------------------------------------------- checked against the release


def _check_against_classes(s: _Spelling, classes: InstalledClasses) -> None:
    """Refuse every key the installed release would drop, truncate at or choke on."""
    _check_cc_keys(s, classes)
    _check_engine_keys(s, classes)
    _check_graph_mode(s, classes)
    _check_env(s, classes)
    try:
        classes.compilation_config_cls(**s.cc)
    except Exception as exc:  # pydantic's ValidationError and vLLM's own checks
        raise SpecError(
            f"vLLM {classes.version} rejects compilation_config {s.cc!r}: {exc}",
            field="backend_options",
        ) from exc


def _check_cc_keys(s: _Spelling, classes: InstalledClasses) -> None:
    for key in [k for k in s.cc if k not in classes.cc_init_fields]:
        why = (
            "it is computed by vLLM and cannot be set"
            if key in classes.cc_all_fields
            else "CompilationConfig has no such field"
        )
        s.cannot(
            f"compilation_config.{key}",
            why,
            "Remove it from backend_options.compilation_config.",
            field="backend_options",
        )
        del s.cc[key]


def _check_engine_keys(s: _Spelling, classes: InstalledClasses) -> None:
    for key in [k for k in s.kwargs if k not in classes.engine_fields]:
        s.cannot(
            f"the engine argument {key}",
            "EngineArgs has no such field",
            "Remove it from backend_options.engine_args.",
            field="backend_options",
        )
        del s.kwargs[key]


def _check_graph_mode(s: _Spelling, classes: InstalledClasses) -> None:
    mode = s.cc.get("cudagraph_mode")
    if isinstance(mode, str) and mode.upper() not in classes.cudagraph_modes:
        s.cannot(
            f"cudagraph_mode={mode}",
            "its CUDAGraphMode has no such member",
            "Pick one of: " + ", ".join(sorted(classes.cudagraph_modes)) + ".",
            field="backend_options",
        )
        del s.cc["cudagraph_mode"]


def _check_env(s: _Spelling, classes: InstalledClasses) -> None:
    if not classes.env_vars:
        return
    for name in s.env:
        if name.startswith("VLLM_") and name not in classes.env_vars:
            s.cannot(
                f"the environment variable {name}",
                "vllm.envs does not define it",
                "Remove the backend option that sets it.",
                field="backend_options",
            )
