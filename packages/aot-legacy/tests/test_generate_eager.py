"""Fast tests: the generate loop, prompts, sampling and stats on the eager tier."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from aot_core import AOTError, GenerationParams, OptimizationStats, SpecError, get_backend
from aot_legacy import LegacyBackend, TinyDecoder
from aot_legacy.compiled_model import LegacyCompiledModel
from conftest import GREEDY, MAX_LEN, PROMPTS, spec
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, aot_legacy, aot_legacy.backend;"
        "from aot_core import list_backends; list_backends();"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_start_from_a_directory_does_not_import_transformers(tiny_dir: Path) -> None:
    # aot's own decoder reads config.json and safetensors; the tokenizer (transformers)
    # loads on first use of text, so a start that sees token ids never pays for it.
    code = (
        "import sys; from aot_core import CompileSpec;"
        "from aot_legacy import LegacyBackend;"
        "s = CompileSpec(compile_mode='none', max_model_len=32);"
        f"m = LegacyBackend(s).compile_model({str(tiny_dir)!r}, s);"
        "assert 'transformers' not in sys.modules, 'transformers imported';"
        "assert m.generate(['Hi'])[0].text is not None; assert 'transformers' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_as_legacy_backend() -> None:
    info = get_backend("legacy")
    cls = info.compiler if hasattr(info, "compiler") else info
    assert cls is LegacyBackend
    assert LegacyBackend.availability().usable
    assert LegacyBackend.priority == 50


def test_eager_matches_transformers_generate(tiny_dir: Path, eager_tokens: list) -> None:
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True).eval()
    for prompt, ours in zip(PROMPTS, eager_tokens, strict=True):
        ref = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=256,
        )[0, len(prompt) :].tolist()
        assert list(ours) == ref


def test_batch_padding_does_not_change_tokens(
    eager: LegacyCompiledModel, eager_tokens: list
) -> None:
    for prompt, expected in zip(PROMPTS, eager_tokens, strict=True):
        (alone,) = eager.generate([prompt], GREEDY)
        assert alone.token_ids == expected


def test_batch_larger_than_cache_runs_in_chunks(
    eager: LegacyCompiledModel, eager_tokens: list
) -> None:
    out = eager.generate(PROMPTS * 3, GREEDY)  # 9 prompts, 4 KV rows
    assert [g.token_ids for g in out] == eager_tokens * 3


def test_text_prompts_use_the_saved_tokenizer(eager: LegacyCompiledModel, tiny_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    (g,) = eager.generate(["Hello, wörld"], GREEDY)
    assert list(g.prompt_token_ids) == list("Hello, wörld".encode())
    assert g.text == tok.decode(list(g.token_ids), skip_special_tokens=True)
    assert len(g.token_ids) == 8 and g.finish_reason == "length"


def test_stops_at_eos(tiny_dir: Path, eager_tokens: list) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    stop = eager_tokens[0][2]
    model.generation_config.eos_token_id = stop  # a token greedy decoding is known to emit
    with LegacyBackend().compile_model(model, spec(compile_mode="none")) as m:
        first, *_ = m.generate(PROMPTS, GenerationParams(max_new_tokens=8))
        cut = eager_tokens[0].index(stop) + 1
        assert first.token_ids == eager_tokens[0][:cut]
        assert first.finish_reason == "stop"
        again, *_ = m.generate(PROMPTS, GenerationParams(max_new_tokens=8, stop_on_eos=False))
        assert again.token_ids == eager_tokens[0] and again.finish_reason == "length"


def test_stops_at_a_stop_string(
    eager: LegacyCompiledModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three rows that stop early, and a shorter prompt (the last KV row: prompts run
    # longest first) that runs on alone, moved to a smaller batch.
    prompts = ["The cat"] * 3 + ["Hi"]
    params = GenerationParams(max_new_tokens=24, stop_on_eos=False)
    full = eager.generate(prompts, params)
    tokens = full[0].token_ids
    # A stop string of two printable tokens (bytes) from the middle of the first text.
    at = next(i for i in range(2, 20) if all(32 <= t < 127 for t in tokens[i : i + 2]))
    stop = bytes(tokens[at : at + 2]).decode()
    assert full[0].text is not None and stop in full[0].text
    assert full[3].text is not None and stop not in full[3].text
    generator = eager._generator
    assert generator is not None
    step, batches = generator.decode, []
    monkeypatch.setattr(generator, "decode", lambda *a: batches.append(len(a[0])) or step(*a))
    cut = eager.generate(prompts, replace(params, stop=("never in this text", stop)))
    assert batches[0] == 4 and batches[-1] == 2  # the finished rows left the batch
    for g in cut[:3]:
        assert g.token_ids == tokens[: at + 2]  # ends with the token completing the stop
        assert g.finish_reason == "stop"
        assert g.text == full[0].text[: full[0].text.index(stop)]
    assert cut[3] == full[3]  # a row without the stop string runs on to the end
    assert eager.last_timings is not None
    assert eager.last_timings.output_tokens == 3 * (at + 2) + 24


def test_sampling_is_seeded_and_top_k_1_is_greedy(
    eager: LegacyCompiledModel, eager_tokens: list
) -> None:
    p = GenerationParams(max_new_tokens=8, temperature=1.0, seed=7, stop_on_eos=False)
    a = [g.token_ids for g in eager.generate(PROMPTS, p)]
    b = [g.token_ids for g in eager.generate(PROMPTS, p)]
    assert a == b
    other = GenerationParams(max_new_tokens=8, temperature=1.0, seed=8, stop_on_eos=False)
    assert [g.token_ids for g in eager.generate(PROMPTS, other)] != a
    top1 = GenerationParams(max_new_tokens=8, temperature=0.7, top_k=1, seed=1, stop_on_eos=False)
    assert [g.token_ids for g in eager.generate(PROMPTS, top1)] == eager_tokens
    nucleus = GenerationParams(
        max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=3, stop_on_eos=False
    )
    assert [g.token_ids for g in eager.generate(PROMPTS, nucleus)] == eager_tokens


def test_generation_stops_at_max_model_len(eager: LegacyCompiledModel) -> None:
    prompt = [1] * (MAX_LEN - 3)
    (g,) = eager.generate([prompt], GenerationParams(max_new_tokens=10, stop_on_eos=False))
    assert len(g.token_ids) == 3 and g.finish_reason == "length"


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ([[1] * MAX_LEN], "max_model_len"),
        ([[1, 2, 999]], "outside the vocabulary"),
        ([[]], "empty"),
        ([], "empty"),
    ],
)
def test_bad_prompts_get_clear_errors(
    eager: LegacyCompiledModel, prompts: list, match: str
) -> None:
    with pytest.raises(SpecError, match=match):
        eager.generate(prompts, GREEDY)


def test_stats_are_filled_and_round_trip(eager: LegacyCompiledModel) -> None:
    eager.generate(PROMPTS, GREEDY)
    s = eager.stats
    assert s.backend == "legacy" and s.torch_version == torch.__version__
    assert s.cache.status == "disabled" and "compile_mode" in s.cache.reason
    assert s.cuda_graphs_note == "disabled: no CUDA device" or torch.cuda.is_available()
    assert s.kv_cache_tokens == 4 * MAX_LEN
    assert s.output_tokens_per_s and s.output_tokens_per_s > 0
    assert s.prompt_tokens_per_s and s.time_to_first_token_s and s.time_to_first_token_s > 0
    assert s.peak_host_memory_bytes and s.peak_host_memory_bytes > 0
    phases = {"import", "read_config", "build_model", "load_weights", "kv_cache"}
    assert phases <= set(s.startup_phases)
    assert OptimizationStats.from_json(s.to_json()) == s
    assert LegacyBackend().get_optimization_stats() is None


def test_plain_torch_decoder(tmp_path: Path) -> None:
    decoder = TinyDecoder(seed=1)
    compiler = LegacyBackend(spec(compile_mode="none", cache_dir=str(tmp_path)))
    with compiler.compile_model(decoder) as m:
        batch = m.generate(PROMPTS, GREEDY)
        alone = [m.generate([p], GREEDY)[0] for p in PROMPTS]
        assert [g.token_ids for g in batch] == [g.token_ids for g in alone]
        assert all(g.text is None for g in batch)
        with pytest.raises(SpecError, match="tokenizer"):
            m.generate(["text"], GREEDY)
        assert compiler.get_optimization_stats() == m.stats


def test_close_and_context_manager(tiny_dir: Path) -> None:
    with LegacyBackend().compile_model(tiny_dir, spec(compile_mode="none")) as m:
        m.generate([[1, 2]], GREEDY)
    assert isinstance(m, LegacyCompiledModel) and m.closed
    m.close()  # twice is harmless
    with pytest.raises(AOTError, match="closed"):
        m.generate([[1, 2]], GREEDY)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"backend_options": {"bogus": 1}}, "does not understand bogus"),
        ({"backend_options": {"batch_buckets": [1, 4]}}, "batch size >= 2"),
        ({"backend_options": {"device": "tpu"}}, "device"),
        ({"max_model_len": 100_000}, "max_position_embeddings"),
        ({"tensor_parallel_size": 2}, "one device"),
    ],
)
def test_bad_specs_fail_before_compiling(tiny_dir: Path, kw: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        LegacyBackend().compile_model(tiny_dir, spec(compile_mode="none", **kw))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_asked_without_cuda(tiny_dir: Path) -> None:
    with pytest.raises(SpecError, match="no CUDA device"):
        LegacyBackend().compile_model(tiny_dir, spec(backend_options={"device": "cuda"}))


def test_bad_models_get_clear_errors(tmp_path: Path) -> None:
    c = LegacyBackend(spec(compile_mode="none"))
    with pytest.raises(SpecError, match="not a directory"):
        c.compile_model(tmp_path / "missing")
    with pytest.raises(SpecError, match=r"no config\.json"):
        c.compile_model(tmp_path)
    with pytest.raises(SpecError, match="cannot compile a int"):
        c.compile_model(42)


def test_runs_the_core_tiny_model(tmp_path: Path) -> None:
    tiny = pytest.importorskip("aot_core.models.tiny")
    model_dir = tiny.write_tiny_llama(tmp_path / "core-tiny")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    prompt = [5, 17, 42]
    ref = hf.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, 3, dtype=torch.long),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=256,
    )[0, 3:].tolist()
    with LegacyBackend().compile_model(model_dir, spec(compile_mode="none")) as m:
        out = m.generate([prompt, "Hello"], GenerationParams(max_new_tokens=6, stop_on_eos=False))
        assert list(out[0].token_ids) == ref
        assert list(out[1].prompt_token_ids) == list(b"Hello") and out[1].text is not None


def test_unused_spec_fields_are_noted(tiny_dir: Path) -> None:
    s = spec(compile_mode="none", max_num_batched_tokens=512)
    with LegacyBackend().compile_model(tiny_dir, s) as m:
        assert any("max_num_batched_tokens is not used" in n for n in m.stats.notes)
        assert any("chunked prefill" in n for n in m.stats.notes)
