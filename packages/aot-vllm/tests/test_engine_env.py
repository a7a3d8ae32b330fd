"""The engine's environment: which compile cache a start uses, and each variable decided once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from aot_core.spec import CompileSpec
from aot_vllm import engine_env
from aot_vllm.engine_env import CompileCache, EngineVar, EnvPatch, choose_compile_cache
from aot_vllm.options import VLLMOptions
from aot_vllm.runtime_options import RuntimeOptions


def _split(spec: CompileSpec) -> tuple[RuntimeOptions, CompileSpec]:
    """The runtime's options and the engine's spec, as a start splits them (start_setup)."""
    options = VLLMOptions.validate(spec)
    return options.runtime, spec.replace(backend_options=options.engine)


def _choose(
    spec: CompileSpec,
    *,
    is_cpu: bool = True,
    has_aot: bool = True,
    finalizes: bool = False,
    previous: dict[str, Any] | None = None,
) -> engine_env.CompileCacheChoice:
    runtime, engine_spec = _split(spec)
    return choose_compile_cache(
        runtime,
        spec=engine_spec,
        has_aot_compile=has_aot,
        aot_load_finalizes=finalizes,
        is_cpu=is_cpu,
        previous=previous or {},
    )


def test_auto_on_cpu_is_vllms_aot_artifact_for_one_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before 2026-12-07 the CPU default was Inductor's cache, whose warm start traces the
    # model with Dynamo again (8 s of SmolLM2's 11 s compile warm-up).
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    choice = _choose(CompileSpec(), finalizes=True)
    assert choice.cache is CompileCache.AOT
    assert choice.env == {"VLLM_USE_AOT_COMPILE": "1", "AOT_VLLM_AOT_LOAD_FIX": "1"}
    assert "without tracing it with Dynamo again" in choice.note


@pytest.mark.parametrize(
    ("spec", "plugins", "reason"),
    [
        (CompileSpec(tensor_parallel_size=2), None, "2 ranks"),
        (CompileSpec(), "some_other_plugin", "VLLM_PLUGINS leaves out aot_vllm"),
    ],
)
def test_auto_on_cpu_keeps_inductors_cache_where_the_aot_path_is_not_proven(
    spec: CompileSpec, plugins: str | None, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if plugins is None:
        monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("VLLM_PLUGINS", plugins)
    choice = _choose(spec)
    assert choice.cache is CompileCache.INDUCTOR
    assert choice.env == {"VLLM_USE_AOT_COMPILE": "0"}
    assert "whole model with Inductor" in choice.note and reason in choice.note


def test_auto_on_a_gpu_keeps_vllms_default() -> None:
    choice = _choose(CompileSpec(), is_cpu=False)
    assert choice.cache is CompileCache.VLLM_DEFAULT and choice.env == {} and not choice.note


def test_an_earlier_aot_load_failure_sends_later_starts_to_inductor() -> None:
    failure = {"aot_load_failure": {"vllm_version": "0.32.0", "reason": "finalize_loading"}}
    choice = _choose(CompileSpec(), is_cpu=False, previous=failure)
    assert choice.cache is CompileCache.INDUCTOR
    assert choice.env == {"VLLM_USE_AOT_COMPILE": "0"}
    assert "0.32.0" in choice.note and "finalize_loading" in choice.note


@pytest.mark.parametrize(
    ("options", "cache", "env"),
    [
        ({"compile_cache": "aot"}, CompileCache.AOT, {"VLLM_USE_AOT_COMPILE": "1"}),
        ({"compile_cache": "inductor"}, CompileCache.INDUCTOR, {"VLLM_USE_AOT_COMPILE": "0"}),
        # The translation sets the variable from use_aot_compile; nothing is set twice.
        ({"use_aot_compile": True}, CompileCache.AOT, {}),
        ({"use_aot_compile": False}, CompileCache.INDUCTOR, {}),
    ],
)
def test_asked_for_compile_cache(
    options: dict[str, Any], cache: CompileCache, env: dict[str, str]
) -> None:
    choice = _choose(CompileSpec(backend_options=options))
    assert (choice.cache, dict(choice.env)) == (cache, env)


def test_without_aot_compile_or_compilation_nothing_is_set() -> None:
    assert _choose(CompileSpec(), has_aot=False).cache is CompileCache.INDUCTOR
    eager = _choose(CompileSpec(compile_mode="none", cuda_graphs=False))
    assert eager.cache is CompileCache.NONE and eager.env == {}


def test_engine_environment_joins_the_decisions(tmp_path: Path) -> None:
    choice = _choose(CompileSpec(backend_options={"compile_cache": "inductor"}))
    env = engine_env.engine_environment(
        translated=engine_env.cache_root(str(tmp_path / "vllm")),
        compile_cache=choice,
        inductor_dir=tmp_path / "inductor",
        inline=True,
    )
    assert env == {
        "VLLM_CACHE_ROOT": str(tmp_path / "vllm"),
        "VLLM_USE_AOT_COMPILE": "0",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    assert set(env) <= {var.value for var in EngineVar}


def test_a_variable_decided_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="VLLM_USE_AOT_COMPILE twice"):
        engine_env.engine_environment(
            translated=engine_env.aot_compile(on=True),
            compile_cache=_choose(CompileSpec(backend_options={"compile_cache": "inductor"})),
            inductor_dir=tmp_path,
            inline=False,
        )


@pytest.mark.parametrize(
    ("options", "tp", "inline"),
    [({}, 1, True), ({}, 2, False), ({"engine_process": "subprocess"}, 1, False)],
)
def test_engine_placement(options: dict[str, Any], tp: int, inline: bool) -> None:
    runtime, spec = _split(CompileSpec(tensor_parallel_size=tp, backend_options=options))
    assert engine_env.runs_inline(runtime, spec) is inline


def test_env_patch_restores_what_was_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CACHE_ROOT", "/user/choice")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    patch = EnvPatch()
    patch.apply({"VLLM_CACHE_ROOT": "/entry/vllm", "TORCHINDUCTOR_CACHE_DIR": "/entry/ind"})
    assert os.environ["VLLM_CACHE_ROOT"] == "/entry/vllm"
    patch.restore()
    assert os.environ["VLLM_CACHE_ROOT"] == "/user/choice"
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


@pytest.mark.parametrize(
    ("options", "is_cpu", "finalizes", "fix"),
    [
        ({"compile_cache": "aot"}, True, True, True),
        ({"use_aot_compile": True}, True, True, True),
        ({"compile_cache": "aot"}, True, False, False),  # the release loads without it
        ({"compile_cache": "aot"}, False, True, False),  # GPUs use vLLM's own backend
        ({"compile_cache": "inductor"}, True, True, False),
        ({}, True, True, True),  # the CPU default for one rank is the AOT artifact
        ({}, True, False, False),
    ],
)
def test_the_aot_load_fix_is_on_only_for_aot_starts_on_cpu(
    options: dict[str, Any], is_cpu: bool, finalizes: bool, fix: bool
) -> None:
    choice = _choose(CompileSpec(backend_options=options), is_cpu=is_cpu, finalizes=finalizes)
    assert (choice.env.get("AOT_VLLM_AOT_LOAD_FIX") == "1") is fix


_WARM_CPU = dict(shrinkable=True, is_cpu=True, compiles=True, ranks=1, kv_sized=True, warm=True)


def test_a_warm_cpu_start_shrinks_the_compile_warmup() -> None:
    assert engine_env.cpu_warmup_tokens(**_WARM_CPU) == {
        "AOT_VLLM_WARMUP_TOKENS": str(engine_env.WARMUP_TOKENS)
    }


@pytest.mark.parametrize(
    "change",
    [
        {"shrinkable": False},  # a release whose warm-up aot-vllm has not read
        {"is_cpu": False},
        {"compiles": False},  # eager: vLLM skips the warm-up itself (0.30+)
        {"ranks": 2},  # a pipeline stage allocates its buffers in that step
        {"kv_sized": False},  # the warm-up's memory sizes the KV cache
        {"warm": False},  # a cold start compiles in that step: vLLM's own is kept
    ],
)
def test_the_warmup_is_vllms_own_unless_every_condition_holds(change: dict[str, Any]) -> None:
    assert engine_env.cpu_warmup_tokens(**{**_WARM_CPU, **change}) == {}
