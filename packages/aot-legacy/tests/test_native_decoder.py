"""Fast tests: aot's own Llama-family decoder (config.json + safetensors, no transformers
model object) computes what transformers computes, for every family member it builds;
configs it cannot build fall back to transformers; config-only directories start with
placeholder weights, and the user is told."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from aot_core import SpecError
from aot_legacy import LegacyBackend
from aot_legacy.decoder import allocate_kv
from aot_legacy.llama import LlamaFamilyDecoder, inverse_frequencies, native_config
from aot_legacy.model_source import PlaceholderWeightsWarning, load_model
from conftest import GREEDY, PROMPTS, spec

SMALL = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "max_position_embeddings": 256,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _save(tmp_path: Path, kind: str, **extra: Any) -> Path:
    import transformers

    config_cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[kind]
    torch.manual_seed(11)
    config = config_cls(**SMALL, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # wider weights than the default init: logits far apart
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
            else:
                p.uniform_(0.5, 1.5)
    out = tmp_path / kind
    model.save_pretrained(out)
    return out


def _logits_both_ways(directory: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Last-position logits of a mixed-length batch: aot's decoder vs transformers."""
    from transformers import AutoModelForCausalLM

    loaded = load_model(directory, dtype="auto", device=torch.device("cpu"), phases={})
    step = loaded.step(64)
    ids = torch.tensor([[5, 17, 42, 99, 3, 7, 11], [65, 66, 67, 1, 1, 1, 1]])
    lengths = [7, 3]
    pos = torch.arange(7).expand(2, 7).contiguous()
    kv = allocate_kv(step.layout, max_batch=2, max_seq=64, dtype=torch.float32, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    with torch.no_grad():
        ours = step(ids, pos, torch.tensor([n - 1 for n in lengths]), *kv)
        ref = torch.stack([hf(ids[i : i + 1, :n]).logits[0, -1] for i, n in enumerate(lengths)])
    return ours, ref, loaded.loader


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True, "rope_scaling": dict(LLAMA3_ROPE)}),
        (
            "llama",
            {
                "attention_bias": True,
                "mlp_bias": True,
                "rope_scaling": {"rope_type": "linear", "factor": 2.0},
            },
        ),
        ("mistral", {"sliding_window": None}),
        ("qwen2", {"tie_word_embeddings": True}),
        ("qwen3", {"head_dim": 32}),
    ],
    ids=["llama", "llama3-rope-tied", "llama-bias-linear-rope", "mistral", "qwen2-tied", "qwen3"],
)
def test_native_decoder_matches_transformers(tmp_path: Path, kind: str, extra: dict) -> None:
    ours, ref, loader = _logits_both_ways(_save(tmp_path, kind, **extra))
    assert "no transformers" in loader
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_other_rope_types_fall_back_to_transformers(tmp_path: Path) -> None:
    yarn = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128}
    directory = _save(tmp_path, "llama", rope_scaling=yarn)
    ours, ref, loader = _logits_both_ways(directory)
    assert loader == "transformers"
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    with LegacyBackend().compile_model(directory, spec(compile_mode="none")) as m:
        assert any("cannot build this config (RoPE type 'yarn')" in n for n in m.stats.notes)
    (directory / "model.safetensors").unlink()  # config-only, through transformers too
    with pytest.warns(PlaceholderWeightsWarning):
        m = LegacyBackend().compile_model(directory, spec(compile_mode="none"))
    with m:
        assert (
            m.stats.resolved_config["model_loader"] == "transformers (random placeholder weights)"
        )
        assert len(m.generate(PROMPTS, GREEDY)[0].token_ids) == GREEDY.max_new_tokens


def test_published_llama_3_2_config_parses_like_transformers() -> None:
    """The legacy spelling (rope_theta + rope_scaling) of Llama-3.2-1B's published config."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    data = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {**LLAMA3_ROPE, "factor": 32.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }
    cfg = native_config(data)
    assert not isinstance(cfg, str)
    assert cfg.tie_word_embeddings and cfg.dtype == "bfloat16" and cfg.head_dim == 64
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**data))
    torch.testing.assert_close(inverse_frequencies(cfg), want)


def test_unsupported_architecture_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aot_core.cli.app import ExitCode, main

    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2})
    )
    with pytest.raises(SpecError, match=r"not GPT2LMHeadModel \(model_type 'gpt2'\)"):
        LegacyBackend().compile_model(model, spec(compile_mode="none"))
    # A config-only directory through `aot compile`: a documented exit, not a traceback.
    code = main(
        ["--cache-dir", str(tmp_path / "cache"), "compile", str(model), "--backend", "legacy"]
    )
    err = capsys.readouterr().err
    assert code == ExitCode.SPEC_ERROR and "GPT2LMHeadModel" in err and "Traceback" not in err


def test_checkpoint_that_does_not_fit_its_config(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = _save(tmp_path, "llama")
    state = load_file(str(directory / "model.safetensors"))
    state.pop("model.norm.weight")
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(SpecError, match=r"does not fit config\.json: missing \['model\.norm"):
        LegacyBackend().compile_model(directory, spec(compile_mode="none"))


def test_sharded_checkpoint_loads(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    single = _save(tmp_path, "qwen2")
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(single).save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    ours, ref, loader = _logits_both_ways(sharded)
    assert "no transformers" in loader
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_config_only_directory_runs_with_placeholder_weights(
    config_only_dir: Path,
) -> None:
    runs = []
    for _ in range(2):
        with pytest.warns(PlaceholderWeightsWarning, match="placeholder weights"):
            m = LegacyBackend().compile_model(config_only_dir, spec(compile_mode="none"))
        with m:
            assert m.stats.resolved_config["placeholder_weights"] is True
            assert "placeholder" in str(m.stats.resolved_config["model_loader"])
            assert any(n.startswith("weights are placeholders") for n in m.stats.notes)
            runs.append([g.token_ids for g in m.generate(PROMPTS, GREEDY)])
    assert runs[0] == runs[1]  # a fixed seed: placeholder runs are reproducible


def test_weights_as_inputs_covers_every_tensor(tiny_dir: Path) -> None:
    from aot_legacy.weights import WeightsAsInputs, step_tensors

    step = load_model(tiny_dir, dtype="auto", device=torch.device("cpu"), phases={}).step(32)
    assert isinstance(step, LlamaFamilyDecoder)
    names, tensors = step_tensors(step)
    assert names[-1] == "inv_freq" and "model.embed_tokens.weight" in names
    kv = allocate_kv(step.layout, max_batch=2, max_seq=32, dtype=torch.float32, device="cpu")
    kv2 = [t.clone() for t in kv]
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    pos = torch.arange(3).expand(2, 3).contiguous()
    last = torch.tensor([2, 1])
    wrapper = WeightsAsInputs(step, num_kv=len(kv), names=names)
    assert list(wrapper.parameters()) == [] and list(wrapper.buffers()) == []
    other = [torch.randn_like(t) if t.dim() > 1 else t for t in tensors]
    with torch.no_grad():
        torch.testing.assert_close(
            wrapper(ids, pos, last, *kv, *tensors), step(ids, pos, last, *kv2)
        )
        assert not torch.allclose(wrapper(ids, pos, last, *kv, *other), step(ids, pos, last, *kv2))
