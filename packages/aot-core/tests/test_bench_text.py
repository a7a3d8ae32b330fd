"""``aot bench --prompt-mix chat`` and ``--show-generations`` on a model without a tokenizer.

A byte-level model (the built-in tiny Llama) gets the questions' bytes and shows its tokens
as bytes; the real model's tokenizer and chat template are exercised end to end in
test_cli_e2e.py (``main_job``). The runs here are made-up inputs to pure functions.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from aot_core.bench import run as bench
from aot_core.bench.text import (
    CHAT_WORKLOAD,
    QUESTIONS,
    TextCodec,
    chat_workload,
    with_generations,
)
from aot_core.models.choice import ModelReady
from bench_support import bench_result, record


def test_chat_workload_on_a_byte_level_model_is_the_questions_bytes(tmp_path: Path) -> None:
    prompts, workload = chat_workload(tmp_path, None)  # no tokenizer files: byte-level
    assert workload == CHAT_WORKLOAD
    assert prompts == [list(q.encode()) for q in QUESTIONS]
    more, _ = chat_workload(tmp_path, len(QUESTIONS) + 1)
    assert more[-1] == list(QUESTIONS[0].encode())  # the questions in turn


def test_byte_decode_is_one_printable_line() -> None:
    assert TextCodec().decode(list(b"The capital\nof France is\x00 Paris.")) == (
        "The capital of France is Paris."
    )
    assert len(TextCodec().decode([65] * 500)) == 160  # cut, the JSON keeps the token ids


def test_generations_shown_eager_beside_compiled(tmp_path: Path) -> None:
    paris, rome = list(b"Paris."), list(b"Rome.")
    runs = [
        record("eager", startup=1.0, tps=1.0, mem=1, tokens=[paris, paris]),
        record("cold", startup=1.0, tps=1.0, mem=1, tokens=[paris, rome]),
        record("warm", startup=1.0, tps=1.0, mem=1, tokens=[paris, rome]),
    ]
    base = bench_result(runs)
    prompts, workload = chat_workload(tmp_path, 2)
    base = dataclasses.replace(base, settings={**base.settings, "workload": workload})
    result = with_generations(base, tmp_path, prompts, count=2)
    first, second = result.generations
    assert (first.prompt, first.eager, first.compiled, first.identical) == (
        QUESTIONS[0],
        "Paris.",
        "Paris.",
        True,
    )
    assert (second.compiled, second.identical) == ("Rome.", False)
    text = bench.format_report(result)
    assert "== generations, b (greedy): eager vs compiled" in text
    assert f"prompt:   {QUESTIONS[0]}" in text
    assert "  compiled: Paris.  [identical tokens]" in text
    assert "  compiled: Rome.  [DIFFERENT tokens]" in text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["generations"][0] == {
        "backend": "b",
        "prompt": QUESTIONS[0],
        "eager": "Paris.",
        "compiled": "Paris.",
        "identical": True,
    }
    assert with_generations(base, tmp_path, prompts, count=1).generations == (first,)


def test_model_ready_note_names_first_and_reused_times() -> None:
    ready = ModelReady(source="m.gguf", converted=True, first_s=12.345, reused_s=0.4)
    assert ready.note() == (
        "model ready from GGUF m.gguf: converted into a verified cache entry in 12.35 s; "
        "reused right after in 0.40 s (what each later start pays)"
    )
    assert ready.to_dict()["reused_s"] == 0.4
    again = ModelReady(source="m.gguf", converted=False, first_s=0.5)
    assert again.note() == "model ready from GGUF m.gguf: cache entry reused in 0.50 s"
