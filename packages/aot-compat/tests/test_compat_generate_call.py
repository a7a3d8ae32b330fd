"""generate() arguments in the old vLLM style and in transformers' style, translated.

No backend runs here; test_compat_old_api.py runs these calls on the real backends.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from aot_compat.generate_call import (
    as_tensor,
    cut_at_eos,
    default_pad_token_id,
    generation_params,
    parse_call,
)
from aot_core import Generation, GenerationParams


def test_vllm_style_keywords_and_params() -> None:
    call = parse_call([[1, 2], "text"], None, {"max_tokens": 3, "temperature": 0.5})
    assert call.prompts == [[1, 2], "text"]
    assert call.params == GenerationParams(max_new_tokens=3, temperature=0.5)
    assert call.input_tensor is None and call.eos_token_ids is None
    params = GenerationParams(max_new_tokens=2)
    assert parse_call([[1]], params, {}).params is params
    with pytest.raises(TypeError, match="not both"):
        parse_call([[1]], params, {"max_tokens": 2})


@pytest.mark.parametrize(
    ("ids", "mask"),
    [
        ([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]], [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),  # left
        ([[5, 6, 7, 0, 0], [1, 2, 3, 4, 5]], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),  # right
    ],
)
def test_attention_mask_removes_left_or_right_padding(
    ids: list[list[int]], mask: list[list[int]]
) -> None:
    call = parse_call(ids, None, {"attention_mask": mask, "max_new_tokens": 4})
    assert call.prompts == [[5, 6, 7], [1, 2, 3, 4, 5]]
    assert call.params.max_new_tokens == 4


def test_attention_mask_that_is_not_padding_is_refused() -> None:
    with pytest.raises(TypeError, match="row 0 has padding between tokens"):
        parse_call([[1, 2, 3]], None, {"attention_mask": [[1, 0, 1]]})
    with pytest.raises(TypeError, match="row 0 masks every token"):
        parse_call([[1, 2]], None, {"attention_mask": [[0, 0]]})
    with pytest.raises(TypeError, match="shape of input_ids"):
        parse_call([[1, 2]], None, {"attention_mask": [[1]]})


def test_tokenizer_output_and_input_ids_keyword() -> None:
    encoded = {"input_ids": [[0, 9, 8]], "attention_mask": [[0, 1, 1]]}
    assert parse_call(encoded, None, {}).prompts == [[9, 8]]
    assert parse_call(None, None, {"input_ids": [[4, 5]]}).prompts == [[4, 5]]
    with pytest.raises(TypeError, match="not both"):
        parse_call([[1]], None, {"input_ids": [[4, 5]]})
    with pytest.raises(TypeError, match="needs prompts"):
        parse_call(None, None, {})


def test_do_sample_false_is_greedy_whatever_the_temperature() -> None:
    params = generation_params(None, {"do_sample": False, "temperature": 0.7, "top_k": 5})
    assert params.greedy and params.top_k == 0


def test_do_sample_true_takes_transformers_defaults() -> None:
    params = generation_params(None, {"do_sample": True, "max_new_tokens": 2})
    assert (params.temperature, params.top_k, params.top_p) == (1.0, 50, 1.0)
    params = generation_params(None, {"do_sample": True, "temperature": 0.5, "top_k": None})
    assert (params.temperature, params.top_k) == (0.5, 50)
    with pytest.raises(TypeError, match="temperature > 0"):
        generation_params(None, {"do_sample": True, "temperature": 0.0})


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("num_beams", 4, "no beam search"),
        ("num_return_sequences", 2, "one sequence per prompt"),
        ("repetition_penalty", 1.2, "no repetition penalty"),
        ("output_scores", True, "not returned"),
    ],
)
def test_options_that_cannot_be_honoured_name_themselves(key: str, value: object, why: str) -> None:
    with pytest.raises(TypeError, match=rf"{key}={value!r} cannot be honoured: .*{why}"):
        generation_params(None, {key: value})


def test_transformers_defaults_change_nothing() -> None:
    params = generation_params(
        None,
        {"num_beams": 1, "num_return_sequences": 1, "use_cache": True, "max_new_tokens": 3},
    )
    assert params == GenerationParams(max_new_tokens=3)


def test_unknown_keyword_lists_what_is_allowed() -> None:
    with pytest.raises(TypeError, match=r"unknown keyword 'max_length'; allowed: .*do_sample"):
        generation_params(None, {"max_length": 3})


def test_eos_token_id_replaces_the_models_end_and_cuts_there() -> None:
    call = parse_call([[1]], None, {"eos_token_id": [7, 9], "max_new_tokens": 5})
    assert call.eos_token_ids == frozenset({7, 9})
    assert call.params.stop_on_eos is False  # the model's own end must not stop it
    gen = Generation(prompt_token_ids=(1,), token_ids=(3, 9, 4), text="abc", finish_reason="length")
    cut = cut_at_eos(gen, call.eos_token_ids)
    assert (cut.token_ids, cut.finish_reason, cut.text) == ((3, 9), "stop", None)
    whole = cut_at_eos(gen, frozenset({5}))
    assert (whole.token_ids, whole.text) == ((3, 9, 4), "abc")
    with pytest.raises(TypeError, match="pad_token_id must be one token id"):
        parse_call([[1]], None, {"pad_token_id": [1, 2]})


def test_tensor_answer_is_laid_out_as_transformers_lays_it_out() -> None:
    torch = pytest.importorskip("torch", reason="tensor answers need torch")
    ids = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    call = parse_call(ids, None, {"attention_mask": mask, "pad_token_id": 0})
    assert call.prompts == [[5, 6], [1, 2, 3, 4]]
    outputs = [
        Generation(prompt_token_ids=(5, 6), token_ids=(7, 2), finish_reason="stop"),
        Generation(prompt_token_ids=(1, 2, 3, 4), token_ids=(8, 8, 8), finish_reason="length"),
    ]
    out = as_tensor(call, outputs, default_pad=99)
    assert out.dtype == ids.dtype
    assert out.tolist() == [[0, 0, 5, 6, 7, 2, 0], [1, 2, 3, 4, 8, 8, 8]]
    # no pad named: the model's default, then (as transformers) the end token
    call = parse_call(ids, None, {"attention_mask": mask})
    assert as_tensor(call, outputs, default_pad=99)[0, -1].item() == 99
    assert as_tensor(call, outputs, default_pad=None)[0, -1].item() == 2
    one = parse_call(torch.tensor([5, 6]), None, {})
    assert as_tensor(one, outputs[:1], None).tolist() == [5, 6, 7, 2]


def test_default_pad_token_follows_transformers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"pad_token_id": 3, "eos_token_id": 2}))
    assert default_pad_token_id(tmp_path) == 3
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    assert default_pad_token_id(str(tmp_path)) == 2  # generation_config.json wins, eos fallback
    model = SimpleNamespace(generation_config=SimpleNamespace(pad_token_id=None, eos_token_id=4))
    assert default_pad_token_id(model) == 4
    assert default_pad_token_id(object()) is None
    assert default_pad_token_id(tmp_path / "missing") is None
