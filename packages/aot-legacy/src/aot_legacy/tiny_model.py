"""A tiny Hugging Face Llama written to disk in code: random weights, byte-level tokenizer.

For tests and benchmarks on machines with no model hub. Token ids 0-255 are bytes;
256-258 are ``<pad>``, ``<s>``, ``</s>``.
"""

from __future__ import annotations

from pathlib import Path

TINY_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 260,
    "max_position_embeddings": 512,
    "pad_token_id": 256,
    "bos_token_id": 257,
    "eos_token_id": 258,
}


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's printable stand-ins for raw bytes (transformers 5.x no longer exports it).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_byte_tokenizer() -> object:
    """A ``PreTrainedTokenizerFast`` whose token id equals the byte value."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab.update({"<pad>": 256, "<s>": 257, "</s>": 258, "<unk>": 259})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_tiny_llama(directory: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` and its tokenizer to ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY_CONFIG, dtype="float32"))
    model.save_pretrained(out)
    build_byte_tokenizer().save_pretrained(out)  # type: ignore[attr-defined]
    return out
