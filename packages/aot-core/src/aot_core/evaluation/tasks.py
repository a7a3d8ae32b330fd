"""Resolving and loading lm-eval tasks before any engine starts, with errors that say what to do.

``aot eval`` runs offline: the Hugging Face Hub is switched off (``HF_HUB_OFFLINE``,
``HF_DATASETS_OFFLINE``) unless the caller set those variables, so a task whose dataset
is not on this machine fails at once with a message instead of waiting on the network.
"""

from __future__ import annotations

import os
from typing import Any

from aot_core.evaluation.errors import DatasetNotLocalError, TaskNotFoundError

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

_LOCAL_DATA_HINT = (
    "aot eval runs offline and downloads nothing. Point the task at local files: in its "
    "YAML, `dataset_path: json` and `dataset_kwargs: {data_files: {test: /path/to/test.jsonl}}` "
    "(paths relative to the directory you run from), and pass the YAML's directory with "
    "--include-path; or fill the datasets cache (HF_DATASETS_CACHE) on a machine with network "
    "and copy it here"
)


def go_offline() -> None:
    """Switch the Hugging Face Hub off for this process, unless the caller chose otherwise.

    Must run before ``datasets`` or ``huggingface_hub`` is imported: they read it once.
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def resolve_tasks(cfg: Any) -> Any:
    """lm-eval's own task resolution (names, globs, YAML paths); returns its TaskManager."""
    try:
        return cfg.process_tasks(cfg.metadata)
    except ValueError as exc:
        if "not found" not in str(exc):
            raise
        where = f" or under {cfg.include_path}" if cfg.include_path else ""
        raise TaskNotFoundError(
            f"{exc}: no lm-eval task{where} has that name. `lm-eval ls tasks` lists the built-in "
            "ones; for your own YAML tasks pass their directory with --include-path DIR"
        ) from exc


def load_tasks(task_manager: Any, tasks: list[Any]) -> list[Any]:
    """Build every task (reading its dataset) and return the top-level tasks and groups."""
    try:
        loaded = task_manager.load(tasks)
    except Exception as exc:
        reason = _dataset_problem(exc)
        if reason is None:
            raise
        raise DatasetNotLocalError(f"{reason}. {_LOCAL_DATA_HINT}") from exc
    children = {name for names in loaded["group_map"].values() for name in names}
    top = [g for name, g in loaded["groups"].items() if name not in children]
    top += [t for name, t in loaded["tasks"].items() if name not in children]
    return top


def _dataset_problem(exc: BaseException) -> str | None:
    """What made a dataset unavailable, when ``exc`` (or its cause) says so."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if isinstance(current, ConnectionError) or "Offline" in type(current).__name__:
            return f"a task's dataset is not on this machine ({text})"
        if isinstance(current, FileNotFoundError):
            return f"a task's data files were not found ({text})"
        current = current.__cause__ or current.__context__
    return None
