"""The fixed prompts ``aot compile`` precompiles with and ``aot bench`` generates on."""

from __future__ import annotations

TEXTS: tuple[str, ...] = (
    "Ahead-of-time compilation pays off on the second start.",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time",
    "Compiled code must be verified before it is loaded, because it runs.",
)
"""ASCII sentences of different lengths, so a batch has ragged prompts."""


def default_prompts() -> list[list[int]]:
    """The prompts as token ids (their bytes, all < 256: the byte-level tiny model's ids)."""
    return [list(t.encode()) for t in TEXTS]
