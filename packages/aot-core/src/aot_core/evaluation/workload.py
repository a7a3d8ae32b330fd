"""How many requests a job sends, counted from its built tasks before any engine starts.

The count sizes the engine's KV cache (``CompileSpec.kv_cache_seqs``): a job of 30 requests
never holds more than 30 sequences at once, so reserving (and zeroing) room for vLLM's
default 256 costs start time and memory for nothing. The count follows lm-eval's
``evaluate``: each task's documents up to ``--limit``; one request per document, one per
choice for multiple choice (twice that with ``acc_mutual_info``); times the task's
``repeats``. A rolling log-likelihood document counts once, though the model may split it
into windows. A count that is low only means fewer sequences at once, never another score.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def count_requests(tasks: Iterable[Any], limit: int | float | None) -> int | None:
    """The requests ``tasks`` (lm-eval ``Task`` objects, not groups) send with ``limit``;
    None when a task's documents cannot be read this way (then nothing is sized from it)."""
    total = 0
    for task in tasks:
        per_task = _task_requests(task, limit)
        if per_task is None:
            return None
        total += per_task
    return total or None


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
