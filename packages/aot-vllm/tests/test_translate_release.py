"""Translation checked against the installed vLLM release's real classes.

The ``vllm_translations`` nox session runs this file once per vLLM release (0.10.2 ..
0.34), each in an import-only environment (``--no-deps`` vLLM beside a few light
packages). It needs ``from vllm.config import CompilationConfig`` and
``from vllm.engine.arg_utils import EngineArgs`` to import, and nothing else. The session
names the release it installed in ``AOT_EXPECT_VLLM``: the module skips as a whole only
where that is "none" (or unset, by hand), and fails where vLLM is installed but does not
import or is another release (release_check.py judges the counts).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.util
import inspect
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec
from aot_vllm import releases
from aot_vllm.readback import read_resolved_config, resolution_notes
from aot_vllm.releases import parse_version, release_facts
from aot_vllm.translate import Translation, translate

EXPECTED = os.environ.get("AOT_EXPECT_VLLM")
"""The release the session installed ("none": no vLLM); unset when run by hand."""


def _import_release(expected: str | None) -> tuple[ModuleType, ModuleType]:
    """vLLM's config modules, or a module-level skip only where no vLLM is expected.

    An ImportError is never a skip: a release whose config modules do not import (a
    dependency missing beside a --no-deps install) would otherwise pass as "nothing to
    check", which is how the no-vLLM baseline looks.
    """
    if importlib.util.find_spec("vllm") is None:
        if expected in (None, "none"):
            pytest.skip("no vLLM installed", allow_module_level=True)
        pytest.fail(f"AOT_EXPECT_VLLM={expected}, but no vllm package is installed", pytrace=False)
    if expected == "none":
        pytest.fail("AOT_EXPECT_VLLM=none, but a vllm package is importable", pytrace=False)
    try:
        import vllm

        config = importlib.import_module("vllm.config")
        args = importlib.import_module("vllm.engine.arg_utils")
    except ImportError as exc:
        failure = f"vLLM is installed but does not import: {type(exc).__name__}: {exc}"
    else:
        failure = ""
    if failure:  # outside the except block, so the report is this line, not a chain
        pytest.fail(failure, pytrace=False)
    found = str(getattr(vllm, "__version__", "unknown"))
    if expected is not None and parse_version(found) != parse_version(expected):
        pytest.fail(f"AOT_EXPECT_VLLM={expected}, but vLLM {found} is installed", pytrace=False)
    return config, args


vllm_config, arg_utils = _import_release(EXPECTED)
CompilationConfig = vllm_config.CompilationConfig
EngineArgs = arg_utils.EngineArgs


def _installed() -> releases.InstalledClasses:
    classes = releases.read_installed()
    assert classes is not None
    return classes


CLASSES = _installed()
VERSION = parse_version(CLASSES.version)
CC_FIELDS = {f.name: f for f in dataclasses.fields(CompilationConfig)}
ENGINE_FIELDS = {f.name for f in dataclasses.fields(EngineArgs)}

# Specs that exercise every branch of the translation that produces keys.
SPECS: dict[str, CompileSpec] = {
    "default": CompileSpec(),
    "eager": CompileSpec(compile_mode="none", cuda_graphs=False),
    "eager-enforced": CompileSpec(
        compile_mode="none", cuda_graphs=False, backend_options={"enforce_eager": True}
    ),
    "no-graphs": CompileSpec(cuda_graphs=False),
    "sizes": CompileSpec(
        cuda_graph_sizes=(1, 2, 4, 8),
        compile_sizes=(1, 8),
        max_num_batched_tokens=256,
        max_num_seqs=8,
        max_model_len=256,
        long_prefill_token_threshold=64,
    ),
    "max-autotune": CompileSpec(compile_mode="max-autotune", compile_sizes=(4,)),
    "max-capture": CompileSpec(backend_options={"max_cudagraph_capture_size": 16}),
    "graph-mode": CompileSpec(backend_options={"cudagraph_mode": "PIECEWISE"}),
    "chunked-off": CompileSpec(
        chunked_prefill=False, max_num_batched_tokens=512, max_model_len=512
    ),
    "resources": CompileSpec(
        dtype="float32",
        cache_dir="/tmp/aot-translate-test",
        backend_options={
            "gpu_memory_utilization": 0.5,
            "kv_cache_memory_bytes": 64 << 20,
            "use_aot_compile": False,
            "disable_compile_cache": True,
            "optimization_level": 2,
            "engine_args": {"load_format": "dummy", "skip_tokenizer_init": True},
        },
    ),
    "parallel": CompileSpec(
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
        backend_options={"distributed_executor_backend": "ray"},
    ),
    "overrides": CompileSpec(
        backend_options={
            "compilation_config": {"level": 3, "max_capture_size": 8, "cudagraph_num_of_warmups": 1}
        }
    ),
}


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only a tiny Llama config.json."""
    directory = tmp_path_factory.mktemp("tiny-config")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 260,
        "max_position_embeddings": 512,
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _normal(value: Any) -> Any:
    """Compare what went in with what the config holds (enums by name/int, lists as sets)."""
    if isinstance(value, enum.Enum):
        return value.name if not isinstance(value, int) else int(value)
    if isinstance(value, (list, tuple, set)):
        return sorted({_normal(v) for v in value})
    return value


def _translate_or_skip(name: str) -> Translation:
    try:
        return translate(SPECS[name], best_effort=True)
    except SpecError as exc:  # pragma: no cover - best effort never raises for these
        pytest.fail(f"{name}: {exc}")


def test_installed_release_is_in_range() -> None:
    assert release_facts(VERSION).version == VERSION
    assert VERSION >= (0, 10, 2)


def test_fact_table_agrees_with_the_classes() -> None:
    """Everything the table claims that a class can show, the installed release shows."""
    table = release_facts(VERSION)
    seen = releases.facts_from_classes(table, CLASSES)
    for name in (
        "compile_key",
        "level_alias",
        "max_capture_key",
        "has_legacy_cudagraph_flags",
        "has_use_inductor",
        "has_optimization_level",
        "has_partial_prefill_args",
        "has_aot_compile",
        "has_max_autotune_env",
    ):
        assert getattr(table, name) == getattr(seen, name), name
    # EngineArgs' CUDA-graph sizes field: the old name while it exists, then the new one.
    if table.engine_capture_sizes_key == "cuda_graph_sizes":
        assert "cuda_graph_sizes" in ENGINE_FIELDS
    else:
        assert "cuda_graph_sizes" not in ENGINE_FIELDS
        assert table.engine_capture_sizes_key in ENGINE_FIELDS
    assert set(releases.CUDAGRAPH_MODES) <= CLASSES.cudagraph_modes


def test_translation_uses_the_facts_the_classes_show() -> None:
    """One path: the facts a translation (and the runtime after it) uses are the classes'."""
    release = translate(CompileSpec()).release
    assert release.classes is CLASSES
    assert release.facts == releases.facts_from_classes(release_facts(VERSION), CLASSES)


@pytest.mark.parametrize("name", list(SPECS))
def test_compilation_config_accepted_with_every_key_kept(name: str) -> None:
    result = _translate_or_skip(name)
    assert result.checked_against_classes
    cc = result.llm_kwargs["compilation_config"]
    for key in cc:
        assert key in CC_FIELDS and CC_FIELDS[key].init, key
    # LLM() filters the dict with is_init_field (0.10.2 via filter(), which truncates at
    # an unknown key); a dict that survives that filter whole loses nothing.
    is_init_field = vllm_config.is_init_field  # what LLM() imports, in every release
    assert dict(filter(lambda kv: is_init_field(CompilationConfig, kv[0]), cc.items())) == cc
    built = CompilationConfig(**cc)
    for key, value in cc.items():
        got = getattr(built, key)
        if isinstance(value, dict):
            assert value.items() <= dict(got).items(), key
        else:
            assert _normal(got) == _normal(value), key


@pytest.mark.parametrize("name", list(SPECS))
def test_engine_args_accept_every_kwarg(name: str, config_dir: Path) -> None:
    result = _translate_or_skip(name)
    assert set(result.llm_kwargs) <= ENGINE_FIELDS, set(result.llm_kwargs) - ENGINE_FIELDS
    args = EngineArgs(model=str(config_dir), **result.llm_kwargs)
    for key, value in result.llm_kwargs.items():
        if key != "compilation_config":
            assert getattr(args, key) == value, key
    assert not {"max_num_partial_prefills", "max_long_partial_prefills"} & set(result.llm_kwargs)


@pytest.mark.parametrize("name", list(SPECS))
def test_env_vars_exist_in_this_release(name: str) -> None:
    result = _translate_or_skip(name)
    for var in result.env:
        if var.startswith("VLLM_") and var != "VLLM_CACHE_ROOT":
            assert var in CLASSES.env_vars, var


def test_compile_key_matches_release() -> None:
    cc = translate(CompileSpec()).llm_kwargs["compilation_config"]
    expected = "level" if VERSION < (0, 11, 1) else "mode"
    assert cc == {expected: 3}


def test_chunked_prefill_off_by_release() -> None:
    spec = SPECS["chunked-off"]
    if VERSION < (0, 11, 1):
        with pytest.raises(SpecError, match=rf"vLLM {VERSION[0]}\.{VERSION[1]}\.{VERSION[2]}"):
            translate(spec)
        assert translate(spec, best_effort=True).warnings
    else:
        assert translate(spec).llm_kwargs["enable_chunked_prefill"] is False


def test_max_capture_size_by_release() -> None:
    result = translate(SPECS["max-capture"])
    if "max_cudagraph_capture_size" in CC_FIELDS:
        assert result.llm_kwargs["compilation_config"]["max_cudagraph_capture_size"] == 16
        assert "cuda_graph_sizes" not in result.llm_kwargs
    else:
        assert not CC_FIELDS["max_capture_size"].init  # computed on these releases
        assert result.llm_kwargs["cuda_graph_sizes"] == [16]


def test_cpu_kv_cache_fact_matches_the_cpu_platform_source() -> None:
    """The CPU platform reads kv_cache_memory_bytes from 0.20; before, only its env var."""
    import importlib.util

    found = importlib.util.find_spec("vllm.platforms.cpu")
    assert found is not None and found.origin
    source = Path(found.origin).read_text(encoding="utf-8")
    reads_bytes = "cache_config.kv_cache_memory_bytes" in source
    assert release_facts(VERSION).cpu_kv_cache_arg == reads_bytes
    assert "VLLM_CPU_KVCACHE_SPACE" in source
    cpu = translate(CompileSpec(backend_options={"kv_cache_memory_bytes": 64 << 20}), cpu=True)
    if reads_bytes:
        assert cpu.llm_kwargs["kv_cache_memory_bytes"] == 64 << 20
    else:
        assert cpu.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        assert "kv_cache_memory_bytes" not in cpu.llm_kwargs


def _source(relative: str) -> str:
    """The text of one of the installed release's modules ("" when it has no such file)."""
    import importlib.util

    found = importlib.util.find_spec("vllm")
    assert found is not None and found.submodule_search_locations
    path = Path(next(iter(found.submodule_search_locations))) / relative
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def test_several_ranks_facts_match_the_releases_source() -> None:
    """What the CPU platform does with Ray, where it binds threads, when it skips warm-up,
    and the names aot-vllm reads per rank, from the release's own source files."""
    facts = release_facts(VERSION)
    cpu = _source("platforms/cpu.py")
    ray_utils = _source("v1/executor/ray_utils.py") or _source("executor/ray_utils.py")
    falls_back = "fallback to mp" in cpu
    assert facts.cpu_ray_executor == ("mp" if falls_back else "refused")
    assert "ray_device_key" not in cpu  # the CPU platform never declares a Ray device
    assert "does not support ray" in ray_utils
    worker = _source("v1/worker/cpu_worker.py")
    executor = _source("utils/ompmultiprocessing.py")
    in_worker = "VLLM_CPU_OMP_THREADS_BIND" in worker
    assert facts.cpu_threads_bind_in == ("worker" if in_worker else "executor")
    assert in_worker or "VLLM_CPU_OMP_THREADS_BIND" in executor
    assert "VLLM_CPU_OMP_THREADS_BIND" in CLASSES.env_vars
    assert facts.cpu_eager_skips_warmup == ("_should_warm_up_model" in worker)
    # The warm-up aot-vllm's plugin shrinks on a warm start: profile_run over the runner's
    # token budget, its memory read only when the KV-cache size is not given.
    if facts.cpu_warmup_shrinkable:
        runner = _source("v1/worker/cpu_model_runner.py")
        assert "def warming_up_model" in runner and "self.profile_run()" in runner
        assert "self._dummy_run(\n            self.max_num_tokens" in _source(
            "v1/worker/gpu_model_runner.py"
        )
        assert "kv_cache_memory_bytes is not None" in worker
    # The AOT loader's last step, which aot-vllm's plugin supplies on CPU (vllm_plugin).
    decorators = _source("compilation/decorators.py")
    assert facts.aot_load_finalizes == (".finalize_loading(" in decorators)
    if facts.aot_load_finalizes:
        assert "load_compiled_function" in decorators
    assert "distributed_executor_backend" in ENGINE_FIELDS
    # Read per rank at run time: vLLM's padding of the vocabulary, the line that maps a
    # worker's pid to its rank, and the per-rank compile-cache directory.
    assert "DEFAULT_VOCAB_PADDING_SIZE = 64" in _source(
        "model_executor/layers/vocab_parallel_embedding.py"
    )
    assert "world_size=%d rank=%d local_rank=%d" in _source("distributed/parallel_state.py")
    assert 'f"rank_{rank}_{dp_rank}"' in _source("compilation/backends.py")


def test_server_modules_match_the_releases_source() -> None:
    """Each server function aot serve imports is defined where the facts say (0.27+)."""
    modules = release_facts(VERSION).server_modules
    if modules is None:
        assert VERSION < (0, 27, 0)
        return
    for name, module in modules.functions().items():
        relative = module.removeprefix("vllm.").replace(".", "/") + ".py"
        assert f"def {name}(" in _source(relative), f"{module} does not define {name}"


def test_release_refuses_what_it_cannot_honour() -> None:
    unknown = CompileSpec(backend_options={"compilation_config": {"not_a_field": 1}})
    with pytest.raises(SpecError, match="CompilationConfig has no such field"):
        translate(unknown)
    with pytest.raises(SpecError, match="EngineArgs has no such field"):
        translate(CompileSpec(backend_options={"engine_args": {"not_an_arg": 1}}))
    removed = "use_cudagraph" if "use_cudagraph" not in CC_FIELDS else "not_a_field"
    with pytest.raises(SpecError, match=removed):
        translate(CompileSpec(backend_options={"compilation_config": {removed: True}}))
    if "optimization_level" not in ENGINE_FIELDS:
        with pytest.raises(SpecError, match="optimization_level"):
            translate(CompileSpec(backend_options={"optimization_level": 1}))
    if "VLLM_USE_AOT_COMPILE" not in CLASSES.env_vars:
        with pytest.raises(SpecError, match="use_aot_compile"):
            translate(CompileSpec(backend_options={"use_aot_compile": True}))


def test_bad_value_is_refused_before_any_engine() -> None:
    spec = CompileSpec(backend_options={"compilation_config": {"cudagraph_num_of_warmups": "x"}})
    with pytest.raises(SpecError, match="rejects compilation_config"):
        translate(spec)


def test_read_resolved_config_on_real_config_classes() -> None:
    from types import SimpleNamespace

    cc = translate(SPECS["sizes"]).llm_kwargs["compilation_config"]
    scheduler_cls = vllm_config.SchedulerConfig
    wanted: dict[str, Any] = {
        "max_num_batched_tokens": 256,
        "max_num_seqs": 8,
        "max_model_len": 256,
        "enable_chunked_prefill": True,
    }
    if "is_encoder_decoder" in inspect.signature(scheduler_cls).parameters:
        wanted["is_encoder_decoder"] = False  # a required InitVar in later releases
    scheduler = scheduler_cls(**wanted)
    llm = SimpleNamespace(
        llm_engine=SimpleNamespace(
            vllm_config=SimpleNamespace(
                compilation_config=CompilationConfig(**cc), scheduler_config=scheduler
            )
        )
    )
    got = read_resolved_config(llm)
    assert got["mode"] == 3
    assert got["mode_key"] == ("level" if VERSION < (0, 11, 1) else "mode")
    assert got["cudagraph_capture_sizes"] == [1, 2, 4, 8]
    assert got["max_num_batched_tokens"] == 256 and got["max_num_seqs"] == 8
    assert got["enable_chunked_prefill"] is True


# --------------------------------------------------------------------------- resolution
# VllmConfig resolution (no engine start) needs the model-inspection imports of a full
# install; the import-only nox environments set AOT_TRANSLATION_IMPORT_ONLY=1.
needs_full_install = pytest.mark.skipif(
    os.environ.get("AOT_TRANSLATION_IMPORT_ONLY") == "1",
    reason="import-only vLLM environment (no model inspection)",
)


def _resolve(spec: CompileSpec, config_dir: Path) -> dict[str, Any]:
    from types import SimpleNamespace

    kwargs = translate(spec).llm_kwargs
    args = EngineArgs(
        model=str(config_dir), skip_tokenizer_init=True, load_format="dummy", **kwargs
    )
    config = args.create_engine_config()
    return read_resolved_config(SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=config)))


@pytest.mark.slow
@needs_full_install
def test_engine_config_resolves_what_was_asked(config_dir: Path) -> None:
    eager = CompileSpec(compile_mode="none", cuda_graphs=False, max_model_len=256)
    got = _resolve(eager, config_dir)
    assert got["mode"] == 0 and got["cudagraph_mode"] == "NONE"
    assert resolution_notes(eager, got) == ()

    compiled = CompileSpec(max_model_len=256, max_num_batched_tokens=128, max_num_seqs=4)
    got = _resolve(compiled, config_dir)
    assert got["mode"] != 0
    assert (got["max_num_batched_tokens"], got["max_num_seqs"]) == (128, 4)
    assert got["enable_chunked_prefill"] is True
    for note in resolution_notes(compiled, got):  # only platform adaptations, stated
        assert "mode" in note or "CUDA graphs" in note

    if VERSION >= (0, 11, 1):
        off = CompileSpec(chunked_prefill=False, max_model_len=256, max_num_batched_tokens=256)
        got = _resolve(off, config_dir)
        assert got["enable_chunked_prefill"] is False
        assert got["max_num_batched_tokens"] == 256
