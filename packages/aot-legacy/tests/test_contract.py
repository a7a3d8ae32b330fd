"""What the legacy backend says about itself through aot-core's ``Compiler`` contract."""

from __future__ import annotations

import pytest
from aot_core import artifacts, registry
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec
from aot_legacy import IntegratedAOTCompiler
from aot_legacy.options import LegacyOptions


def test_describes_itself() -> None:
    cls = IntegratedAOTCompiler
    assert cls.description and registry.installed_backends()["legacy"] is cls
    assert cls.pins() == {"torch": artifacts.torch_version()}
    assert cls.check_engine().usable  # torch imports here
    assert registry.availability("legacy", deep=True).usable


def test_options_class_validates_and_knows_old_keys() -> None:
    options = IntegratedAOTCompiler.options_class
    assert options is LegacyOptions
    assert options.validate(CompileSpec(backend_options={"threads": 1})).threads == 1
    with pytest.raises(SpecError, match="does not understand gpu_memory_utilization"):
        options.validate(CompileSpec(backend_options={"gpu_memory_utilization": 0.5}))
    assert options.migrate("device") == ("device",)
    assert options.migrate("seed") is None  # a vLLM setting: not this backend's
