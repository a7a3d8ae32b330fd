"""What the legacy backend says about itself through aot-core's ``Compiler`` contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from aot_core import artifacts, registry
from aot_core.errors import EmptyPathVariableError, ModelFilesError, SpecError
from aot_core.spec import CompileSpec
from aot_legacy import LegacyBackend
from aot_legacy.options import LegacyOptions


def test_describes_itself() -> None:
    cls = LegacyBackend
    assert cls.description and registry.installed_backends()["legacy"] is cls
    assert cls.pins() == {"torch": artifacts.torch_version(), "aot-legacy-steps": "2"}
    assert cls.check_engine().usable  # torch imports here
    assert registry.availability("legacy", deep=True).usable


def test_options_class_validates_and_knows_old_keys() -> None:
    options = LegacyBackend.options_class
    assert options is LegacyOptions
    assert options.validate(CompileSpec(backend_options={"threads": 1})).threads == 1
    with pytest.raises(SpecError, match="does not understand gpu_memory_utilization"):
        options.validate(CompileSpec(backend_options={"gpu_memory_utilization": 0.5}))
    assert options.migrate("device") == ("device",)
    assert options.migrate("seed") is None  # a vLLM setting: not this backend's


@pytest.mark.parametrize("variable", ["AOT_CACHE_DIR", "XDG_CACHE_HOME", "HOME"])
def test_an_empty_path_variable_is_refused_for_the_backends_cache(
    variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23 item 2: aot-legacy read $AOT_CACHE_DIR itself; empty meant ~/.cache/aot."""
    from aot_legacy.options import LegacyOptions
    from aot_legacy.startup import request_start

    def cache_root(spec: CompileSpec) -> Path:
        return request_start(
            "model", spec, LegacyOptions(), aot=False, backend_version="0"
        ).cache_root

    for name in ("AOT_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    # aot's own store, shared with every backend (entries/<key>)
    assert cache_root(CompileSpec()) == tmp_path / ".cache" / "aot"
    monkeypatch.setenv(variable, "")
    with pytest.raises(EmptyPathVariableError, match=variable):
        cache_root(CompileSpec())
    # a spec's own cache_dir needs no variable
    assert cache_root(CompileSpec(cache_dir=str(tmp_path))) == tmp_path


def test_unreadable_weights_are_a_model_files_error(tmp_path: Path) -> None:
    """Issue 23 item 5: the same damage exited 5 here and 7 on vLLM; now 4 on both."""
    from aot_legacy.checkpoint import load_state

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ModelFilesError, match=r"model\.safetensors"):
        load_state([weights])
