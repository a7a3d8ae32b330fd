"""One resolved start per command: dtype "auto", context, batch limits and cache paths are
decided once, by one rule, whichever kind of CPU runs the test (both kinds are faked)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest.mock import ANY

import pytest
from aot_core import artifacts, dtype_choice
from aot_core.bench.prompts import default_prompts
from aot_core.cli import bench as bench_cli
from aot_core.cli import model_spec
from aot_core.evaluation.model_args import parse_model_args
from aot_core.evaluation.startup import job_spec
from aot_core.evaluation.workload import SCORING_SEQS, JobRequests
from aot_core.models.tiny import write_tiny_llama
from aot_core.serve.command import serve_spec
from aot_core.spec import CompileSpec
from aot_core.start_config import resolve_start

AVX2 = ("avx2", "fma")
AVX512_BF16 = ("avx2", "avx512f", "avx512_bf16")


@pytest.fixture
def on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here, whatever the host has (nvidia-smi is not asked)."""
    monkeypatch.setattr(artifacts, "cuda_capabilities", lambda: ())


def _model(tmp_path: Path, torch_dtype: str | None) -> Path:
    directory = tmp_path / f"model-{torch_dtype}"
    directory.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 2048}
    if torch_dtype is not None:
        config["torch_dtype"] = torch_dtype
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    ("isa", "checkpoint", "expected", "source"),
    [
        (AVX2, "bfloat16", "float32", "machine"),
        (AVX2, "float32", "float32", "machine"),
        (AVX512_BF16, "float32", "float32", "model config"),
        (AVX512_BF16, "bfloat16", "bfloat16", "model config"),
        (AVX512_BF16, None, "float32", "model config"),
        (("amx_bf16",), "float16", "float16", "model config"),
        (("asimd", "bf16"), "bfloat16", "bfloat16", "model config"),
    ],
)
def test_auto_is_the_checkpoints_dtype_where_bf16_is_native_else_float32(
    tmp_path: Path, isa: tuple[str, ...], checkpoint: str | None, expected: str, source: str
) -> None:
    model = _model(tmp_path, checkpoint)
    choice = dtype_choice.resolve_dtype("auto", model, isa=isa)
    assert (choice.dtype, choice.source) == (expected, source), choice.reason


def test_an_explicit_dtype_wins_a_gpu_keeps_the_checkpoints_and_a_hub_name_is_left(
    tmp_path: Path,
) -> None:
    model = _model(tmp_path, "float32")
    assert dtype_choice.resolve_dtype("bfloat16", model, isa=AVX2).dtype == "bfloat16"
    assert dtype_choice.resolve_dtype("auto", model, gpu=True, isa=AVX2).dtype == "float32"
    bf16 = _model(tmp_path, "bfloat16")
    assert dtype_choice.resolve_dtype("auto", bf16, gpu=True, isa=AVX2).dtype == "bfloat16"
    # No config.json to read (a hub name): the engine chooses, except where bf16 is emulated.
    assert dtype_choice.resolve_dtype("auto", None, gpu=True).source == "engine"
    assert dtype_choice.resolve_dtype("auto", None, isa=AVX2).dtype == "float32"


def _bench_args(**changes: object) -> argparse.Namespace:
    """``aot bench``'s options as its parser leaves them without flags."""
    return argparse.Namespace(**({"spec": None, "prompts": None, "prompt_mix": "short"} | changes))


@pytest.mark.parametrize("isa", [AVX2, AVX512_BF16], ids=["avx2", "avx512_bf16"])
@pytest.mark.parametrize("checkpoint", ["float32", "bfloat16"])
def test_every_command_hands_its_backends_one_decided_dtype(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    on_cpu: None,
    isa: tuple[str, ...],
    checkpoint: str,
) -> None:
    # Before: `aot bench` (and `aot compile --shape`) put their own answer into the spec,
    # while `aot eval`, `aot compile` and `aot serve` recorded one and handed the backends
    # "auto", which each decided again at its start (vLLM with its own test for a GPU).
    monkeypatch.setattr(dtype_choice, "cpu_isa", lambda: isa)
    model = _model(tmp_path, checkpoint)
    decided = dtype_choice.resolve_dtype("auto", model, isa=isa).dtype
    bench, bench_start = bench_cli.bench_spec(_bench_args(), model)
    specs = {
        "bench": bench,
        "eval": job_spec(parse_model_args({"pretrained": str(model)}), str(tmp_path))[0],
        "eval --eager": job_spec(
            parse_model_args({"pretrained": str(model), "eager": True}), str(tmp_path)
        )[0],
        "compile": model_spec.compile_spec(CompileSpec(), model, shape=None)[0],
        "serve": serve_spec(CompileSpec(), model, tmp_path)[0],
    }
    assert {name: spec.dtype for name, spec in specs.items()} == dict.fromkeys(specs, decided)
    assert bench_start.dtype.source != "spec" and bench_start.dtype.reason
    # The bench's small engine comes from the same step, as its command default.
    assert (bench.max_model_len, bench.max_num_seqs) == (256, 4)
    assert bench_start.max_model_len.source == "command default"
    # What the user set is theirs: nothing decides over it.
    pinned = CompileSpec(dtype="bfloat16")
    assert resolve_start(pinned, model, gpu=False).apply(pinned).dtype == "bfloat16"


def test_eager_and_compiled_eval_jobs_and_aot_compile_resolve_one_start(
    tmp_path: Path, on_cpu: None
) -> None:
    # Before: the eager job ran max_model_len None (the model's 512 here, 8192 on a larger
    # model, and vLLM's own KV sizing), the compiled one 128 from the example prompts.
    model = write_tiny_llama(tmp_path / "tiny")
    store = tmp_path / "store"
    eager, eager_start = job_spec(
        parse_model_args({"pretrained": str(model), "eager": True}), str(store)
    )
    compiled, compiled_start = job_spec(parse_model_args({"pretrained": str(model)}), str(store))
    assert eager.compile_mode == "none" and compiled.compile_mode == "default"
    assert eager.replace(compile_mode="default") == compiled
    assert eager_start == compiled_start
    assert compiled.max_model_len == 128 and compiled.cache_dir == str(store)
    assert compiled.dtype == compiled_start.dtype.value == "float32"  # the tiny Llama's
    assert compiled_start.max_model_len.source.startswith("examples")
    assert compiled_start.max_num_seqs.source == "backend default"
    # `aot compile` of the same model and spec keys the entry the compiled job looks up.
    built, built_start = model_spec.compile_spec(CompileSpec(), model, shape=None)
    assert built_start.to_dict() == {**compiled_start.to_dict(), "cache_dir": ANY}
    assert built.fingerprint() == compiled.fingerprint()
    # A job's requests size its KV cache for eager and compiled alike, never its key.
    job = JobRequests(total=30, generations=5)
    for eager_job in (True, False):
        args = {"pretrained": str(model), "eager": eager_job}
        small, small_start = job_spec(parse_model_args(args), str(store), requests=job)
        assert small.kv_cache_seqs == small_start.kv_cache_seqs.value == SCORING_SEQS
        assert small_start.kv_cache_seqs.source == "job (30 requests, 5 generations)"
    assert small.fingerprint() == compiled.fingerprint() and compiled.kv_cache_seqs is None
    assert small.compiled_part() == compiled  # what the shared artifact's manifest records
    # The user's own value is theirs.
    mine = parse_model_args({"pretrained": str(model)}, base_spec=CompileSpec(kv_cache_seqs=8))
    assert job_spec(mine, str(store), requests=job)[0].kv_cache_seqs == 8


def test_a_job_keeps_cache_for_every_generation_and_a_floor_for_scoring() -> None:
    """Generations hold their cache until they stop, so each gets a sequence; log-likelihood
    requests hold theirs for one step, so a floor covers them; never more than the job."""
    assert JobRequests(total=224, generations=40).kv_sequences == 40
    assert JobRequests(total=224, generations=0).kv_sequences == SCORING_SEQS
    assert JobRequests(total=10, generations=2).kv_sequences == 10
    assert JobRequests(total=600, generations=600).kv_sequences == 600  # vLLM caps it


def test_the_spec_and_the_commands_defaults_come_before_the_examples(tmp_path: Path) -> None:
    model = _model(tmp_path, "float32")
    spec = CompileSpec(max_model_len=1024)
    start = resolve_start(spec, model, examples=default_prompts(), gpu=False)
    assert (start.max_model_len.value, start.max_model_len.source) == (1024, "spec")
    start = resolve_start(
        CompileSpec(), model, defaults={"max_model_len": 256, "max_num_seqs": 4}, gpu=False
    )
    assert start.apply(CompileSpec()).max_num_seqs == 4
    assert start.to_dict()["max_model_len"] == {"value": 256, "source": "command default"}
