"""What a job sends, counted from its built tasks before any engine starts.

The count sizes the engine's KV cache (``CompileSpec.kv_cache_seqs``, through
``JobRequests.kv_sequences``): reserving (and zeroing) room for vLLM's default 256
sequences costs start time and memory a job cannot use. The count follows lm-eval's
``evaluate``: each task's documents up to ``--limit``; one request per document, one per
choice for multiple choice (twice that with ``acc_mutual_info``); times the task's
``repeats``. A rolling log-likelihood document counts once, though the model may split it
into windows. A count that is low only means fewer sequences at once, never another score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SCORING_SEQS = 16
"""Sequences the KV cache keeps for log-likelihood requests. Each asks for one output token,
so it holds its cache only for the engine step that prefills it: 16 sequences of 512 tokens
are two steps of vLLM's CPU token budget (4096). Measured on the whole shipped tasks (SmolLM2,
float32, 224 requests, 40 of them generations): a cache for 16 sequences scored as fast as one
for 224 and made the engine ready 13-19 s sooner (2026-12-07, CHANGELOG)."""


@dataclass(frozen=True, kw_only=True)
class JobRequests:
    """What an ``aot eval`` job sends, counted before any engine starts."""

    total: int
    """Every request: log-likelihoods (one per document, or per choice) and generations."""

    generations: int
    """The ``generate_until`` requests among them."""

    @property
    def kv_sequences(self) -> int:
        """Sequences worth a KV cache: every generation at once (each holds its cache until
        it stops), at least ``SCORING_SEQS`` for log-likelihoods, never more than the job
        sends."""
        return min(self.total, max(self.generations, SCORING_SEQS))

    def __str__(self) -> str:
        return f"{self.total} requests, {self.generations} generations"


def count_requests(tasks: Iterable[Any], limit: int | float | None) -> JobRequests | None:
    """The requests ``tasks`` (lm-eval ``Task`` objects, not groups) send with ``limit``;
    None when a task's documents cannot be read this way (then nothing is sized from it)."""
    total = generations = 0
    for task in tasks:
        per_task = _task_requests(task, limit)
        if per_task is None:
            return None
        total += per_task
        if getattr(task, "OUTPUT_TYPE", None) == "generate_until":
            generations += per_task
    return JobRequests(total=total, generations=generations) if total else None


def _task_requests(task: Any, limit: int | float | None) -> int | None:
    from lm_eval.evaluator_utils import get_sample_size  # lm-eval's own --limit rule

    try:
        docs = task.eval_docs
        count = len(docs)
        wanted = get_sample_size(task, limit)
    except Exception:  # a task type this does not know; lm-eval reports real problems later
        return None
    count = count if wanted is None else min(count, wanted)
    config = getattr(task, "config", None)
    repeats = getattr(config, "repeats", None) or 1
    if getattr(task, "OUTPUT_TYPE", None) != "multiple_choice":
        return count * repeats
    mutual_info = "acc_mutual_info" in (getattr(task, "_metric_fn_list", None) or {})
    try:
        # Only the documents the job evaluates are read, not the whole split.
        choices = sum(len(task.doc_to_choice(docs[i])) for i in range(count))
    except Exception:
        return None
    return choices * (2 if mutual_info else 1) * repeats
