"""``PrefixStash``: the KV of token prefixes that many prompts start with, computed once.

Evaluation prompts repeat their few-shot examples: every document of a task with a fixed
few-shot sampler starts with the same hundreds of tokens, and only its last few differ.
Prefilling each prompt whole recomputes that prefix for every row of every batch. The
stash keeps copies of the KV such prefixes got (read from KV row 0 right after a forward
that ran one from position 0); a batch whose rows all start with a stashed prefix gets the
copy in its KV rows and prefills only what follows, at the positions after it. A token's
keys and values depend only on the tokens before it, so the copy is what each row would
have computed itself. A job of several tasks has several prefixes, and batches ordered by
length interleave them, so the stash keeps the ``SLOTS`` most recently used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MIN_PREFIX = 16
"""Fewest shared tokens worth reusing: a shorter prefix saves less than the copy costs."""

SLOTS = 4
"""Prefixes kept at once, least recently used dropped first. Each holds at most one KV row
(``max_model_len`` positions), so memory stays a few KV rows."""


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row of ``rows`` has in common."""
    if not rows:
        return 0
    first = rows[0]
    n = min(len(r) for r in rows)
    for other in rows[1:]:
        i = 0
        while i < n and other[i] == first[i]:
            i += 1
        n = i
    return n


def runnable_prefix(rows: Sequence[Sequence[int]]) -> int:
    """The common prefix of ``rows`` less what each row must still run: at least its last
    token, whose logits are wanted."""
    if not rows:
        return 0
    return max(0, min(common_prefix(rows), *(len(r) - 1 for r in rows)))


def prefix_groups(rows: Sequence[Sequence[int]], *, least: int) -> list[int]:
    """Per row, a group shared by the rows that start with the same ``MIN_PREFIX`` tokens
    when at least ``least`` rows do (numbered from 0 by first appearance), else -1.

    Sorting by group before length keeps a task's rows in the same batches: ordered by
    length alone, two few-shot tasks interleave and no batch shares a prefix. Rows with
    no such group (zero-shot prompts) sort among themselves by length only."""
    heads = [tuple(r[:MIN_PREFIX]) if len(r) > MIN_PREFIX else None for r in rows]
    counts = Counter(head for head in heads if head is not None)
    number: dict[tuple[int, ...], int] = {}
    for head in heads:
        if head is not None and counts[head] >= least:
            number.setdefault(head, len(number))
    return [number.get(h, -1) if h is not None else -1 for h in heads]


@dataclass(frozen=True)
class _Entry:
    tokens: tuple[int, ...]
    kv: tuple[torch.Tensor, ...]


class PrefixStash:
    """Copies of the KV of a few prefixes, apart from the cache rows batches overwrite."""

    def __init__(self, kv: Sequence[torch.Tensor]) -> None:
        self._kv = tuple(kv)
        """The generator's cache: ``[max_batch, max_seq, ...]`` tensors (keys, values)."""
        self._entries: list[_Entry] = []
        """Most recently used first."""
        self.reused_tokens = 0
        """Prompt tokens copied from the stash instead of computed, over its lifetime."""

    @property
    def enabled(self) -> bool:
        """Whether the stash can hold anything (it needs the cache it copies into)."""
        return bool(self._kv)

    def usable(self, rows: Sequence[Sequence[int]]) -> int:
        """How many leading tokens of every row one stashed prefix holds, leaving each row
        at least one token to run; 0 when that is under ``MIN_PREFIX``."""
        return self._best(rows)[1]

    def take(self, rows: Sequence[Sequence[int]]) -> int:
        """Copy the KV of the ``usable(rows)`` leading tokens into KV rows ``[:len(rows)]``
        and return how many they are (0: nothing copied)."""
        i, length = self._best(rows)
        if not length:
            return 0
        entry = self._entries.pop(i)
        for cache, saved in zip(self._kv, entry.kv, strict=True):
            cache[: len(rows), :length] = saved[:length]
        self._entries.insert(0, entry)
        self.reused_tokens += len(rows) * length
        return length

    def _best(self, rows: Sequence[Sequence[int]]) -> tuple[int, int]:
        """The entry holding the most leading tokens of every row, and how many (0 when
        under ``MIN_PREFIX``)."""
        limit = runnable_prefix(rows)
        best, length = 0, 0
        for i, entry in enumerate(self._entries):
            held = min(common_prefix([entry.tokens, *rows]), limit)
            if held > length:
                best, length = i, held
        return (best, length) if length >= MIN_PREFIX else (0, 0)

    def remember(self, rows: Sequence[Sequence[int]]) -> None:
        """Keep the prefix ``rows`` share, just computed from position 0 into KV rows
        ``[:len(rows)]`` (its KV is read from row 0); under ``MIN_PREFIX`` it is not kept."""
        shared = common_prefix(rows)
        if not self._kv or shared < MIN_PREFIX:
            return
        tokens = tuple(rows[0][:shared])
        # An entry this one extends holds nothing more; it goes.
        kept = [e for e in self._entries if tokens[: len(e.tokens)] != e.tokens]
        entry = _Entry(tokens, tuple(cache[0, :shared].clone() for cache in self._kv))
        self._entries = [entry, *kept][:SLOTS]
