"""Reading a Hugging Face model directory without transformers: config, weights, EOS ids.

Only what aot's own decoder needs: ``config.json`` parsed as JSON, the weight files found
by the names transformers writes (one or sharded safetensors, or ``pytorch_model.bin``),
and the stop tokens from ``generation_config.json``. A directory with no weight files is
config-only: the caller compiles it with placeholder weights and says so.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from aot_core.errors import ModelFilesError, SpecError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"

_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def read_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict; ``SpecError`` when absent or unreadable."""
    path = directory / "config.json"
    if not path.is_file():
        raise SpecError(
            f"model: {directory} has no config.json; pass a Hugging Face model directory, "
            "a transformers model object or an aot_legacy.StaticKVDecoder",
            field="model",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SpecError(f"model: {path} cannot be read as JSON ({exc})", field="model") from exc
    if not isinstance(data, dict):
        raise SpecError(f"model: {path} is not a JSON object", field="model")
    archs = data.get("architectures") or []
    if archs and not any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise SpecError(
            f"model: {directory} holds a {', '.join(map(str, archs))}, not a causal LM",
            field="model",
        )
    return data


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files in load order; empty for a config-only directory."""
    for index_name in (SAFETENSORS_INDEX, TORCH_BIN_INDEX):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SpecError(
                    f"model: {index} is not a valid shard index ({exc})", field="model"
                ) from exc
            files = [directory / n for n in names]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise SpecError(
                    f"model: {index} names shards that are missing: {', '.join(absent[:4])}",
                    field="model",
                )
            return files
    for name in (SAFETENSORS, TORCH_BIN):
        if (directory / name).is_file():
            return [directory / name]
    return []


def stored_dtype(files: list[Path]) -> str | None:
    """The floating dtype the first safetensors file stores (read from its header only)."""
    for path in files:
        if path.suffix != ".safetensors":
            continue
        try:
            with path.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error):
            return None
        for name, info in header.items():
            if name != "__metadata__" and isinstance(info, dict):
                dtype = _SAFETENSORS_DTYPES.get(str(info.get("dtype")))
                if dtype is not None:
                    return dtype
    return None


def load_state(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, by name, on the CPU."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(str(path), device="cpu"))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except Exception as exc:  # a truncated or foreign file: say which one
            raise ModelFilesError(
                f"model: cannot read the weights in {path} ({type(exc).__name__}: {exc})",
                field="model",
            ) from exc
    return state


def eos_token_ids(directory: Path | None, config: dict[str, Any]) -> tuple[int, ...]:
    """Stop tokens: generation_config.json's eos_token_id, else config.json's."""
    eos: Any = None
    if directory is not None and (directory / "generation_config.json").is_file():
        try:
            gen = json.loads((directory / "generation_config.json").read_text(encoding="utf-8"))
            eos = gen.get("eos_token_id") if isinstance(gen, dict) else None
        except (OSError, UnicodeDecodeError, ValueError):
            eos = None
    if eos is None:
        eos = config.get("eos_token_id")
    if isinstance(eos, int) and not isinstance(eos, bool):
        return (eos,)
    if isinstance(eos, list):
        return tuple(int(e) for e in eos if isinstance(e, int))
    return ()
