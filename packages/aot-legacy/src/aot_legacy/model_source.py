"""What the user passed (a model directory, a GGUF file or a real model's name, a
transformers model, a StaticKVDecoder), turned into the step the backend compiles, with
timed start-up phases. A GGUF input is converted once into aot's model cache
(``aot_core.models.gguf``) and loaded from there like any directory.

A directory is read without transformers when aot's own decoder can build its config
(``llama.py``): ``read_config``, ``build_model`` (on the meta device: nothing allocated),
``load_weights`` (the checkpoint's tensors are taken as they are). Configs it cannot
build go through transformers, as before. A directory with a config but no weights gets
placeholder weights, randomly initialised from a fixed seed, and the caller is told.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from aot_core.dtype_choice import resolve_dtype
from aot_core.errors import SpecError
from aot_core.models.gguf import resolve_gguf, source_note

from aot_legacy.checkpoint import eos_token_ids, load_state, read_config, stored_dtype, weight_files
from aot_legacy.decoder import StaticKVDecoder
from aot_legacy.hf_adapter import HFCausalLMStep, is_hf_model, load_hf_model, load_tokenizer
from aot_legacy.llama import DecoderConfig, LlamaFamilyDecoder, native_config, placeholder_weights


class PlaceholderWeightsWarning(UserWarning):
    """A model directory held no weights: the model runs with random placeholder weights."""


@dataclass(kw_only=True)
class LoadedModel:
    """A model ready to become a step, and how it was obtained."""

    source: Any
    """A ``StaticKVDecoder``, or a transformers causal LM (adapted once max_seq is known)."""

    model_dir: Path | None
    """The model's directory, when there is one."""

    dtype: torch.dtype
    """Weight dtype."""

    max_positions: int
    """Longest sequence the model's position encoding supports."""

    loader: str
    """How the weights were obtained, for the stats."""

    placeholder: bool = False
    """True when the weights are random placeholders (a config-only directory)."""

    tokenizer: Any | None = None
    """The tokenizer beside the model (loaded on first use), or None."""

    notes: list[str] = field(default_factory=list)
    """What the caller should be told."""

    def step(self, max_seq: int) -> StaticKVDecoder:
        """The step for a KV cache of ``max_seq`` positions."""
        if isinstance(self.source, StaticKVDecoder):
            cfg = getattr(self.source, "cfg", None)
            window = cfg.sliding_window if isinstance(cfg, DecoderConfig) else None
            if window is not None and window < max_seq:
                raise SpecError(
                    f"max_model_len: {max_seq} exceeds the model's sliding window {window}, "
                    f"which this backend does not implement; set max_model_len <= {window}",
                    field="max_model_len",
                )
            return self.source
        return HFCausalLMStep(self.source, max_seq=max_seq)


def _torch_dtype(name: str | None) -> torch.dtype | None:
    value = getattr(torch, name, None) if name else None
    return value if isinstance(value, torch.dtype) else None


def load_model(
    model: Any, *, dtype: str, device: torch.device, phases: dict[str, float]
) -> LoadedModel:
    """Resolve ``model`` into a ``LoadedModel`` on ``device``; ``dtype`` is the spec's."""
    from aot_core.models.cache import ModelWithTokenizer

    if isinstance(model, ModelWithTokenizer):
        loaded = load_model(model.model, dtype=dtype, device=device, phases=phases)
        if model.tokenizer is not None:
            loaded.tokenizer = model.tokenizer  # the caller's, over one found beside it
        return loaded
    want = None if dtype == "auto" else _torch_dtype(dtype)
    if isinstance(model, (str, Path)):
        converted = resolve_gguf(model)  # a .gguf file or a real model's name, else None
        directory = converted.path if converted is not None else Path(model).expanduser()
        if not directory.is_dir():
            raise SpecError(
                f"model: {directory} is not a directory; pass a local Hugging Face model "
                "directory or .gguf file (no hub downloads), a transformers model or a "
                "StaticKVDecoder",
                field="model",
            )
        dtype_note = ""
        if want is None and device.type == "cpu":
            # aot-core's one rule for "auto" (every backend and command uses it): float32
            # without native bfloat16, else the checkpoint's own dtype. A model object
            # passed in keeps its own dtype.
            choice = resolve_dtype("auto", directory)
            want = _torch_dtype(choice.dtype) if choice.dtype != "auto" else None
            dtype_note = choice.reason if want is not None else ""
        loaded = _from_directory(directory, want=want, device=device, phases=phases)
        source = converted.note() if converted is not None else source_note(directory)
        loaded.notes += [n for n in (source, dtype_note) if n]
        return loaded
    t0 = time.perf_counter()
    if isinstance(model, StaticKVDecoder):
        loaded = _from_object(model, want, device, max_positions=model.layout.max_positions)
    elif is_hf_model(model):
        loaded = _from_object(
            model, want, device, max_positions=int(model.config.max_position_embeddings)
        )
        path = getattr(model, "name_or_path", "") or ""
        if path and Path(path).is_dir():
            loaded.model_dir = Path(path)
            loaded.tokenizer = load_tokenizer(Path(path))
    else:
        raise SpecError(
            f"model: cannot compile a {type(model).__name__}; pass a local Hugging Face "
            "model directory, a transformers causal LM, or an aot_legacy.StaticKVDecoder",
            field="model",
        )
    phases["load_weights"] = time.perf_counter() - t0
    return loaded


def _from_object(
    model: Any, want: torch.dtype | None, device: torch.device, *, max_positions: int
) -> LoadedModel:
    first = next(model.parameters(), None)
    dtype = want or (first.dtype if first is not None else torch.float32)
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(
        source=model,
        model_dir=None,
        dtype=dtype,
        max_positions=max_positions,
        loader="the model object passed in",
    )


def _from_directory(
    directory: Path, *, want: torch.dtype | None, device: torch.device, phases: dict[str, float]
) -> LoadedModel:
    t0 = time.perf_counter()
    data = read_config(directory)
    try:
        cfg = native_config(data)
    except ValueError as exc:
        raise SpecError(f"model: {directory}: {exc}", field="model") from exc
    files = weight_files(directory)
    phases["read_config"] = time.perf_counter() - t0
    placeholder = not files
    notes = []
    if placeholder:
        message = (
            f"{directory} holds config.json but no weights: the model runs with random "
            "placeholder weights (initialised from the config). Compiled code takes weights "
            "as inputs, so what is compiled now serves the real weights later; outputs of "
            "this run are meaningless"
        )
        warnings.warn(message, PlaceholderWeightsWarning, stacklevel=4)
        notes.append(f"weights are placeholders: {message}")
    if isinstance(cfg, str):
        notes.append(f"aot's own decoder cannot build this config ({cfg}); using transformers")
        loaded = _through_transformers(directory, want, device, placeholder, phases)
    else:
        loaded = _native(
            directory, cfg=cfg, data=data, files=files, want=want, device=device, phases=phases
        )
    loaded.notes = notes + loaded.notes
    loaded.tokenizer = load_tokenizer(directory)
    return loaded


def _native(
    directory: Path,
    *,
    cfg: DecoderConfig,
    data: dict[str, Any],
    files: list[Path],
    want: torch.dtype | None,
    device: torch.device,
    phases: dict[str, float],
) -> LoadedModel:
    dtype = want or _torch_dtype(cfg.dtype) or _torch_dtype(stored_dtype(files)) or torch.float32
    t0 = time.perf_counter()
    eos = eos_token_ids(directory, data)
    pad = data.get("pad_token_id")
    decoder = LlamaFamilyDecoder(
        cfg,
        config_dict=data,
        eos_token_ids=eos,
        pad_token_id=int(pad) if isinstance(pad, int) else (eos or (0,))[0],
    )
    phases["build_model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if files:
        state = load_state(files)
        loader = "aot's decoder, weights read from the checkpoint (no transformers)"
    else:
        state = placeholder_weights(decoder, dtype=dtype)
        loader = "aot's decoder, random placeholder weights (config-only directory)"
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    try:
        decoder.load_weights(state)
    except ValueError as exc:
        raise SpecError(f"model: {directory}: {exc}", field="model") from exc
    decoder.inv_freq = decoder.inv_freq.to(device)
    phases["load_weights"] = time.perf_counter() - t0
    return LoadedModel(
        source=decoder.eval(),
        model_dir=directory,
        dtype=dtype,
        max_positions=cfg.max_positions,
        loader=loader,
        placeholder=not files,
    )


def _through_transformers(
    directory: Path,
    want: torch.dtype | None,
    device: torch.device,
    placeholder: bool,
    phases: dict[str, float],
) -> LoadedModel:
    t0 = time.perf_counter()
    model = load_hf_model(directory, dtype=want, placeholder=placeholder)
    loaded = _from_object(
        model, want, device, max_positions=int(model.config.max_position_embeddings)
    )
    loaded.model_dir = directory
    loaded.placeholder = placeholder
    loaded.loader = "transformers" + (" (random placeholder weights)" if placeholder else "")
    phases["load_weights"] = time.perf_counter() - t0
    return loaded
