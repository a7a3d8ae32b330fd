"""The toy's model: a Llama directory's embeddings and LM head, read as a bigram table."""

from __future__ import annotations

import hashlib
import json
import operator
import struct
from dataclasses import dataclass
from pathlib import Path

from aot_core.errors import SpecError

_EMBED, _HEAD = "model.embed_tokens.weight", "lm_head.weight"


@dataclass(frozen=True, kw_only=True)
class Bigram:
    """Greedy next-token choice of a model from its embedding and output matrices."""

    digest: str
    """sha256 of config.json and the weights: what a compiled table was computed from."""

    embed: tuple[tuple[float, ...], ...]
    """One embedding row per token id."""

    head: tuple[tuple[float, ...], ...]
    """One output (LM-head) row per token id."""

    eos_ids: frozenset[int]
    """Token ids that end a sequence."""

    def next_token(self, token: int) -> int:
        """argmax over the vocabulary of head . embed[token] (first index on ties)."""
        row = self.embed[token]
        scores = [sum(map(operator.mul, out, row)) for out in self.head]
        return max(range(len(scores)), key=scores.__getitem__)

    def table(self) -> list[int]:
        """``next_token`` of every token id: what compiling computes."""
        return [self.next_token(t) for t in range(len(self.embed))]


def _matrix(data: bytes, header: dict[str, dict], name: str) -> tuple[tuple[float, ...], ...]:
    entry = header.get(name)
    if entry is None or entry.get("dtype") != "F32" or len(entry.get("shape", ())) != 2:
        raise SpecError(f"model: the toy backend needs a float32 2-D {name} in model.safetensors")
    rows, cols = entry["shape"]
    start, _ = entry["data_offsets"]
    flat = struct.unpack_from(f"<{rows * cols}f", data, start)
    return tuple(flat[r * cols : (r + 1) * cols] for r in range(rows))


def read_bigram(model: str | Path) -> Bigram:
    """Read a local Hugging Face Llama-style directory (config.json, model.safetensors)."""
    directory = Path(model).expanduser()
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    if not (config_path.is_file() and weights_path.is_file()):
        raise SpecError(
            f"model: {directory} needs config.json and model.safetensors for the toy backend",
            field="model",
        )
    config_bytes, weights = config_path.read_bytes(), weights_path.read_bytes()
    (size,) = struct.unpack_from("<Q", weights, 0)
    header = json.loads(weights[8 : 8 + size])
    body = weights[8 + size :]
    embed = _matrix(body, header, _EMBED)
    head = _matrix(body, header, _HEAD) if _HEAD in header else embed  # tied embeddings
    eos = json.loads(config_bytes).get("eos_token_id")
    eos_ids = frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])
    digest = hashlib.sha256(config_bytes + b"\0" + weights).hexdigest()
    return Bigram(digest=digest, embed=embed, head=head, eos_ids=eos_ids)
