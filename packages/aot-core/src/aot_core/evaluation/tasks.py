"""Resolving and loading lm-eval tasks before any engine starts, with errors that say what to do.

``aot eval`` runs offline: the Hugging Face Hub is switched off (``HF_HUB_OFFLINE``,
``HF_DATASETS_OFFLINE``) unless the caller set those variables, so a task whose dataset
is not on this machine fails at once with a message instead of waiting on the network.
"""

from __future__ import annotations

import os
import re
from typing import Any

from aot_core.evaluation.errors import (
    DatasetNotLocalError,
    EvalError,
    TaskDataError,
    TaskInvalidError,
    TaskNotFoundError,
)
from aot_core.evaluation.task_files import TaskSource, TaskYamls, key_line

# Raised by the datasets builders (and what they use) on a file they cannot parse.
_UNREADABLE = frozenset(
    {
        "DatasetGenerationError",
        "ArrowInvalid",
        "ArrowTypeError",
        "ParserError",
        "EmptyDataError",
        "UnicodeDecodeError",
        "JSONDecodeError",
    }
)

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


def task_names(cfg: Any) -> list[str]:
    """The task names and paths lm-eval's ``--tasks`` holds, split on commas as lm-eval
    splits them."""
    raw = [cfg.tasks] if isinstance(cfg.tasks, str) else list(cfg.tasks or [])
    return [name for item in raw for name in str(item).split(",")]


def resolve_tasks(cfg: Any, yamls: TaskYamls) -> Any:
    """lm-eval's own task resolution (names, globs, YAML paths); returns its TaskManager.

    When every task the job names is a plain task in ``--include-path`` (``yamls``), the
    index holds that directory alone: lm-eval's own index of its ~15,000 built-in tasks
    takes seconds per job and would only be searched for names already found.
    """
    local = _local_manager(cfg, yamls)
    if local is not None:
        return local
    try:
        return cfg.process_tasks(cfg.metadata)
    except (ImportError, AttributeError) as exc:
        # A task given as a YAML path has its `!function`s imported here.
        if "from YAML in" not in str(exc):
            raise
        raise TaskInvalidError(f"lm-eval refused a task YAML: {exc}") from None
    except ValueError as exc:
        if "not found" not in str(exc):
            raise
        where = f" (built in, or under {cfg.include_path})" if cfg.include_path else ""
        raise TaskNotFoundError(
            f"{exc}: no lm-eval task{where} has that name. `lm-eval ls tasks` lists the built-in "
            "ones; for your own YAML tasks pass their directory with --include-path DIR"
        ) from exc


def _local_manager(cfg: Any, yamls: TaskYamls) -> Any:
    """A TaskManager of ``--include-path`` alone, or None where the job needs lm-eval's
    built-in index (a built-in task, a group or tag, a glob or YAML path)."""
    names = list(dict.fromkeys(n for n in task_names(cfg) if n))
    if not cfg.include_path or not names or any(n not in yamls.by_name for n in names):
        return None
    from lm_eval.tasks import TaskManager

    manager = TaskManager(
        include_path=cfg.include_path, include_defaults=False, metadata=cfg.metadata or {}
    )
    if set(manager.match_tasks(names)) != set(names):
        return None
    cfg.tasks = names  # as lm-eval's own resolution leaves them
    return manager


def load_tasks(
    task_manager: Any, tasks: list[Any], sources: list[TaskSource]
) -> tuple[list[Any], list[Any]]:
    """Build every task (reading its dataset); return the top-level tasks and groups, and
    every task (the groups' members too).

    ``sources`` (the tasks as their YAML files declare them) name the files in messages.
    """
    try:
        loaded = task_manager.load(tasks)
    except Exception as exc:
        problem = _load_problem(exc, sources)
        if problem is None:
            raise
        raise problem from None
    for name, task in loaded["tasks"].items():
        _check_documents(name, task, sources)
    children = {name for names in loaded["group_map"].values() for name in names}
    top = [g for name, g in loaded["groups"].items() if name not in children]
    top += [t for name, t in loaded["tasks"].items() if name not in children]
    return top, list(loaded["tasks"].values())


def _load_problem(exc: Exception, sources: list[TaskSource]) -> EvalError | None:
    """What a failure of lm-eval's task loading means for the user, if it is known."""
    reason = _dataset_problem(exc)
    if reason is not None:
        return DatasetNotLocalError(f"{reason}. {_LOCAL_DATA_HINT}")
    names = ", ".join(s.name for s in sources) or "the tasks"
    files = sorted({str(s.yaml_path) for s in sources if s.yaml_path is not None})
    declared = f" ({', '.join(files)})" if files else ""
    unreadable = _unreadable_data(exc)
    if unreadable is not None:
        # Their messages can quote the data; the types alone say what kind of failure it was.
        return TaskDataError(
            f"lm-eval could not read the data of {names}{declared}: {unreadable}. The files "
            "parse, so their rows may disagree on a column's type or on the columns themselves"
        )
    if any("out of bounds for size 0" in str(e) for e in _chain(exc)):
        emptied = [s.where("process_docs") for s in sources if "process_docs" in s.config]
        return TaskDataError(
            f"{names}{' (' + ', '.join(emptied) + ')' if emptied else declared}: a split lm-eval "
            "reads has no documents once process_docs has run. Check the filter, or the data"
        )
    if isinstance(exc, TypeError | ValueError | KeyError) or "from YAML in" in str(exc):
        where = _key_where(exc, sources, declared)
        return TaskInvalidError(f"lm-eval refused {names}{where}: {exc}")
    return None


def _key_where(exc: Exception, sources: list[TaskSource], declared: str) -> str:
    """`` (file:line)`` of the first config key lm-eval's message names, else the files."""
    text = str(exc)
    for source in sources:
        for key in source.config:
            named = re.search(rf"\b{re.escape(str(key))}\b", text)
            if named and source.yaml_path is not None and key_line(source.yaml_path, str(key)):
                return f" ({source.where(str(key))})"
    return declared


def _unreadable_data(exc: BaseException) -> str | None:
    """The exception types of a chain that says a data file could not be parsed."""
    kinds = [type(current).__name__ for current in _chain(exc)]
    if _UNREADABLE & set(kinds):
        return " from ".join(kinds)
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in out):
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _check_documents(name: str, task: Any, sources: list[TaskSource]) -> None:
    try:
        docs = task.eval_docs
    except ValueError as exc:  # lm-eval: a task with neither a test nor a validation split
        raise TaskInvalidError(f"task {name}: {exc}; set test_split or validation_split") from None
    if docs is not None and len(docs) == 0:
        where = next((s.where("process_docs") for s in sources if s.name == name), name)
        raise TaskDataError(
            f"task {name} ({where}) has no documents to evaluate: its split is empty after "
            "process_docs. Check the filter, or the data it reads"
        )


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
