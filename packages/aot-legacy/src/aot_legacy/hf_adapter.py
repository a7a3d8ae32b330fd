"""Drive a Hugging Face causal LM of the Llama family as a ``StaticKVDecoder``.

The adapter reuses the model's own modules (embeddings, projections, norms, MLPs, rotary
embedding, LM head) and replaces only the attention-with-cache part, so the KV cache can
be an explicit, in-place input. transformers' own export wrappers were measured to break
across torch releases (torch-aot.md section 1); this keeps the exported graph ours.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from aot_core.errors import SpecError

from aot_legacy.decoder import KVLayout, StaticKVDecoder, decoder_layers, gather_last
from aot_legacy.llama import SUPPORTED_MODEL_TYPES


class HFCausalLMStep(StaticKVDecoder):
    """A Llama-family ``transformers`` causal LM behind the static-KV step interface."""

    def __init__(self, model: Any, *, max_seq: int) -> None:
        super().__init__()
        config = model.config
        model_type = getattr(config, "model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise SpecError(
                f"model: the legacy backend drives Llama-family models "
                f"({', '.join(SUPPORTED_MODEL_TYPES)}), not model_type {model_type!r}; use "
                "the vllm backend for this model, or wrap it as an "
                "aot_legacy.StaticKVDecoder",
                field="model",
            )
        window = getattr(config, "sliding_window", None)
        uses_window = getattr(config, "use_sliding_window", model_type == "mistral")
        if window and uses_window and window < max_seq:
            raise SpecError(
                f"max_model_len: {max_seq} exceeds the model's sliding window {window}, which "
                f"this backend does not implement; set max_model_len <= {window}",
                field="max_model_len",
            )
        self.model = model
        inner = model.model
        attn0 = inner.layers[0].self_attn
        head_dim = int(getattr(attn0, "head_dim", config.hidden_size // config.num_attention_heads))
        self.layout = KVLayout(
            num_layers=len(inner.layers),
            num_kv_heads=int(config.num_key_value_heads),
            head_dim=head_dim,
            vocab_size=int(config.vocab_size),
            max_positions=int(config.max_position_embeddings),
        )
        self.n_heads = int(config.num_attention_heads)
        self.eos_token_ids = _eos_ids(model)
        pad = getattr(config, "pad_token_id", None)
        self.pad_token_id = int(pad) if isinstance(pad, int) else (self.eos_token_ids or (0,))[0]
        self.config_dict = config.to_dict()

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        input_ids, positions, last_index, *kv = args
        inner = self.model.model
        x = inner.embed_tokens(input_ids)
        cos, sin = inner.rotary_emb(x, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        x = decoder_layers(
            inner.layers,
            x,
            kv,
            cos=cos,
            sin=sin,
            positions=positions,
            n_heads=self.n_heads,
            n_kv_heads=self.layout.num_kv_heads,
            scaling=None,  # each transformers layer's own
        )
        x = gather_last(inner.norm(x), last_index)
        return self.model.lm_head(x).float()


def _eos_ids(model: Any) -> tuple[int, ...]:
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)


def is_hf_model(obj: Any) -> bool:
    """Whether ``obj`` looks like a transformers PreTrainedModel with a causal-LM head."""
    return hasattr(obj, "config") and hasattr(obj, "lm_head") and hasattr(obj, "model")


def load_hf_model(directory: Path, *, dtype: torch.dtype | None, placeholder: bool = False) -> Any:
    """Load a causal LM from a local HF directory, never touching the network.

    ``placeholder``: the directory holds no weights; build the model from its config with
    randomly initialised weights (from a fixed seed).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (directory / "config.json").is_file():
        raise SpecError(
            f"model: {directory} has no config.json; pass a Hugging Face model directory, "
            "a transformers model object or an aot_legacy.StaticKVDecoder",
            field="model",
        )
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise SpecError(
            f"model: {directory} holds a {', '.join(archs)}, not a causal LM",
            field="model",
        )
    if placeholder:
        torch.manual_seed(0)
        named = getattr(config, "dtype", None)  # "auto": the dtype config.json names
        chosen = dtype or (getattr(torch, named) if isinstance(named, str) else named)
        model = AutoModelForCausalLM.from_config(config, dtype=chosen or torch.float32)
        return model.eval()
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    return model.eval()


class LazyTokenizer:
    """The tokenizer saved beside a model, loaded with transformers on first use.

    Importing transformers and building the tokenizer took about 2.7 s here; a start
    that only sees token ids never pays it. Attribute access and calls go to the loaded
    tokenizer.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._loaded: Any | None = None

    def _tokenizer(self) -> Any:
        if self._loaded is None:
            from transformers import AutoTokenizer

            self._loaded = AutoTokenizer.from_pretrained(self._directory, local_files_only=True)
        return self._loaded

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # our own fields, copy/pickle probes: never load for them
            raise AttributeError(name)
        return getattr(self._tokenizer(), name)


def load_tokenizer(directory: Path | None) -> Any | None:
    """The tokenizer saved beside the model (loaded lazily), or None when there is none."""
    if directory is None:
        return None
    if not any((directory / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return LazyTokenizer(directory)


def config_hash(config_dict: dict[str, Any]) -> str:
    """A stable hash of a model config, ignoring fields that do not change the graph."""
    skip = {"_name_or_path", "transformers_version", "name_or_path", "_commit_hash"}
    clean = {k: v for k, v in config_dict.items() if k not in skip}
    text = json.dumps(clean, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
