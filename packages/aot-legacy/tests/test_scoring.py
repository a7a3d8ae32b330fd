"""Log-likelihood scoring through the legacy backend's own steps, checked against
transformers' forward pass on the same weights (float32)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aot_core import GenerationParams, SpecError
from aot_core.evaluation.reference import reference_scores
from aot_legacy import LegacyBackend, generation
from aot_legacy.compiled_model import LegacyCompiledModel
from conftest import MAX_LEN, spec

# Different context and continuation lengths, a one-token context, more requests than
# KV rows (4), and contexts shared by continuations of other lengths (one KV row runs them
# in turn), so batching, padding, chunking and sharing are all exercised.
REQUESTS: list[tuple[list[int], list[int]]] = [
    (list(b"The cat"), list(b" sat down")),
    ([65], [66, 67, 68]),
    (list(b"Hello, world"), [33]),
    (list(range(40, 70)), list(range(70, 75))),
    (list(b"ab"), list(b"cdefghijkl")),
    (list(b"The cat"), list(b" ran")),
    (list(b"The cat"), [33]),
    ([65], [70]),
]


def _close(ours: list, ref: list, tol: float) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=tol)
        assert a.logprob == pytest.approx(b.logprob, abs=tol * len(b.token_logprobs))
        assert a.is_greedy == b.is_greedy


def test_eager_scores_match_transformers(eager: LegacyCompiledModel, tiny_dir: Path) -> None:
    _close(eager.score(REQUESTS), reference_scores(tiny_dir, REQUESTS), 1e-4)


def test_many_continuations_of_one_context(eager: LegacyCompiledModel, tiny_dir: Path) -> None:
    # More continuations than one KV row takes (MAX_SHARED), of lengths 1 to 12.
    context = list(b"Once upon a time")
    requests = [(context, [(7 * i + j) % 250 for j in range(1 + i % 12)]) for i in range(19)]
    assert len(requests) > generation.MAX_SHARED
    _close(eager.score(requests), reference_scores(tiny_dir, requests), 1e-4)


def test_batching_does_not_change_scores(eager: LegacyCompiledModel) -> None:
    together = eager.score(REQUESTS)
    alone = [eager.score([r])[0] for r in REQUESTS]
    _close(together, alone, 1e-5)


def test_rows_per_forward_do_not_change_scores(
    eager: LegacyCompiledModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    together = eager.score(REQUESTS)
    # A logits budget of one row per forward: the memory cap splits batches, nothing else.
    monkeypatch.setattr(generation, "SCORE_LOGITS_BYTES", 1)
    _close(eager.score(REQUESTS), together, 1e-5)


def test_greedy_continuation_is_reported_greedy(eager: LegacyCompiledModel) -> None:
    prompt = list(b"Once upon")
    (gen,) = eager.generate([prompt], GenerationParams(max_new_tokens=5, stop_on_eos=False))
    tokens = list(gen.token_ids)
    assert eager.score([(prompt, tokens)])[0].is_greedy
    changed = [*tokens[:-1], (tokens[-1] + 1) % 256]
    assert not eager.score([(prompt, changed)])[0].is_greedy


def test_rolling_windows_cover_a_long_sequence(eager: LegacyCompiledModel, tiny_dir: Path) -> None:
    sequence = [(7 * i) % 250 for i in range(2 * MAX_LEN + 9)]  # three windows of <= MAX_LEN
    (rolled,) = eager.score_rolling([sequence])
    assert len(rolled.token_logprobs) == len(sequence) - 1
    from aot_core.scoring import rolling_requests, sum_scores

    ref = sum_scores(reference_scores(tiny_dir, rolling_requests(sequence, MAX_LEN)))
    assert rolled.logprob == pytest.approx(ref.logprob, abs=1e-3)


def test_long_or_bad_requests_are_refused(eager: LegacyCompiledModel) -> None:
    assert eager.max_model_len == MAX_LEN
    with pytest.raises(SpecError, match=f"above max_model_len {MAX_LEN}"):
        eager.score([([1] * MAX_LEN, [2])])
    with pytest.raises(SpecError, match="outside the vocabulary"):
        eager.score([([1], [10_000])])
    with pytest.raises(SpecError, match="context is empty"):
        eager.score([([], [1])])


@pytest.mark.slow
def test_compiled_scores_match_eager(
    compiled: LegacyCompiledModel,
    from_packages: LegacyCompiledModel,
    eager: LegacyCompiledModel,
    alt_dir: Path,
) -> None:
    # ``compiled`` was built from alt_dir's weights; ``from_packages`` runs tiny_dir's
    # weights through packages compiled config-only. Each is held to eager on its own weights.
    with LegacyBackend().compile_model(alt_dir, spec(compile_mode="none")) as alt:
        _close(compiled.score(REQUESTS), alt.score(REQUESTS), 1e-4)
    _close(from_packages.score(REQUESTS), eager.score(REQUESTS), 1e-4)
