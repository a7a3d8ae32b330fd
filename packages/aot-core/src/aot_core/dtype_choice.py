"""What dtype "auto" means for one start: the one rule every backend and command uses.

- An explicit dtype in the spec always wins.
- On a CPU without native bfloat16 (AVX2/FMA machines): float32. vLLM's ``dtype="auto"``
  would take a checkpoint's bfloat16 (and downcast a float32 one) and emulate it there,
  which measured 3x slower than float32.
- Everywhere else (a CPU with native bfloat16, a GPU): the checkpoint's own dtype
  (config.json's ``torch_dtype`` or ``dtype``; float32 when it names none). A float32
  checkpoint stays float32, as transformers and lm-eval's ``hf`` model load it, instead of
  vLLM's downcast to bfloat16 or float16, so the dtype depends on the model and not on which
  kind of machine runs it, and eager and compiled runs, ``aot bench`` and ``aot eval``
  compare the same arithmetic on every host. Published bfloat16 checkpoints keep bfloat16,
  what vLLM would pick for them too.

``resolve_dtype`` is that rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.artifacts import cpu_isa

# x86: AVX-512 BF16 or AMX; arm: the BF16 extension. Any of these makes bf16 matmuls native.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})

# The names config.json uses for a checkpoint's dtype, as CompileSpec spells them.
_CONFIG_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "half": "float16",
}


@dataclass(frozen=True, kw_only=True)
class DtypeChoice:
    """The dtype a start will use, and why."""

    dtype: str
    """The dtype the start runs: float32, bfloat16 or float16 ("auto" only for a model
    whose config.json aot cannot read, left to the engine)."""

    source: str
    """Where it came from: "spec", "model config", "machine", or "engine" (no config.json
    to read: a hub name is left to the engine)."""

    reason: str
    """One line for stats notes and the bench header."""


def cpu_has_native_bf16(isa: tuple[str, ...] | None = None) -> bool:
    """Whether this CPU (or one with ``isa``) computes bfloat16 natively."""
    flags = set(cpu_isa() if isa is None else isa)
    return bool(flags & NATIVE_BF16_FLAGS)


def _config(model_dir: Path | None) -> Mapping[str, Any] | None:
    if model_dir is None:
        return None
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, Mapping) else None


def checkpoint_dtype(config: Mapping[str, Any]) -> str | None:
    """The dtype a model's config.json declares (CompileSpec's spelling), or None."""
    for part in (config, config.get("text_config")):
        if isinstance(part, Mapping):
            declared: Any = part.get("torch_dtype") or part.get("dtype")
            if isinstance(declared, str) and declared in _CONFIG_DTYPES:
                return _CONFIG_DTYPES[declared]
    return None


def resolve_dtype(
    spec_dtype: str,
    model_dir: Path | None,
    *,
    gpu: bool = False,
    isa: tuple[str, ...] | None = None,
) -> DtypeChoice:
    """What ``spec_dtype`` becomes for ``model_dir`` on this machine (or a CPU with ``isa``)."""
    if spec_dtype != "auto":
        return DtypeChoice(
            dtype=spec_dtype, source="spec", reason=f"dtype {spec_dtype} (set in the spec)"
        )
    if not gpu and not cpu_has_native_bf16(isa):
        return DtypeChoice(
            dtype="float32",
            source="machine",
            reason="dtype auto -> float32: this CPU has no native bfloat16 (no avx512_bf16, "
            "amx_bf16 or bf16 flag), where emulated bfloat16 is slower than float32; set "
            "dtype in the spec to override",
        )
    config = _config(model_dir)
    if config is None:
        return DtypeChoice(
            dtype="auto",
            source="engine",
            reason="dtype auto: the model is not a local directory with a readable config.json, "
            "so the engine chooses; set dtype in the spec to fix it",
        )
    declared = checkpoint_dtype(config)
    if declared is None:
        return DtypeChoice(
            dtype="float32",
            source="model config",
            reason="dtype auto -> float32: the model's config.json names no dtype (float32, "
            "as transformers loads it); set dtype in the spec to override",
        )
    return DtypeChoice(
        dtype=declared,
        source="model config",
        reason=f"dtype auto -> {declared}: the checkpoint's own dtype (config.json)"
        + ("" if gpu else ", kept on this CPU with native bfloat16")
        + "; set dtype in the spec to override",
    )
