"""Issue 14's snippet, verbatim, on transformers models: one loaded from disk, one built in
memory; outputs held to transformers' own ``generate`` (float32, greedy).

    compiler = create_enhanced_compiler(enable_cuda_graphs=True)
    compiled_model = compiler.compile_model_aot(model, inputs, config)

One compile per model kind serves the module (on vLLM, one engine each).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aot_compat import LegacyConfigWarning, UnknownConfigKeyWarning
from engines.shared import create_enhanced_compiler

pytestmark = pytest.mark.slow

PROMPTS = [list(b"Hello"), list(b"Hi")]
MAX_NEW = 6
PAD = 256  # the tiny model's pad token


def _model(kind: str, tiny_model_dir: Path, in_memory_model: Any) -> Any:
    from transformers import LlamaForCausalLM

    if kind == "saved":
        return LlamaForCausalLM.from_pretrained(tiny_model_dir, torch_dtype="float32").eval()
    return in_memory_model()


@pytest.fixture(scope="module", params=["saved", "in-memory"])
def snippet(
    request: pytest.FixtureRequest,
    tiny_model_dir: Path,
    in_memory_model: Any,
    expected_default: str | None,
) -> Iterator[tuple[str, Any, Any, Any, list[warnings.WarningMessage]]]:
    if expected_default is None:
        with pytest.raises(ImportError, match="pip install"):
            create_enhanced_compiler(enable_cuda_graphs=True)
        pytest.skip("no backend: the old call raised the clear 'install a backend' error")
    pytest.importorskip("transformers", reason="the snippet's model is a transformers model")
    import torch

    model = _model(request.param, tiny_model_dir, in_memory_model)
    # the example inputs and settings of test_compat_old_api.py, so that the saved model's
    # compile finds the compiled code that module's compile of the same model left behind
    inputs = torch.tensor([list(b"Hello"), list(b"World")])
    # an old config, with a key no backend knows: it warns, the compile goes on
    config: dict[str, Any] = {
        "max_seq_len": 128,
        "kv_cache_memory_bytes": 64 << 20,
        "max_batch_size": 4,
    }
    if request.param == "in-memory":
        from transformers import AutoTokenizer

        # the in-memory model's tokenizer goes with it (text prompts work)
        config["tokenizer"] = AutoTokenizer.from_pretrained(tiny_model_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # --- the old code, verbatim ---
        compiler = create_enhanced_compiler(enable_cuda_graphs=True)
        compiled_model = compiler.compile_model_aot(model, inputs, config)
        # ------------------------------
    yield request.param, model, compiler, compiled_model, list(caught)
    compiler.close()


def _reference(model: Any, ids: Any, mask: Any) -> Any:
    import torch

    with torch.no_grad():
        return model.generate(
            ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=PAD
        )


def _left_padded() -> tuple[Any, Any]:
    import torch

    width = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    return ids, mask


def test_unknown_key_warned_and_compiled(snippet: Any) -> None:
    *_, caught = snippet
    unknown = [str(w.message) for w in caught if w.category is UnknownConfigKeyWarning]
    # (where aot-vllm is not installed, its settings in the snippet are unknown here too)
    assert any("'max_batch_size'" in message for message in unknown), unknown
    assert issubclass(UnknownConfigKeyWarning, LegacyConfigWarning)


def test_hf_style_generate_equals_transformers(snippet: Any) -> None:
    _, model, _, compiled_model, _ = snippet
    ids, mask = _left_padded()
    out = compiled_model.generate(
        ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=PAD
    )
    expected = _reference(model, ids, mask)
    assert out.tolist() == expected.tolist()


def test_vllm_style_generate_equals_transformers(snippet: Any) -> None:
    import torch

    _, model, _, compiled_model, _ = snippet
    outputs = compiled_model.generate(PROMPTS, max_tokens=MAX_NEW)
    for prompt, out in zip(PROMPTS, outputs, strict=True):
        ids = torch.tensor([prompt])
        expected = _reference(model, ids, torch.ones_like(ids))[0, len(prompt) :].tolist()
        # transformers pads after an early end; the backend just stops
        assert list(out.token_ids) == expected[: len(out.token_ids)]
        assert all(t == PAD for t in expected[len(out.token_ids) :])


def test_right_padding_and_beams(snippet: Any) -> None:
    import torch

    _, model, _, compiled_model, _ = snippet
    ids = torch.tensor([PROMPTS[1] + [PAD] * 3])
    mask = torch.tensor([[1] * len(PROMPTS[1]) + [0] * 3])
    out = compiled_model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    solo = torch.tensor([PROMPTS[1]])
    expected = _reference(model, solo, torch.ones_like(solo))[0, len(PROMPTS[1]) :][:3]
    # new tokens continue the real tokens, placed after the whole input row
    assert out[0, ids.shape[1] :].tolist()[: len(expected)] == expected.tolist()
    with pytest.raises(TypeError, match="num_beams=4 cannot be honoured"):
        compiled_model.generate(ids, attention_mask=mask, num_beams=4)


def test_in_memory_model_is_saved_where_the_stats_say(snippet: Any) -> None:
    kind, _, compiler, compiled_model, _ = snippet
    if compiler.backend_id != "vllm":
        pytest.skip("the legacy backend compiles the module itself; nothing is saved")
    notes = " ".join(compiled_model.stats.notes)
    if kind == "in-memory":
        assert "in-memory model saved in aot's model cache" in notes
    else:
        assert "model cache" not in notes


def test_module_style_call(snippet: Any) -> None:
    import torch

    _, model, compiler, compiled_model, _ = snippet
    ids, mask = _left_padded()
    if compiler.backend_id != "legacy":
        with pytest.raises(TypeError, match="generate"):
            compiled_model(ids)
        return
    out = compiled_model(ids, attention_mask=mask)
    with torch.no_grad():
        eager = model(ids, attention_mask=mask)
    assert type(out).__name__ == type(eager).__name__
    real = mask.bool()
    torch.testing.assert_close(out.logits[real], eager.logits[real], rtol=1e-4, atol=1e-4)
    plain = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        torch.testing.assert_close(
            compiled_model(plain).logits, model(plain).logits, rtol=1e-4, atol=1e-4
        )
        loss = compiled_model(plain, labels=plain).loss
        torch.testing.assert_close(loss, model(plain, labels=plain).loss, rtol=1e-4, atol=1e-4)


def test_text_prompts_use_the_models_tokenizer(snippet: Any) -> None:
    _, _, _, compiled_model, _ = snippet
    (text_out,) = compiled_model.generate(["Hello"], max_tokens=4)
    (ids_out,) = compiled_model.generate([list(b"Hello")], max_tokens=4)
    assert text_out.prompt_token_ids == tuple(b"Hello")  # the byte-level tokenizer ran
    assert text_out.token_ids == ids_out.token_ids
    assert isinstance(text_out.text, str)
