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


WORKLOAD_MIXES: tuple[str, ...] = ("short", "mixed", "chat")
"""``aot bench --prompt-mix``: the fixed short prompts, short and long ones alternating, or
short questions in the model's chat template (``aot_core.bench.text``)."""


def workload_prompts(count: int, mix: str = "short", *, long_tokens: int = 0) -> list[list[int]]:
    """``count`` prompts: the fixed sentences in turn; with ``mix="mixed"`` every second one
    is ``long_tokens`` long (the sentences repeated), so a batch holds prompts long enough
    for chunked prefill to split beside short ones that are already decoding."""
    base = default_prompts()
    out = []
    for i in range(count):
        short = base[i % len(base)]
        if mix == "mixed" and i % 2 == 1 and long_tokens > len(short):
            text = b" ".join(t.encode() for t in TEXTS) * (long_tokens // 64 + 1)
            out.append(list(text[:long_tokens]))
        else:
            out.append(list(short))
    return out
