"""Translation logic from the built-in fact table: runs with no vLLM installed.

Every test here forces "no vLLM installed", so the same answers come out whether or not
the environment holds a release; test_translate_release.py checks the table against the
real classes of each release.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aot_core.errors import BackendUnavailableError, SpecError
from aot_core.spec import CompileSpec
from aot_vllm import releases
from aot_vllm.engine_env import EngineVar
from aot_vllm.engine_options import ENGINE_OPTIONS
from aot_vllm.readback import read_resolved_config, resolution_notes
from aot_vllm.releases import parse_version, release_facts
from aot_vllm.translate import Translation, translate

ALL_MINORS = [
    "0.10.2", "0.11.0", "0.11.1", "0.11.2", "0.12.0", "0.13.0", "0.14.1", "0.15.1",
    "0.16.0", "0.17.1", "0.18.1", "0.19.1", "0.20.2", "0.21.0", "0.22.1", "0.23.0",
    "0.24.0", "0.25.1", "0.26.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0",
    "0.32.0", "0.33.0", "0.34.0",
]  # fmt: skip


@pytest.fixture(autouse=True)
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend nothing is installed, so only the fact table answers."""
    monkeypatch.setattr(releases, "vllm_importable", lambda: False)


def t(version: str, best_effort: bool = False, **spec: Any) -> Translation:
    return translate(CompileSpec(**spec), vllm_version=version, best_effort=best_effort)


def cc(translation: Translation) -> dict[str, Any]:
    config = translation.llm_kwargs["compilation_config"]
    assert isinstance(config, dict)
    return config


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.10.2", (0, 10, 2)),
        ("0.10.2.post2", (0, 10, 2)),
        ("0.12.0.post2+cpu", (0, 12, 0)),
        ("0.11.1rc3.dev12+gabc", (0, 11, 1)),
        ("v0.33", (0, 33, 0)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(SpecError, match="cannot read a release number"):
        parse_version("latest")


def test_release_older_than_supported_is_unavailable() -> None:
    with pytest.raises(BackendUnavailableError, match=r"0\.10\.1.*oldest supported.*0\.10\.2"):
        release_facts("0.10.1.1")


@pytest.mark.parametrize(
    ("version", "key", "alias"),
    [
        ("0.10.2", "level", False),
        ("0.11.0", "level", False),
        ("0.11.1", "mode", True),
        ("0.17.1", "mode", True),
        ("0.18.0", "mode", False),
        ("0.33.0", "mode", False),
    ],
)
def test_compile_key_by_release(version: str, key: str, alias: bool) -> None:
    facts = release_facts(version)
    assert (facts.compile_key, facts.level_alias) == (key, alias)
    assert cc(t(version)) == {key: 3}


@pytest.mark.parametrize("version", ALL_MINORS)
def test_default_spec_is_minimal_everywhere(version: str) -> None:
    result = t(version)
    kwargs = result.llm_kwargs
    assert kwargs["enable_chunked_prefill"] is True
    assert "enforce_eager" not in kwargs
    assert not set(kwargs) & {"max_num_partial_prefills", "max_long_partial_prefills"}
    assert result.vllm_version == version
    assert result.checked_against_classes is False
    assert any("built-in table only" in w for w in result.warnings)


def test_facts_table_boundaries() -> None:
    old, new = release_facts("0.11.0"), release_facts("0.11.1")
    assert old.has_legacy_cudagraph_flags and not new.has_legacy_cudagraph_flags
    assert not old.honours_chunked_prefill_off and new.honours_chunked_prefill_off
    assert old.max_capture_key is None and new.max_capture_key == "max_cudagraph_capture_size"
    assert not release_facts("0.16.0").enforce_eager_disables_compile
    assert release_facts("0.17.0").enforce_eager_disables_compile
    assert not release_facts("0.11.2").has_optimization_level
    assert release_facts("0.12.0").has_optimization_level
    assert release_facts("0.26.0").has_partial_prefill_args
    assert not release_facts("0.27.0").has_partial_prefill_args
    assert release_facts("0.12.0").engine_capture_sizes_key == "cuda_graph_sizes"
    assert release_facts("0.13.0").engine_capture_sizes_key == "cudagraph_capture_sizes"
    assert "truncates" in release_facts("0.10.2").unknown_cc_key
    assert not release_facts("0.10.2").has_max_autotune_env
    assert release_facts("0.11.0").has_max_autotune_env
    assert release_facts("0.19.1").cpu_ray_executor == "mp"
    assert release_facts("0.20.0").cpu_ray_executor == "refused"
    assert release_facts("0.19.1").cpu_threads_bind_in == "worker"
    assert release_facts("0.20.0").cpu_threads_bind_in == "executor"
    assert not release_facts("0.29.0").cpu_eager_skips_warmup
    assert release_facts("0.30.0").cpu_eager_skips_warmup
    assert not release_facts("0.29.0").cpu_warmup_shrinkable
    assert release_facts("0.30.0").cpu_warmup_shrinkable
    assert release_facts("0.33.0").cpu_warmup_shrinkable
    assert not release_facts("0.34.0").cpu_warmup_shrinkable  # the CPU runner moved
    assert not release_facts("0.17.1").aot_load_finalizes
    assert release_facts("0.18.0").aot_load_finalizes


def test_every_fact_is_read_off_a_class_or_kept_in_the_table() -> None:
    fields = {f.name for f in dataclasses.fields(releases.ReleaseFacts)} - {"version"}
    assert releases.CLASS_FACTS.issubset(fields)
    # What no class shows is behaviour, read from each release's source.
    assert fields - releases.CLASS_FACTS == {
        "honours_chunked_prefill_off",
        "enforce_eager_disables_compile",
        "unknown_cc_key",
        "cpu_kv_cache_arg",
        "cpu_ray_executor",
        "cpu_threads_bind_in",
        "cpu_eager_skips_warmup",
        "aot_load_finalizes",
        "cpu_warmup_shrinkable",
        "server_modules",
    }


_EP = "vllm.entrypoints"
_SERVER_LAYOUTS = {
    # cli_args, engine client (build_async_engine_client_from_engine_args), serve_http
    "openai": (f"{_EP}.openai.cli_args", f"{_EP}.openai.api_server", f"{_EP}.launcher"),
    "launchers": (
        f"{_EP}.launchers.cli_args",
        f"{_EP}.launchers.api_server.entry",
        f"{_EP}.launchers.launcher",
    ),
    "common": (
        f"{_EP}.common.cli_args",
        f"{_EP}.launchers.api_server.entry",
        f"{_EP}.launchers.launcher",
    ),
}


@pytest.mark.parametrize(
    ("version", "layout"),
    [
        ("0.10.2", None), ("0.26.0", None), ("0.27.0", "openai"), ("0.27.1", "openai"),
        ("0.28.0", "openai"), ("0.29.0", "launchers"), ("0.30.0", "launchers"),
        ("0.31.0", "launchers"), ("0.32.0", "launchers"), ("0.33.0", "common"),
        ("0.34.0", "common"),
    ],
)  # fmt: skip
def test_server_modules_by_release(version: str, layout: str | None) -> None:
    """Where aot serve finds vLLM's server: none before 0.27 (releases aot-vllm does not run),
    ``vllm.entrypoints.openai`` in 0.27-0.28, ``launchers`` from 0.29, options in ``common``
    from 0.33 (test_translate_release checks each release's source)."""
    modules = release_facts(version).server_modules
    if layout is None:
        assert modules is None
        return
    assert modules is not None
    functions = modules.functions()
    cli_args, engine_client, launcher = _SERVER_LAYOUTS[layout]
    assert functions["make_arg_parser"] == functions["validate_parsed_serve_args"] == cli_args
    assert functions["build_async_engine_client_from_engine_args"] == engine_client
    assert functions["serve_http"] == launcher
    assert all(module.startswith(f"{_EP}.") for module in functions.values())


@pytest.mark.parametrize("version", ["0.10.2", "0.11.1", "0.20.2", "0.33.0"])
def test_translation_carries_the_facts_it_used(version: str) -> None:
    release = t(version).release
    assert release.facts == release_facts(version)
    assert release.classes is None and release.installed is None


@pytest.mark.parametrize("version", ALL_MINORS)
def test_every_variable_set_is_an_engine_var(version: str) -> None:
    specs = [
        CompileSpec(cache_dir="/tmp/x"),
        CompileSpec(compile_mode="max-autotune"),
        CompileSpec(backend_options={"use_aot_compile": False, "disable_compile_cache": True}),
    ]
    names = {var.value for var in EngineVar}
    for spec in specs:
        assert set(translate(spec, vllm_version=version).env) <= names
    sized = CompileSpec(backend_options={"kv_cache_memory_bytes": 1 << 30})
    assert set(translate(sized, vllm_version=version, cpu=True).env) <= names


def test_nothing_installed_and_no_version_is_unavailable() -> None:
    with pytest.raises(BackendUnavailableError, match="pip install vllm"):
        translate(CompileSpec())


def test_newer_than_known_release_is_flagged() -> None:
    result = t("0.40.0")
    assert any("newer than 0.34.0" in w for w in result.warnings)


# --------------------------------------------------------------------------- compilation


def test_no_cuda_graphs_is_cudagraph_mode_none_never_enforce_eager() -> None:
    for version in ALL_MINORS:
        result = t(version, cuda_graphs=False)
        assert cc(result)["cudagraph_mode"] == "NONE"
        assert cc(result)[release_facts(version).compile_key] == 3
        assert "enforce_eager" not in result.llm_kwargs


def test_capture_and_compile_sizes_go_to_compilation_config() -> None:
    for version in ("0.10.2", "0.12.0", "0.33.0"):
        config = cc(t(version, cuda_graph_sizes=(4, 1, 2), compile_sizes=(8,)))
        assert config["cudagraph_capture_sizes"] == [1, 2, 4]
        assert config["compile_sizes"] == [8]


def test_compile_none_is_mode_zero_without_graphs() -> None:
    result = t("0.33.0", compile_mode="none")
    assert cc(result) == {"mode": 0, "cudagraph_mode": "NONE"}
    assert any("no CUDA graphs are captured" in w for w in result.warnings)


def test_graphs_requested_without_compile_is_refused() -> None:
    spec: dict[str, Any] = {"compile_mode": "none", "cuda_graph_sizes": (1, 2)}
    with pytest.raises(SpecError, match=r"vLLM 0\.20\.2 cannot honour CUDA graphs"):
        t("0.20.2", **spec)
    result = t("0.20.2", best_effort=True, **spec)
    assert cc(result)["cudagraph_mode"] == "NONE"
    assert "cudagraph_capture_sizes" not in cc(result)
    assert any("best effort" in w for w in result.warnings)


def test_cudagraph_mode_option() -> None:
    opts = {"cudagraph_mode": "full_decode_only"}
    assert cc(t("0.11.0", backend_options=opts))["cudagraph_mode"] == "FULL_DECODE_ONLY"
    with pytest.raises(SpecError, match="contradicts cuda_graphs"):
        t("0.11.0", cuda_graphs=False, backend_options=opts)
    with pytest.raises(SpecError, match="unknown CUDA-graph mode 'SOMETIMES'"):
        t("0.11.0", backend_options={"cudagraph_mode": "SOMETIMES"})


def test_max_autotune_mapping() -> None:
    old = t("0.10.2", compile_mode="max-autotune")
    assert cc(old)["inductor_compile_config"] == {
        "max_autotune": True,
        "coordinate_descent_tuning": True,
    }
    assert old.env == {}  # the env switches arrived in 0.11.0
    new = t("0.11.0", compile_mode="max-autotune")
    assert new.env["VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE"] == "1"
    assert new.env["VLLM_ENABLE_INDUCTOR_COORDINATE_DESCENT_TUNING"] == "1"
    default = t("0.32.0")
    assert default.env["VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE"] == "0"
    assert "inductor_compile_config" not in cc(default)


def test_default_effort_on_0_10_2_says_static_sizes_are_autotuned() -> None:
    result = t("0.10.2", compile_sizes=(4,))
    assert any("autotunes" in w for w in result.warnings)


def test_enforce_eager_only_with_compile_none() -> None:
    with pytest.raises(SpecError, match="enforce_eager: true contradicts compile_mode"):
        t("0.17.0", backend_options={"enforce_eager": True})
    result = t("0.17.0", compile_mode="none", cuda_graphs=False,
               backend_options={"enforce_eager": True})  # fmt: skip
    assert result.llm_kwargs["enforce_eager"] is True
    assert cc(result) == {"mode": 0, "cudagraph_mode": "NONE"}


def test_max_cudagraph_capture_size_per_release() -> None:
    opts = {"max_cudagraph_capture_size": 16}
    old = t("0.11.0", backend_options=opts)
    assert old.llm_kwargs["cuda_graph_sizes"] == [16]
    assert "max_capture_size" not in cc(old)
    new = t("0.11.1", backend_options=opts)
    assert cc(new)["max_cudagraph_capture_size"] == 16
    assert "cuda_graph_sizes" not in new.llm_kwargs
    with pytest.raises(SpecError, match="either cuda_graph_sizes or"):
        t("0.20.0", cuda_graph_sizes=(1, 2), backend_options=opts)
    with pytest.raises(SpecError, match="cuda_graphs is false"):
        t("0.20.0", cuda_graphs=False, backend_options=opts)


def test_optimization_level_needs_0_12() -> None:
    opts = {"optimization_level": 1}
    with pytest.raises(SpecError, match=r"vLLM 0\.11\.2 cannot honour optimization_level=1"):
        t("0.11.2", backend_options=opts)
    assert t("0.12.0", backend_options=opts).llm_kwargs["optimization_level"] == 1


def test_use_aot_compile_needs_0_11_1() -> None:
    with pytest.raises(SpecError, match=r"vLLM 0\.11\.0 cannot honour use_aot_compile=true"):
        t("0.11.0", backend_options={"use_aot_compile": True})
    assert t("0.11.0", backend_options={"use_aot_compile": False}).env.get(
        "VLLM_USE_AOT_COMPILE") is None  # fmt: skip
    result = t("0.32.0", backend_options={"use_aot_compile": False})
    assert result.env["VLLM_USE_AOT_COMPILE"] == "0"


def test_cache_dir_is_cache_root_not_compilation_cache_dir() -> None:
    result = t("0.32.0", cache_dir="/tmp/x")
    assert result.env["VLLM_CACHE_ROOT"] == "/tmp/x"
    assert "cache_dir" not in cc(result)


# --------------------------------------------------------------------------- chunked prefill


@pytest.mark.parametrize("version", ["0.10.2", "0.11.0"])
def test_chunked_prefill_off_refused_before_0_11_1(version: str) -> None:
    with pytest.raises(SpecError) as info:
        t(version, chunked_prefill=False)
    message = str(info.value)
    assert f"vLLM {version}" in message and "enable_chunked_prefill=False" in message
    assert ">=0.11.1" in message
    assert info.value.field == "chunked_prefill"


def test_chunked_prefill_off_best_effort_warns_and_keeps_it_on() -> None:
    result = t("0.10.2", best_effort=True, chunked_prefill=False)
    assert result.llm_kwargs["enable_chunked_prefill"] is True
    assert any("enable_chunked_prefill=False" in w for w in result.warnings)


def test_chunked_prefill_off_honoured_from_0_11_1() -> None:
    kwargs = t("0.11.1", chunked_prefill=False, max_num_batched_tokens=512,
               max_model_len=512).llm_kwargs  # fmt: skip
    assert kwargs["enable_chunked_prefill"] is False
    assert kwargs["max_num_batched_tokens"] == 512


def test_scheduler_and_resource_fields() -> None:
    kwargs = t(
        "0.27.1",
        max_num_batched_tokens=256,
        max_num_seqs=8,
        max_model_len=128,
        long_prefill_token_threshold=64,
        dtype="bf16",
        tensor_parallel_size=2,
        backend_options={"gpu_memory_utilization": 0.5, "kv_cache_memory_bytes": 1 << 26},
    ).llm_kwargs
    assert kwargs["max_num_batched_tokens"] == 256
    assert kwargs["max_num_seqs"] == 8
    assert kwargs["max_model_len"] == 128
    assert kwargs["long_prefill_token_threshold"] == 64
    assert kwargs["dtype"] == "bfloat16"
    assert kwargs["tensor_parallel_size"] == 2
    assert kwargs["pipeline_parallel_size"] == 1
    assert kwargs["gpu_memory_utilization"] == 0.5
    assert kwargs["kv_cache_memory_bytes"] == 1 << 26


def test_cpu_kv_cache_before_0_20_is_the_env_var_in_whole_gib() -> None:
    spec = CompileSpec(backend_options={"kv_cache_memory_bytes": (1 << 30) + 1})
    old = translate(spec, vllm_version="0.19.1", cpu=True)
    assert old.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "kv_cache_memory_bytes" not in old.llm_kwargs
    assert any("rounded up to 2 GiB" in w for w in old.warnings)
    exact = CompileSpec(backend_options={"kv_cache_memory_bytes": 3 << 30})
    assert translate(exact, vllm_version="0.10.2", cpu=True).env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    new = translate(spec, vllm_version="0.20.2", cpu=True)
    assert new.llm_kwargs["kv_cache_memory_bytes"] == (1 << 30) + 1
    assert "VLLM_CPU_KVCACHE_SPACE" not in new.env
    # Off CPU the argument is vLLM's own in every release.
    gpu = translate(spec, vllm_version="0.19.1")
    assert gpu.llm_kwargs["kv_cache_memory_bytes"] == (1 << 30) + 1


def test_gpu_memory_utilization_on_cpu_before_0_20_is_refused() -> None:
    spec = CompileSpec(backend_options={"gpu_memory_utilization": 0.5})
    with pytest.raises(SpecError, match=r"vLLM 0\.19\.1 cannot honour gpu_memory_utilization"):
        translate(spec, vllm_version="0.19.1", cpu=True)
    loose = translate(spec, vllm_version="0.19.1", cpu=True, best_effort=True)
    assert "gpu_memory_utilization" not in loose.llm_kwargs and loose.warnings
    assert (
        translate(spec, vllm_version="0.20.2", cpu=True).llm_kwargs["gpu_memory_utilization"] == 0.5
    )


@pytest.mark.parametrize("key", ["kv_cache_memory_bytes", "gpu_memory_utilization"])
def test_memory_engine_args_point_at_the_checked_option(key: str) -> None:
    with pytest.raises(SpecError, match=f"use backend_options.{key}"):
        t("0.32.0", backend_options={"engine_args": {key: 1}})


# --------------------------------------------------------------------------- several ranks


@pytest.mark.parametrize("version", ALL_MINORS)
def test_several_ranks_name_the_multiprocessing_executor(version: str) -> None:
    assert "distributed_executor_backend" not in t(version).llm_kwargs
    tp2 = t(version, tensor_parallel_size=2).llm_kwargs
    assert tp2["distributed_executor_backend"] == "mp"
    assert tp2["tensor_parallel_size"] == 2
    ray = t(
        version, tensor_parallel_size=2, backend_options={"distributed_executor_backend": "ray"}
    )
    assert ray.llm_kwargs["distributed_executor_backend"] == "ray"  # on CUDA, every release


@pytest.mark.parametrize("version", ALL_MINORS)
def test_ray_on_cpu_is_refused_with_the_releases_reason(version: str) -> None:
    spec = CompileSpec(
        tensor_parallel_size=2, backend_options={"distributed_executor_backend": "ray"}
    )
    with pytest.raises(SpecError, match=r"cannot honour distributed_executor_backend='ray' on CPU"):
        translate(spec, vllm_version=version, cpu=True)
    loose = translate(spec, vllm_version=version, cpu=True, best_effort=True)
    assert loose.llm_kwargs["distributed_executor_backend"] == "mp"
    why = (
        "replaces Ray with its multiprocessing"
        if parse_version(version) < (0, 20, 0)
        else ("does not support ray")
    )
    assert any(why in w for w in loose.warnings)


def test_pipeline_stages_in_eager_mode_on_cpu_are_refused_from_0_30() -> None:
    spec = CompileSpec(
        compile_mode="none",
        cuda_graphs=False,
        pipeline_parallel_size=2,
        backend_options={"kv_cache_memory_bytes": 1 << 26},
    )
    with pytest.raises(SpecError, match=r"pipeline_parallel_size=2 with compile_mode 'none'"):
        translate(spec, vllm_version="0.30.0", cpu=True)
    assert (
        translate(spec, vllm_version="0.29.0", cpu=True).llm_kwargs["pipeline_parallel_size"] == 2
    )
    assert translate(spec, vllm_version="0.32.0").llm_kwargs["pipeline_parallel_size"] == 2  # GPU
    compiled = spec.replace(compile_mode="default")
    assert (
        translate(compiled, vllm_version="0.32.0", cpu=True).llm_kwargs[
            "distributed_executor_backend"
        ]
        == "mp"
    )


def test_the_executor_is_not_an_engine_arg() -> None:
    with pytest.raises(SpecError, match=r"use backend_options\.distributed_executor_backend"):
        t("0.32.0", backend_options={"engine_args": {"distributed_executor_backend": "ray"}})
    with pytest.raises(SpecError, match=r"must be 'mp' or 'ray'"):
        t("0.32.0", backend_options={"distributed_executor_backend": "uni"})


# --------------------------------------------------------------------------- backend_options


def test_unknown_backend_option_names_the_key() -> None:
    with pytest.raises(SpecError, match=r"backend_options\.cudagraph_mod: unknown option") as info:
        t("0.32.0", backend_options={"cudagraph_mod": "NONE"})
    assert "did you mean 'cudagraph_mode'" in str(info.value)
    assert info.value.field == "backend_options"
    # The runtime's own keys are known too (and left for the runtime to read).
    assert "engine_process" in str(info.value)
    assert "engine_process" not in t("0.32.0", backend_options={"engine_process": "inline"}).env


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("enforce_eager", "yes", "must be true or false"),
        ("gpu_memory_utilization", 1.5, r"must be a number in \(0, 1\]"),
        ("gpu_memory_utilization", True, r"must be a number in \(0, 1\]"),
        ("kv_cache_memory_bytes", 0, "must be an integer >= 1"),
        ("optimization_level", 4, "must be 0, 1, 2 or 3"),
        ("compilation_config", 3, "must be a table"),
        ("engine_args", "x", "must be a table"),
        ("use_aot_compile", 1, "must be true or false"),
    ],
)
def test_bad_option_values(key: str, value: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        t("0.32.0", backend_options={key: value})


def test_every_known_option_has_help() -> None:
    assert all(option.help for option in ENGINE_OPTIONS.values())


@pytest.mark.parametrize("key", ["max_num_partial_prefills", "max_long_partial_prefills"])
@pytest.mark.parametrize("version", ["0.10.2", "0.26.0", "0.33.0"])
def test_partial_prefill_args_never_pass(key: str, version: str) -> None:
    with pytest.raises(SpecError, match=f"engine_args.{key}: not supported"):
        t(version, backend_options={"engine_args": {key: 1}})


def test_engine_args_pass_through_and_collisions() -> None:
    extra = {"load_format": "dummy", "skip_tokenizer_init": True}
    kwargs = t("0.32.0", backend_options={"engine_args": extra}).llm_kwargs
    assert kwargs["load_format"] == "dummy" and kwargs["skip_tokenizer_init"] is True
    with pytest.raises(SpecError, match=r"engine_args\.max_num_seqs: set by the spec already"):
        t("0.32.0", max_num_seqs=4, backend_options={"engine_args": {"max_num_seqs": 8}})
    with pytest.raises(SpecError, match=r"use backend_options\.compilation_config"):
        t("0.32.0", backend_options={"engine_args": {"compilation_config": {}}})


def test_compilation_config_overrides_and_aliases() -> None:
    new = t("0.32.0", backend_options={"compilation_config": {"level": 2, "max_capture_size": 8}})
    assert cc(new)["mode"] == 2 and "level" not in cc(new)
    assert cc(new)["max_cudagraph_capture_size"] == 8
    assert any("spelled mode" in w for w in new.warnings)
    assert any("replaces mode=3" in w for w in new.warnings)
    old = t("0.10.2", backend_options={"compilation_config": {"mode": 2}})
    assert cc(old) == {"level": 2}
    # 0.11.1-0.17 still accept level beside mode: keep what the user wrote
    mid = t("0.12.0", backend_options={"compilation_config": {"level": 2}})
    assert cc(mid)["level"] == 2


def test_removed_compilation_fields_are_refused() -> None:
    with pytest.raises(SpecError, match=r"0\.11\.1 cannot honour compilation_config.use_cudag"):
        t("0.11.1", backend_options={"compilation_config": {"use_cudagraph": False}})
    with pytest.raises(SpecError, match=r"full_cuda_graph.*removed in vLLM 0\.11\.1"):
        t("0.20.0", backend_options={"compilation_config": {"full_cuda_graph": True}})
    with pytest.raises(SpecError, match=r"use_inductor.*removed in vLLM 0\.12"):
        t("0.12.0", backend_options={"compilation_config": {"use_inductor": True}})
    with pytest.raises(SpecError, match="max_cudagraph_capture_size"):
        t("0.11.0", backend_options={"compilation_config": {"max_cudagraph_capture_size": 8}})
    # still valid on the releases that have them
    assert (
        cc(t("0.10.2", backend_options={"compilation_config": {"use_cudagraph": False}}))[
            "use_cudagraph"
        ]
        is False
    )


# --------------------------------------------------------------------------- results


def test_translation_is_frozen_kw_only() -> None:
    result = t("0.32.0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.vllm_version = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Translation({}, {}, (), "0.32.0")  # type: ignore[misc]


def test_import_does_not_import_vllm_or_torch() -> None:
    code = (
        "import sys, aot_vllm.translate as t; "
        "assert 'vllm' not in sys.modules and 'torch' not in sys.modules, sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _config(**parts: Any) -> SimpleNamespace:
    return SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(**parts)))


def test_read_resolved_config_new_style() -> None:
    class Mode(int):
        name = "DYNAMO_TRACE_ONCE"

    @dataclasses.dataclass
    class Compilation:
        mode: Any
        cudagraph_mode: Any
        cudagraph_capture_sizes: list[int]
        compile_sizes: list[int]
        backend: str

    @dataclasses.dataclass
    class Scheduler:
        enable_chunked_prefill: bool
        max_num_batched_tokens: int
        max_num_seqs: int
        long_prefill_token_threshold: int

    llm = _config(
        compilation_config=Compilation(
            Mode(2), SimpleNamespace(name="NONE"), [4, 1], [], "inductor"
        ),
        scheduler_config=Scheduler(False, 512, 8, 0),
        model_config=SimpleNamespace(max_model_len=256, enforce_eager=False),
    )
    got = read_resolved_config(llm)
    assert (
        got["mode_key"] == "mode" and got["mode"] == 2 and got["mode_name"] == "DYNAMO_TRACE_ONCE"
    )
    assert got["cudagraph_mode"] == "NONE"
    assert got["cudagraph_capture_sizes"] == [1, 4]
    assert got["enable_chunked_prefill"] is False
    assert got["max_num_batched_tokens"] == 512 and got["max_num_seqs"] == 8
    assert got["max_model_len"] == 256


def test_read_resolved_config_old_style_prefers_resolved_chunked_flag() -> None:
    @dataclasses.dataclass
    class Compilation:
        level: int
        cudagraph_mode: Any = None
        cudagraph_capture_sizes: Any = None

    @dataclasses.dataclass
    class Scheduler:
        enable_chunked_prefill: Any = False  # the user's raw input on <=0.11.0
        chunked_prefill_enabled: bool = True  # what the engine resolved
        max_num_batched_tokens: int = 2048
        max_num_seqs: int = 128

    got = read_resolved_config(_config(compilation_config=Compilation(3),
                                       scheduler_config=Scheduler()))  # fmt: skip
    assert got["mode_key"] == "level" and got["mode"] == 3
    assert got["enable_chunked_prefill"] is True
    assert got["cudagraph_mode"] is None and got["cudagraph_capture_sizes"] is None


def test_read_resolved_config_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match=r"pass a vllm\.LLM"):
        read_resolved_config(object())


def test_resolution_notes_explain_platform_changes() -> None:
    spec = CompileSpec(cuda_graph_sizes=(1, 2), max_num_batched_tokens=256, chunked_prefill=True)
    cpu = {
        "mode": 2,
        "mode_name": "DYNAMO_TRACE_ONCE",
        "cudagraph_mode": "NONE",
        "cudagraph_capture_sizes": [],
        "enable_chunked_prefill": True,
        "max_num_batched_tokens": 256,
    }
    notes = resolution_notes(spec, cpu)
    assert any("DYNAMO_TRACE_ONCE" in n for n in notes)
    assert any("captures none" in n for n in notes)
    assert len(notes) == 2
    gpu = dict(cpu, mode=3, cudagraph_mode="PIECEWISE", cudagraph_capture_sizes=[1, 2])
    assert resolution_notes(spec, gpu) == ()
    forced = dict(gpu, enable_chunked_prefill=False, max_num_batched_tokens=512)
    notes = resolution_notes(spec, forced)
    assert any("chunked prefill is off" in n for n in notes)
    assert any("max_num_batched_tokens=512" in n for n in notes)
    assert resolution_notes(CompileSpec(compile_mode="none", cuda_graphs=False), {"mode": 0}) == ()


def test_broken_vllm_blocks_only_the_installed_translation(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise BackendUnavailableError("vLLM is installed but cannot be imported: boom")

    monkeypatch.setattr(releases, "vllm_importable", lambda: True)
    monkeypatch.setattr(releases, "read_installed", broken)
    with pytest.raises(BackendUnavailableError, match="boom"):
        translate(CompileSpec())
    assert t("0.20.0").checked_against_classes is False


# --------------------------------------------------------------------------- one start config


@pytest.mark.parametrize(
    "isa", [("avx2", "fma"), ("avx2", "avx512f", "avx512_bf16")], ids=["avx2", "avx512_bf16"]
)
def test_eager_and_compiled_eval_jobs_get_one_engine_but_for_compilation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isa: tuple[str, ...]
) -> None:
    """``aot eval --eager`` and ``aot eval`` of one command reach vLLM with the same engine
    arguments (dtype, max_model_len, KV cache, batch limits); only compilation_config
    differs. Before, eager ran the model's own context and vLLM's KV share, compiled 128."""
    from aot_core import artifacts, dtype_choice
    from aot_core.bench.prompts import default_prompts
    from aot_core.evaluation.model_args import parse_model_args
    from aot_core.evaluation.startup import job_spec
    from aot_core.models.tiny import write_tiny_llama
    from aot_vllm.example_inputs import inform_spec, parse_example_inputs
    from aot_vllm.model_source import resolve_model
    from aot_vllm.start_setup import resolve_engine_spec

    monkeypatch.setattr(artifacts, "cuda_capabilities", lambda: ())
    monkeypatch.setattr(dtype_choice, "cpu_isa", lambda: isa)
    model = write_tiny_llama(tmp_path / "tiny")
    source = resolve_model(str(model))
    engine: dict[bool, dict[str, Any]] = {}
    for eager in (True, False):
        spec, _ = job_spec(parse_model_args({"pretrained": str(model), "eager": eager}))
        if spec.compiles:  # compile_model_aot fills open fields from its examples first
            spec, _ = inform_spec(spec, parse_example_inputs(default_prompts()), source)
        spec, _, _ = resolve_engine_spec(spec, source.local_dir, is_cpu=True)
        engine[eager] = translate(spec, vllm_version="0.32.0", cpu=True).llm_kwargs
    compiled, eager_kwargs = engine[False], engine[True]
    assert compiled["compilation_config"] != eager_kwargs["compilation_config"]
    del compiled["compilation_config"], eager_kwargs["compilation_config"]
    assert eager_kwargs == compiled
    assert compiled["max_model_len"] == 128 and compiled["dtype"] == "float32"
    assert compiled["kv_cache_memory_bytes"] > 0
