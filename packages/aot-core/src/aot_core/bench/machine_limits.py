"""The decode speed this machine allows a model: weight bytes per step over memory bandwidth.

A decode step reads every weight once, so on a CPU with the batch this small, tokens/s is
bounded by ``bandwidth / weight bytes x batch``; ``aot bench`` prints each backend's
decode tokens/s beside that bound. The FLOP bound (2 x parameters per token) is far above
it at these batch sizes on CPUs, so it is not measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# Large enough to leave every cache level, small enough to allocate on a loaded machine.
_COPY_BYTES = 128 << 20


@dataclass(frozen=True, kw_only=True)
class DecodeLimit:
    """The memory-bandwidth bound on decode tokens/s for one model and batch."""

    bandwidth_bytes_per_s: float
    """Measured copy bandwidth (bytes read plus bytes written, per second)."""

    weight_bytes: int
    """Bytes of weights a decode step reads."""

    batch: int
    """Sequences decoded together (one token each per step)."""

    @property
    def tokens_per_s(self) -> float:
        """The bound: steps per second the bandwidth allows, times the batch."""
        return self.bandwidth_bytes_per_s / max(self.weight_bytes, 1) * self.batch

    def describe(self) -> str:
        """One line for the bench header."""
        return (
            f"decode limit from memory bandwidth: {self.tokens_per_s:.0f} tokens/s "
            f"(batch {self.batch} x {self.bandwidth_bytes_per_s / 1e9:.1f} GB/s measured copy "
            f"bandwidth / {self.weight_bytes / (1 << 20):.1f} MiB of weights per step)"
        )


def measure_copy_bandwidth(nbytes: int = _COPY_BYTES, repeats: int = 3) -> float:
    """Best of ``repeats`` memcpy's of ``nbytes`` (a bytearray slice assignment), in bytes
    moved (read + written) per second."""
    src = bytearray(nbytes)
    dst = bytearray(nbytes)
    src[:: 1 << 12] = b"\x01" * len(range(0, nbytes, 1 << 12))  # touch every page
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst[:] = src
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best
