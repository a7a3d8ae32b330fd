"""The choice create_enhanced_compiler() makes with the backends really installed here.

Runs in every nox `compat` combination; each test applies to some combinations and skips
with the reason in the others. Nothing here compiles a model.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from aot_compat import BackendFallbackWarning, selection
from broken_import import choose_with_broken
from engines.shared import create_enhanced_compiler, create_vllm_native_compiler


def test_old_api_chooses_the_combinations_backend(expected_default: str | None) -> None:
    """The choice the nox combination states (AOT_COMPAT_EXPECT_CHOICE) is the one made."""
    if expected_default is None:
        with pytest.raises(ImportError, match="pip install"):
            create_enhanced_compiler()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackendFallbackWarning)  # its own tests check it
        compiler = create_enhanced_compiler()
    assert compiler.backend_id == expected_default


def test_nothing_usable_raises_import_error_with_pip_hints(
    expected_default: str | None, installed: set[str]
) -> None:
    if expected_default is not None:
        pytest.skip(f"the {expected_default} backend can run here; no error path to check")
    with pytest.raises(ImportError) as info:
        create_enhanced_compiler(enable_cuda_graphs=True)
    message = str(info.value)
    assert "pip install" in message
    for name, dist in (("vllm", "aot-vllm"), ("legacy", "aot-legacy")):
        if name not in installed:
            assert f"pip install {dist}" in message
    with pytest.raises(ImportError, match="pip install"):
        create_vllm_native_compiler(enable_cuda_graphs=True)


def test_default_prefers_vllm(unusable: dict[str, str | None]) -> None:
    if unusable["vllm"] is not None:
        pytest.skip(f"vllm cannot run here: {unusable['vllm']}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendFallbackWarning)
        compiler = create_enhanced_compiler(enable_cuda_graphs=True)
    assert type(compiler).__name__ == "VLLMNativeAOTCompiler"
    assert compiler.backend_id == "vllm"
    assert compiler.choice.reason == "preferred"
    assert create_vllm_native_compiler().backend_id == "vllm"


def test_default_falls_back_to_legacy_saying_why(unusable: dict[str, str | None]) -> None:
    if unusable["vllm"] is None:
        pytest.skip("vllm can run here, so there is no fallback")
    if unusable["legacy"] is not None:
        pytest.skip(f"legacy cannot run here either: {unusable['legacy']}")
    with pytest.warns(BackendFallbackWarning) as record:
        compiler = create_enhanced_compiler(enable_cuda_graphs=True)
    message = str(record[0].message)
    assert str(unusable["vllm"]) in message
    assert "falling back to the legacy backend" in message
    assert type(compiler).__name__ == "EnhancedAOTCompiler"
    assert compiler.choice.fallback_from == "vllm"
    with pytest.raises(ImportError, match="vllm"):
        create_vllm_native_compiler()


def test_use_vllm_native_false(unusable: dict[str, str | None]) -> None:
    if unusable["legacy"] is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", BackendFallbackWarning)
            compiler = create_enhanced_compiler(use_vllm_native=False)
        assert compiler.backend_id == "legacy"
    elif unusable["vllm"] is None:
        with pytest.warns(BackendFallbackWarning, match=re.escape(str(unusable["legacy"]))):
            compiler = create_enhanced_compiler(use_vllm_native=False)
        assert compiler.backend_id == "vllm"
    else:
        pytest.skip("no backend can run here")


@pytest.mark.parametrize("use_vllm_native", [True, False])
def test_aot_backend_overrides_both(
    unusable: dict[str, str | None], monkeypatch: pytest.MonkeyPatch, use_vllm_native: bool
) -> None:
    usable = [n for n, why in unusable.items() if why is None]
    if not usable:
        pytest.skip("no backend can run here")
    for name in usable:
        monkeypatch.setenv("AOT_BACKEND", name)
        with warnings.catch_warnings():
            warnings.simplefilter("error", BackendFallbackWarning)
            compiler = create_enhanced_compiler(use_vllm_native=use_vllm_native)
        assert compiler.backend_id == name


def test_aot_backend_naming_a_missing_backend(
    installed: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = [n for n in (selection.VLLM, selection.LEGACY) if n not in installed]
    if not missing:
        pytest.skip("both backends are installed")
    monkeypatch.setenv("AOT_BACKEND", missing[0])
    with pytest.raises(ImportError, match=f"AOT_BACKEND.*pip install aot-{missing[0]}"):
        create_enhanced_compiler()


def test_vllm_import_failure_is_reported(
    installed: set[str], unusable: dict[str, str | None], tmp_path: Path
) -> None:
    if "vllm" not in installed:
        pytest.skip("aot-vllm is not installed")
    # what a broken vLLM build (say, a torch ABI mismatch) looks like to the probe
    out = choose_with_broken("vllm", "simulated broken vLLM build", tmp_path).stdout
    expected = "vLLM failed to import with this error: ImportError: simulated broken vLLM build"
    assert expected in out, out
    if unusable["legacy"] is None:
        assert "CHOSE legacy" in out
        assert "falling back to the legacy backend" in out
    else:
        assert "ERROR NoUsableBackendError" in out
