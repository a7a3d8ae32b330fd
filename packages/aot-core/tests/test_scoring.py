"""The backend-neutral scoring helpers: request checks and lm-eval-style rolling windows."""

from __future__ import annotations

import pytest
from aot_core import Score, SpecError
from aot_core.scoring import check_score_requests, rolling_requests, sum_scores


def test_rolling_windows_score_every_token_after_the_first_once() -> None:
    tokens = list(range(9))
    windows = rolling_requests(tokens, 4)
    scored = [t for _, cont in windows for t in cont]
    assert scored == tokens[1:]
    for context, continuation in windows:
        assert len(context) + len(continuation) == 4
        assert context == tokens[continuation[0] - len(context) : continuation[0]]
    # Full runs get one token of context; the last, shorter run as much as fits.
    assert [len(c) for c, _ in windows] == [1, 1, 2]


def test_rolling_without_a_limit_is_one_window() -> None:
    assert rolling_requests([5, 6, 7], None) == [([5], [6, 7])]


def test_rolling_refuses_a_single_token() -> None:
    with pytest.raises(SpecError, match="at least two tokens"):
        rolling_requests([1], 8)


def test_requests_longer_than_the_model_are_refused_not_truncated() -> None:
    with pytest.raises(SpecError, match="above max_model_len 4"):
        check_score_requests([([1, 2, 3], [4, 5])], 4)
    check_score_requests([([1, 2], [3, 4])], 4)


@pytest.mark.parametrize(
    ("request_", "message"),
    [(([], [1]), "context is empty"), (([1], []), "continuation is empty"), ((1,), "pair")],
)
def test_malformed_requests_are_refused(request_: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        check_score_requests([request_], None)  # type: ignore[list-item]


def test_sum_scores_concatenates() -> None:
    a = Score(logprob=-1.0, is_greedy=True, token_logprobs=(-0.5, -0.5))
    b = Score(logprob=-2.0, is_greedy=False, token_logprobs=(-2.0,))
    total = sum_scores([a, b])
    assert total.logprob == -3.0
    assert total.is_greedy is False
    assert total.token_logprobs == (-0.5, -0.5, -2.0)
