"""aot-vllm's vLLM plugin: registered for vLLM, inert unless aot-vllm's engine env asks."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from aot_vllm import vllm_plugin  # noqa: E402
from aot_vllm.engine_env import EngineVar  # noqa: E402


@pytest.fixture
def original_loader() -> Iterator[Any]:
    load = torch.compiler.load_compiled_function
    yield load
    torch.compiler.load_compiled_function = load


def test_vllm_finds_the_plugin() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert found.get("aot_vllm") == "aot_vllm.vllm_plugin:register"


def test_without_aot_vllm_asking_nothing_changes(
    original_loader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def inductor_fn(*args: Any) -> None: ...

    monkeypatch.setattr(torch.compiler, "load_compiled_function", lambda *a, **k: loaded)
    loaded = _Loaded(inductor_fn)
    monkeypatch.delenv(EngineVar.AOT_VLLM_AOT_LOAD_FIX, raising=False)
    vllm_plugin.register()
    assert torch.compiler.load_compiled_function("artifact-file") is loaded
    assert not hasattr(inductor_fn, "finalize_loading")


class _Loaded:
    """The shape of torch's AOTCompiledFunction that the plugin reads."""

    def __init__(self, compiled: Any) -> None:
        self._artifacts = SimpleNamespace(compiled_fn=compiled)


def test_an_inductor_function_gets_an_empty_finalize_step(
    original_loader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def inductor_fn(*args: Any) -> None: ...

    class VllmFunction:
        def finalize_loading(self, config: Any) -> str:
            return "vLLM's own"

    own = VllmFunction()
    sealed = object()  # takes no attributes: left as it is, vLLM's own fallback applies
    loaded = iter([_Loaded(inductor_fn), _Loaded(own), _Loaded(sealed)])
    monkeypatch.setattr(torch.compiler, "load_compiled_function", lambda *a, **k: next(loaded))
    # vLLM registers plugins at its first engine in a process, maybe before an aot engine
    # sets the variable: the variable counts when a model is loaded.
    vllm_plugin.register()
    vllm_plugin.register()  # twice must not stack
    monkeypatch.setenv(EngineVar.AOT_VLLM_AOT_LOAD_FIX, "1")
    patched = torch.compiler.load_compiled_function
    first = patched("artifact-file", f_globals={})
    assert first._artifacts.compiled_fn.finalize_loading(object()) is None
    second = patched("artifact-file", f_globals={})
    assert second._artifacts.compiled_fn.finalize_loading(object()) == "vLLM's own"
    third = patched("artifact-file", f_globals={})
    assert not hasattr(third._artifacts.compiled_fn, "finalize_loading")


def test_the_warmup_runs_the_asked_tokens_and_restores_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wrapper around the CPU runner's warm-up: the budget is lowered for the warm-up
    alone while aot-vllm asks, and vLLM's own warm-up runs when it does not."""
    from vllm.v1.worker import cpu_model_runner

    seen: list[int] = []

    class Runner:
        max_num_tokens = 4096

        def warming_up_model(self) -> None:
            seen.append(self.max_num_tokens)

    monkeypatch.setattr(cpu_model_runner, "CPUModelRunner", Runner)
    vllm_plugin.install_warmup_tokens()
    vllm_plugin.install_warmup_tokens()  # twice must not stack
    runner = Runner()
    monkeypatch.delenv(EngineVar.AOT_VLLM_WARMUP_TOKENS, raising=False)
    runner.warming_up_model()
    monkeypatch.setenv(EngineVar.AOT_VLLM_WARMUP_TOKENS, "16")
    runner.warming_up_model()
    monkeypatch.setenv(EngineVar.AOT_VLLM_WARMUP_TOKENS, "8192")  # above the budget: vLLM's
    runner.warming_up_model()
    assert seen == [4096, 16, 4096]
    assert runner.max_num_tokens == 4096
