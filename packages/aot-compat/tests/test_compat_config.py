"""The old dict configuration maps to CompileSpec; nothing is silently dropped."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import pytest
from aot_compat import LegacyConfigError, LegacyConfigWarning, UnknownConfigKeyWarning, translate
from aot_compat.legacy_config import STRICT_ENV
from aot_core import CompileSpec, SpecError, registry
from aot_core.options import BackendOptions, OptionPath

# Where a backend's own old keys go is that backend's knowledge (its options class's
# migration table), so those tests run where the backend is installed.
needs_vllm = pytest.mark.skipif(
    "vllm" not in registry.installed_backends(),
    reason="aot-vllm is not installed: its table of old keys is not here",
)


def _quiet(config: object, **kw: object) -> CompileSpec:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these configs must translate without a word
        return translate(config, **kw).spec  # type: ignore[arg-type]


def test_old_keys_map_to_spec_fields() -> None:
    spec = _quiet(
        {
            "tensor_parallel_size": 1,
            "max_seq_len": 256,
            "enable_chunked_prefill": True,
            "chunking_threshold": 64,
            "compilation_level": 2,
            "torch_dtype": "float32",
            "cudagraph_capture_sizes": [4, 1, 2],
            "cache_dir": "/tmp/x",
        }
    )
    assert spec.max_model_len == 256
    assert spec.long_prefill_token_threshold == 64
    assert spec.compile_mode == "default"
    assert spec.dtype == "float32"
    assert spec.cuda_graph_sizes == (1, 2, 4)
    assert spec.cache_dir == "/tmp/x"


def test_compilation_level_zero_means_no_compilation() -> None:
    assert _quiet({"compilation_level": 0}).compile_mode == "none"
    with pytest.raises(LegacyConfigError, match="compilation_level"):
        translate({"compilation_level": 7})


@pytest.mark.parametrize(
    ("mode", "compile_mode", "graphs"),
    [
        ("default", "default", True),
        ("max-autotune", "max-autotune", True),
        ("reduce-overhead", "default", True),
        ("max-autotune-no-cudagraphs", "max-autotune", False),
        ("eval", "default", True),  # the old vLLM wrapper's unused default
    ],
)
def test_compilation_mode_argument(mode: str, compile_mode: str, graphs: bool) -> None:
    spec = translate(None, compilation_mode=mode).spec
    assert (spec.compile_mode, spec.cuda_graphs) == (compile_mode, graphs)


def test_unknown_compilation_mode_is_an_error() -> None:
    with pytest.raises(LegacyConfigError, match="reduce-overhead"):
        translate(None, compilation_mode="turbo")


def test_unknown_key_warns_naming_it_and_suggests_and_is_ignored() -> None:
    # an old script's key that no backend knows must not stop a compile that once ran
    with pytest.warns(UnknownConfigKeyWarning) as record:
        result = translate({"tensor_paralel_size": 1, "max_seq_len": 64})
    (warning,) = record
    message = str(warning.message)
    assert "tensor_paralel_size" in message
    assert "did you mean 'tensor_parallel_size'" in message
    assert "strict=True" in message and "AOT_COMPAT_STRICT=1" in message
    assert issubclass(warning.category, LegacyConfigWarning)  # old filters still catch it
    assert result.spec == CompileSpec(max_model_len=64)
    assert result.notes == (message,)


def test_unknown_key_with_no_close_match_still_warns() -> None:
    with pytest.warns(UnknownConfigKeyWarning, match="'max_batch_size'"):
        assert translate({"max_batch_size": 8}).spec == CompileSpec()


def test_strict_makes_an_unknown_key_an_error_that_names_it_and_suggests() -> None:
    with pytest.raises(LegacyConfigError) as info:
        translate({"tensor_paralel_size": 2}, strict=True)
    message = str(info.value)
    assert "tensor_paralel_size" in message
    assert "did you mean 'tensor_parallel_size'" in message
    assert info.value.field == "tensor_paralel_size"
    assert isinstance(info.value, SpecError)


def test_strict_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(LegacyConfigError, match="max_batch_size"):
        translate({"max_batch_size": 8})
    with pytest.warns(UnknownConfigKeyWarning):
        translate({"max_batch_size": 8}, strict=False)  # the argument wins over the variable
    monkeypatch.setenv(STRICT_ENV, "0")
    with pytest.warns(UnknownConfigKeyWarning):
        translate({"max_batch_size": 8})
    monkeypatch.setenv(STRICT_ENV, "maybe")
    with pytest.raises(LegacyConfigError, match=r"AOT_COMPAT_STRICT='maybe'.*set it to 1"):
        translate({"max_batch_size": 8})


def test_strict_does_not_touch_known_keys_or_model_config_objects() -> None:
    @dataclass
    class ModelConfig:
        family: str
        max_length: int

    assert _quiet({"max_seq_len": 64}, strict=True).max_model_len == 64
    with pytest.warns(LegacyConfigWarning, match="family"):
        # a model-config object's other attributes describe the model, not the compile
        assert translate(ModelConfig("llama", 64), strict=True).spec.max_model_len == 64


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("max_seq_len_to_capture", 8192, "0.11.0"),
        ("max_num_partial_prefills", 4, "partial prefills"),
        ("max_long_partial_prefills", 2, "partial prefills"),
        ("use_inductor", False, "Inductor"),
        ("max_compilation_time", 600, "no compile-time limit"),
    ],
)
def test_obsolete_key_warns_naming_it(key: str, value: object, why: str) -> None:
    with pytest.warns(LegacyConfigWarning, match=key) as record:
        result = translate({key: value})
    assert why in str(record[0].message)
    assert result.notes and key in result.notes[0]
    assert result.spec == CompileSpec()


def test_values_that_were_always_no_ops_stay_quiet() -> None:
    assert _quiet({"max_num_partial_prefills": 1, "use_inductor": True}) == CompileSpec()


@needs_vllm
def test_backend_only_key_goes_to_that_backend() -> None:
    spec = _quiet({"gpu_memory_utilization": 0.5}, backend="vllm")
    assert dict(spec.backend_options) == {"gpu_memory_utilization": 0.5}


@needs_vllm
def test_vllm_engine_keywords_go_to_engine_args() -> None:
    spec = _quiet(
        {"seed": 0, "trust_remote_code": False, "cudagraph_num_of_warmups": 3}, backend="vllm"
    )
    options = spec.to_dict()["backend_options"]
    assert options == {
        "engine_args": {"seed": 0, "trust_remote_code": False},
        "compilation_config": {"cudagraph_num_of_warmups": 3},
    }


def test_enforce_eager_means_no_compile_and_no_graphs() -> None:
    spec = _quiet({"enforce_eager": True})
    assert (spec.compile_mode, spec.cuda_graphs) == ("none", False)


@needs_vllm
def test_backend_only_key_warns_on_another_backend() -> None:
    with pytest.warns(LegacyConfigWarning, match="gpu_memory_utilization.*legacy backend"):
        spec = translate({"gpu_memory_utilization": 0.5}, backend="legacy").spec
    assert dict(spec.backend_options) == {}


def test_backend_only_key_of_a_missing_backend_warns_instead_of_failing() -> None:
    # an old vLLM-era config on a machine without aot-vllm: a word, not an error, that
    # says which backend is missing and how to install it
    if "vllm" in registry.installed_backends():
        pytest.skip("aot-vllm is installed: its table says where the key goes")
    missing = r"'seed'.*aot-vllm (is|are) not installed here"
    with pytest.warns(LegacyConfigWarning, match=missing) as rec:
        spec = translate({"seed": 0}, backend="legacy").spec
    assert "'aot-compat[vllm]'" in str(rec[0].message)
    assert dict(spec.backend_options) == {}


def test_every_key_of_an_installed_backends_table_reaches_its_options() -> None:
    """Each installed backend's own old-key table is all the old API knows of that
    backend's keys: every key in it lands where the table says."""
    for name, cls in registry.installed_backends().items():
        for key, path in cls.options_class.migrations.items():
            spec = _quiet({key: 7}, backend=name)
            where: object = spec.backend_options
            for part in path:
                assert isinstance(where, Mapping), f"{name}: {key} -> {path}"
                where = where[part]
            assert where == 7, f"{name}: {key} -> {path}"


def test_a_key_added_to_a_backends_table_needs_no_second_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a backend that gains an old key in its own table: the old API routes it at once
    class Options(BackendOptions):
        migrations: ClassVar[Mapping[str, OptionPath]] = {
            "brand_new_old_key": ("engine_args", "brand_new")
        }

    backend = type("Toy", (), {"name": "newkeys", "options_class": Options})
    monkeypatch.setattr(registry, "installed_backends", lambda: {"newkeys": backend})
    monkeypatch.setattr(registry, "by_priority", lambda: ["newkeys"])
    spec = _quiet({"brand_new_old_key": 3})
    assert dict(spec.backend_options) == {"engine_args": {"brand_new": 3}}
    spec = _quiet({"brand_new_old_key": None})  # None is the old "not set"
    assert dict(spec.backend_options) == {}


def test_backend_options_pass_through() -> None:
    spec = _quiet({"backend_options": {"threads": 1}}, backend="legacy")
    assert dict(spec.backend_options) == {"threads": 1}


def test_conflicting_old_keys_are_an_error() -> None:
    with pytest.raises(LegacyConfigError, match=r"enable_cuda_graphs.*use_cudagraph"):
        translate({"enable_cuda_graphs": True, "use_cudagraph": False})


def test_batch_sizes_with_graphs_off_warn() -> None:
    with pytest.warns(LegacyConfigWarning, match="batch_sizes"):
        spec = translate(None, extra={"enable_cuda_graphs": False, "batch_sizes": [1, 2]}).spec
    assert spec.cuda_graphs is False
    assert spec.cuda_graph_sizes is None


def test_config_applies_on_top_of_the_constructor_spec() -> None:
    base = translate(None, extra={"batch_sizes": [1, 2, 4, 8], "cache_dir": "/c"}).spec
    spec = _quiet({"max_seq_len": 128}, base=base)
    assert spec.cuda_graph_sizes == (1, 2, 4, 8)
    assert spec.cache_dir == "/c"
    assert spec.max_model_len == 128


def test_invalid_value_error_names_the_old_key() -> None:
    with pytest.raises(LegacyConfigError, match=r"'max_seq_len'.*max_model_len"):
        translate({"max_seq_len": -1})


def test_compile_spec_is_used_as_is() -> None:
    spec = CompileSpec(compile_mode="none", cuda_graphs=False)
    assert translate(spec).spec is spec


def test_model_config_object_is_tolerated_and_reported() -> None:
    @dataclass
    class ModelConfig:
        model_name: str
        size_gb: float
        family: str
        max_length: int

    with pytest.warns(LegacyConfigWarning) as record:
        result = translate(ModelConfig("tiny", 0.01, "llama", 128))
    assert result.model_id == "tiny"
    assert result.spec.max_model_len == 128
    text = " ".join(str(w.message) for w in record)
    assert "size_gb" in text
    assert "family" in text


def test_old_graph_config_object() -> None:
    class CudaGraphConfig:
        def __init__(self) -> None:
            self.enabled = True
            self.batch_sizes = [1, 2]
            self.warmup_steps = 3

    with pytest.warns(LegacyConfigWarning, match="warmup_steps"):
        spec = translate(None, extra={"graph_config": CudaGraphConfig()}).spec
    assert spec.cuda_graph_sizes == (1, 2)


def test_base_compiler_is_reported() -> None:
    with pytest.warns(LegacyConfigWarning, match="base_compiler"):
        translate(None, extra={"base_compiler": object()})


def test_not_a_config() -> None:
    with pytest.raises(LegacyConfigError, match="must be a dict"):
        translate(42)


def test_tokenizer_object_is_carried_and_a_tokenizer_name_is_reported() -> None:
    class Tokenizer:
        def save_pretrained(self, path: str) -> None:
            raise AssertionError("translation must not save anything")

    tokenizer = Tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert translate({"tokenizer": tokenizer}).tokenizer is tokenizer
    with pytest.warns(LegacyConfigWarning, match="'tokenizer'='org/tok' has no effect"):
        assert translate({"tokenizer": "org/tok"}).tokenizer is None
