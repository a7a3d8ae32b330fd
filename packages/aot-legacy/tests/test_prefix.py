"""Few-shot prefixes computed once: prompts that start alike reuse the KV of what they share,
and scores and generations stay what each prompt gives whole (float32)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aot_core import GenerationParams
from aot_core.evaluation.reference import reference_scores
from aot_legacy import LegacyBackend
from aot_legacy.compiled_model import LegacyCompiledModel
from aot_legacy.prefix import (
    MIN_PREFIX,
    SLOTS,
    PrefixStash,
    common_prefix,
    prefix_groups,
    runnable_prefix,
)
from conftest import MAX_SEQS, spec

SHOTS = list(b"Q: 2+2? A: 4\nQ: 3+1? A: 4\n")
"""A few-shot head every prompt below starts with (longer than MIN_PREFIX)."""
QUESTIONS = [list(f"Q: {a}+{b}? A:".encode()) for a, b in [(1, 2), (5, 3), (7, 1), (2, 6), (9, 0)]]
PROMPTS = [SHOTS + q for q in QUESTIONS]  # more prompts than KV rows: several batches
GREEDY = GenerationParams(max_new_tokens=4, stop_on_eos=False)


@pytest.fixture
def model(tiny_dir: Path) -> Iterator[LegacyCompiledModel]:
    """A fresh eager model: its stash starts empty."""
    m = LegacyBackend().compile_model(tiny_dir, spec(compile_mode="none"))
    assert isinstance(m, LegacyCompiledModel)
    yield m
    m.close()


def _stash(m: LegacyCompiledModel) -> PrefixStash:
    assert m._generator is not None
    return m._generator.prefix


def _without_stash(m: LegacyCompiledModel) -> None:
    assert m._generator is not None
    m._generator.prefix = PrefixStash(())


def test_the_prompts_share_a_prefix_worth_reusing() -> None:
    assert len(SHOTS) >= MIN_PREFIX and len(PROMPTS) > MAX_SEQS
    assert common_prefix(PROMPTS) >= len(SHOTS)
    assert common_prefix([[1, 2, 3], [1, 2], [1, 2, 4]]) == 2
    assert common_prefix([[1], [2]]) == 0
    assert common_prefix([]) == 0
    assert runnable_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # the last token always runs


def test_generation_reuses_the_prefix_and_gives_the_same_tokens(
    model: LegacyCompiledModel, tiny_dir: Path
) -> None:
    shared = [g.token_ids for g in model.generate(PROMPTS, GREEDY)]
    # The head was computed once, then copied into every row of every batch.
    assert _stash(model).reused_tokens >= len(PROMPTS) * len(SHOTS)
    _without_stash(model)
    whole = [g.token_ids for g in model.generate(PROMPTS, GREEDY)]
    assert shared == whole


def test_scores_after_a_reused_prefix_match_transformers(
    model: LegacyCompiledModel, tiny_dir: Path
) -> None:
    # Two choices per question, as a multiple-choice task asks them.
    requests = [(p, list(choice)) for p in PROMPTS for choice in (b" 3", b" 8\n")]
    ours = model.score(requests)
    assert _stash(model).reused_tokens > 0
    ref = reference_scores(tiny_dir, requests)
    for a, b in zip(ours, ref, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
        assert a.is_greedy == b.is_greedy


def test_a_prompt_that_is_all_prefix_still_runs_its_last_token(
    model: LegacyCompiledModel,
) -> None:
    model.generate(PROMPTS[:2], GREEDY)  # the stash now holds the head
    (alone,) = model.generate([SHOTS], GREEDY)
    _without_stash(model)
    (whole,) = model.generate([SHOTS], GREEDY)
    assert alone.token_ids == whole.token_ids


def test_a_short_or_different_prefix_is_not_reused(model: LegacyCompiledModel) -> None:
    stash = _stash(model)
    model.generate(PROMPTS[:2], GREEDY)
    assert stash.usable([[*SHOTS[: MIN_PREFIX - 1], 1, 2]]) == 0
    assert stash.usable([list(b"Something else entirely, longer than sixteen")]) == 0
    # One token of every row is always left to run: its logits are what is asked for.
    assert stash.usable([SHOTS]) == len(SHOTS) - 1


def test_two_tasks_keep_both_prefixes(model: LegacyCompiledModel) -> None:
    other = [list(b"French: cat=chat, dog=chien\n")[: len(SHOTS)] + q for q in QUESTIONS]
    assert SLOTS >= 2 and common_prefix([*PROMPTS, *other]) == 0
    # Alternating, at equal lengths: ordered by length alone, no batch would share a head.
    mixed = [p for pair in zip(PROMPTS, other, strict=True) for p in pair]
    assert prefix_groups(mixed, least=3) == [0, 1] * len(PROMPTS)
    model.generate(mixed, GREEDY)
    stash = _stash(model)
    assert stash.usable(PROMPTS) >= len(SHOTS) and stash.usable(other) >= MIN_PREFIX
    before = stash.reused_tokens
    again = [g.token_ids for g in model.generate(mixed, GREEDY)]
    assert stash.reused_tokens > before
    _without_stash(model)
    assert again == [g.token_ids for g in model.generate(mixed, GREEDY)]
