"""Backend-neutral helpers for log-likelihood scoring: request checks and rolling windows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aot_core.errors import SpecError


@dataclass(frozen=True, kw_only=True)
class Score:
    """The log-likelihood of one continuation given its context (or of a whole sequence)."""

    logprob: float
    """Sum of the natural-log probabilities of the scored tokens."""

    is_greedy: bool
    """True when every scored token is the model's most likely next token (argmax)."""

    token_logprobs: tuple[float, ...]
    """Log-probability of each scored token, in order."""


ScoreRequest = tuple[Sequence[int], Sequence[int]]
"""(context token ids, continuation token ids): the continuation is scored given the context."""


def check_score_requests(requests: Sequence[ScoreRequest], max_model_len: int | None) -> None:
    """Refuse malformed or too-long (context, continuation) pairs before they reach an engine."""
    if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
        raise SpecError("requests: pass a list of (context ids, continuation ids) pairs")
    for i, request in enumerate(requests):
        if not isinstance(request, Sequence) or len(request) != 2:
            raise SpecError(f"requests[{i}]: expected a (context, continuation) pair")
        context, continuation = request
        if len(context) == 0:
            raise SpecError(
                f"requests[{i}]: the context is empty; the first token of a sequence has no "
                "probability to score (prepend a BOS or end-of-text token)"
            )
        if len(continuation) == 0:
            raise SpecError(f"requests[{i}]: the continuation is empty")
        total = len(context) + len(continuation)
        if max_model_len is not None and total > max_model_len:
            raise SpecError(
                f"requests[{i}]: {len(context)} context + {len(continuation)} continuation "
                f"tokens = {total}, above max_model_len {max_model_len}; shorten the context "
                "(keep its end) or start the model with a larger max_model_len",
                field="max_model_len",
            )


def rolling_requests(sequence: Sequence[int], max_model_len: int | None) -> list[ScoreRequest]:
    """Windows that score every token of ``sequence`` after the first exactly once.

    The scored parts are disjoint runs of up to ``max_model_len - 1`` tokens. Each window
    holds at most ``max_model_len`` tokens: the run and as much of the text before it as
    fits (at least the one token before it), so the last, shorter run gets a full
    context. These are lm-evaluation-harness's rolling windows
    (``get_rolling_token_windows`` with ``context_len=1``, then ``make_disjoint_window``)
    for ``max_seq_len = max_model_len - 1``, with the sequence's first token as the prefix.
    """
    tokens = list(sequence)
    if len(tokens) < 2:
        raise SpecError("score_rolling: a sequence needs at least two tokens")
    limit = max_model_len if max_model_len is not None else len(tokens)
    if limit < 2:
        raise SpecError(f"score_rolling: max_model_len {limit} leaves no room to score")
    out: list[ScoreRequest] = []
    start = 1  # index of the first token not scored yet
    while start < len(tokens):
        end = min(len(tokens), start + limit - 1)
        out.append((tokens[max(0, end - limit) : start], tokens[start:end]))
        start = end
    return out


def sum_scores(scores: Sequence[Score]) -> Score:
    """One score for the concatenation of ``scores``' tokens."""
    token_logprobs = tuple(lp for s in scores for lp in s.token_logprobs)
    return Score(
        logprob=sum(s.logprob for s in scores),
        is_greedy=all(s.is_greedy for s in scores),
        token_logprobs=token_logprobs,
    )
