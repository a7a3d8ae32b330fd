"""``PrefixStash``: the KV of a token prefix that many prompts start with, computed once.

Evaluation prompts repeat their few-shot examples: every document of a task with a fixed
few-shot sampler starts with the same hundreds of tokens, and only its last few differ.
Prefilling each prompt whole recomputes that prefix for every row of every batch. After a
batch is prefilled whole, the stash keeps a copy of the KV its rows share (from KV row 0);
a later batch whose rows all start with those tokens gets the copy in its KV rows and
prefills only what follows, at the positions after it. A token's keys and values depend
only on the tokens before it, so the copy is what the row would have computed itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MIN_PREFIX = 16
"""Fewest shared tokens worth reusing: a shorter prefix saves less than the copy costs."""


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


class PrefixStash:
    """A copy of the KV of one prefix, apart from the cache rows batches overwrite."""

    def __init__(self, kv: Sequence[torch.Tensor]) -> None:
        self._kv = tuple(kv)
        """The generator's cache: ``[max_batch, max_seq, ...]`` tensors (keys, values)."""
        self._tokens: tuple[int, ...] = ()
        self._saved: tuple[torch.Tensor, ...] = ()
        self.reused_tokens = 0
        """Prompt tokens copied from the stash instead of computed, over its lifetime."""

    def usable(self, rows: Sequence[Sequence[int]]) -> int:
        """How many leading tokens of every row the stash holds, leaving each row at least
        one token to run (its logits are wanted); 0 when that is under ``MIN_PREFIX``."""
        if not self._tokens or not rows:
            return 0
        shared = min(common_prefix([self._tokens, *rows]), *(len(r) - 1 for r in rows))
        return shared if shared >= MIN_PREFIX else 0

    def copy_into(self, count: int, length: int) -> None:
        """Put the stash's first ``length`` positions into KV rows ``[:count]``."""
        for cache, saved in zip(self._kv, self._saved, strict=True):
            cache[:count, :length] = saved[:length]
        self.reused_tokens += count * length

    def remember(self, rows: Sequence[Sequence[int]]) -> None:
        """Keep the prefix ``rows`` share, just prefilled whole into KV rows ``[:len(rows)]``
        (its KV is read from row 0); a prefix under ``MIN_PREFIX`` leaves the stash as is."""
        shared = common_prefix(rows)
        if not self._kv or shared < MIN_PREFIX:
            return
        self._tokens = tuple(rows[0][:shared])
        self._saved = tuple(cache[0, :shared].clone() for cache in self._kv)
