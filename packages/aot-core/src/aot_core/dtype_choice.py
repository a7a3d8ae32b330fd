"""Which dtype "auto" means on this machine: float32 where the CPU has no native bfloat16.

vLLM's ``dtype="auto"`` takes a checkpoint's bfloat16 on CPU even where bfloat16 is only
emulated (AVX2/FMA machines), which measured 3x slower than float32 there. aot-core reads
the ISA (it already does for artifact compatibility); a backend that runs on a GPU keeps
"auto" and lets its engine choose. An explicit dtype in the spec always wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from aot_core.artifacts import cpu_isa

# x86: AVX-512 BF16 or AMX; arm: the BF16 extension. Any of these makes bf16 matmuls native.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@dataclass(frozen=True, kw_only=True)
class DtypeChoice:
    """The dtype a start will use on CPU, and why."""

    dtype: str
    """The spec's dtype after the choice ("auto" only when the engine is left to choose)."""

    reason: str
    """One line for stats notes and the bench header."""


def cpu_has_native_bf16(isa: tuple[str, ...] | None = None) -> bool:
    """Whether this CPU (or one with ``isa``) computes bfloat16 natively."""
    flags = set(cpu_isa() if isa is None else isa)
    return bool(flags & NATIVE_BF16_FLAGS)


def choose_cpu_dtype(spec_dtype: str, *, isa: tuple[str, ...] | None = None) -> DtypeChoice:
    """What ``spec_dtype`` becomes on a CPU with ``isa`` (default: this one)."""
    if spec_dtype != "auto":
        return DtypeChoice(dtype=spec_dtype, reason=f"dtype {spec_dtype} (set in the spec)")
    if cpu_has_native_bf16(isa):
        return DtypeChoice(
            dtype="auto",
            reason="dtype auto: the CPU has native bfloat16, the engine chooses from the model",
        )
    return DtypeChoice(
        dtype="float32",
        reason="dtype auto -> float32: this CPU has no native bfloat16 (no avx512_bf16, "
        "amx_bf16 or bf16 flag), where emulated bfloat16 is slower than float32; set dtype "
        "in the spec to override",
    )
