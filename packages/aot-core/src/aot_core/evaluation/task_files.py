"""Checking a job's task definitions before lm-eval builds them.

lm-eval's task index skips a YAML it cannot parse (its task is then only "not found"), and a
broken data file surfaces as a chain of tracebacks from ``datasets``. Here every task YAML is
parsed with lm-eval's own loader first, and every local data file a requested task reads is
found and counted in its declared format (``data_files``), so each problem is reported with
the file and line it is in, and nothing from a data file is repeated.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aot_core.evaluation.data_files import FORMATS, DataFileError, count_documents
from aot_core.evaluation.errors import (
    DatasetNotLocalError,
    EvalUsageError,
    TaskDataError,
    TaskInvalidError,
)

SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")
"""The task config keys that name the splits lm-eval reads."""

_IGNORED_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints"})  # as lm-eval's index


@dataclass(frozen=True, kw_only=True)
class TaskSource:
    """A task lm-eval is asked to build, as its YAML declares it."""

    name: str
    """The task's name."""

    yaml_path: Path | None
    """The YAML that defines it (None for a task defined inline, e.g. in a group)."""

    config: Mapping[str, Any]
    """Its configuration: includes merged, group overrides applied, functions unresolved."""

    def where(self, key: str) -> str:
        """``file:line`` of ``key`` in the task's YAML, as near as it is known."""
        if self.yaml_path is None:
            return f"task {self.name} (defined inline)"
        line = key_line(self.yaml_path, key)
        return f"{self.yaml_path}:{line}" if line else str(self.yaml_path)


@dataclass(frozen=True, kw_only=True)
class TaskYamls:
    """The task YAML files a job may read, parsed."""

    by_name: dict[str, TaskSource]
    """Task name -> its first definition (lm-eval's index keeps the first one too)."""

    requested: list[TaskSource]
    """The tasks the job names directly, by name or YAML path: their data can be checked
    before lm-eval builds its index of every task (seconds)."""


def check_task_yamls(include_path: str | None, specs: Iterable[str]) -> TaskYamls:
    """Parse every task YAML lm-eval would read for this job: those under ``include_path``
    and those named in ``specs``. Raises ``TaskInvalidError`` naming the file and line of the
    first that does not load."""
    from lm_eval.tasks._yaml_loader import load_yaml

    wanted = set(specs)
    by_name: dict[str, TaskSource] = {}
    requested: list[TaskSource] = []
    for path, explicit in _yaml_files(include_path, sorted(wanted)):
        try:
            config = load_yaml(path, resolve_func=False)
        except ValueError as exc:
            if "Expected YAML dict" in str(exc) and not explicit:
                continue  # not a task file; lm-eval's index skips it too
            raise TaskInvalidError(_yaml_message(path, str(exc), explicit)) from None
        except Exception as exc:
            problem = _yaml_problem(exc, path)
            raise TaskInvalidError(_yaml_message(path, problem, explicit)) from None
        name = config.get("task")
        if not isinstance(name, str) or "class" in config or "group" in config:
            continue  # groups, tags and Python tasks: checked once lm-eval has resolved them
        source = TaskSource(name=name, yaml_path=path, config=config)
        if explicit or (name in wanted and name not in by_name):
            requested.append(source)
        by_name.setdefault(name, source)
    return TaskYamls(by_name=by_name, requested=requested)


def _yaml_files(include_path: str | None, specs: list[str]) -> list[tuple[Path, bool]]:
    files: list[tuple[Path, bool]] = []
    if include_path:
        root = Path(include_path).expanduser()
        if not root.is_dir():
            raise EvalUsageError(
                f"--include-path {include_path}: no such directory; pass the directory that "
                "holds your task YAML files"
            )
        found = (p for p in root.rglob("*.yaml") if not _IGNORED_DIRS & set(p.parts))
        files += [(p, False) for p in sorted(found, key=lambda p: p.as_posix())]
    for spec in specs:
        if spec.endswith(".yaml"):
            files += [(Path(p), True) for p in sorted(glob.glob(spec))]
    if len(specs) == 1 and Path(specs[0]).is_dir():
        files += [(p, True) for p in sorted(Path(specs[0]).glob("*.yaml"))]
    return files


def _yaml_problem(exc: Exception, path: Path) -> str:
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "not valid YAML"
        if mark is None:
            return what
        return f"{mark.name}:{mark.line + 1}:{mark.column + 1}: {what}"
    if isinstance(exc, yaml.reader.ReaderError):
        source = Path(str(exc.name))
        line = _line_of_offset(source if source.is_file() else path, exc.position)
        return f"{source}:{line}: not UTF-8 text ({exc.reason})"
    if isinstance(exc, OSError):
        if exc.filename and Path(exc.filename).resolve() != path.resolve():
            return f"its `include:` {exc.filename} cannot be read ({exc.strerror})"
        return f"it cannot be read ({exc.strerror})"
    return f"{type(exc).__name__}: not a task YAML lm-eval can load"


def _yaml_message(path: Path, problem: str, explicit: bool) -> str:
    remedy = "fix it" if explicit else "fix it, or move it out of the --include-path directory"
    return f"task YAML {path} does not load: {problem}. lm-eval would skip it silently; {remedy}"


def _line_of_offset(path: Path, offset: int) -> int:
    try:
        return path.read_bytes().count(b"\n", 0, offset) + 1
    except OSError:
        return 1


def key_line(path: Path, key: str) -> int | None:
    """The line of the top-level ``key`` in the YAML ``path``, if it is there."""
    import yaml

    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return int(k.start_mark.line) + 1
    return None


def task_sources(manager: Any, specs: Iterable[Any], yamls: TaskYamls) -> list[TaskSource]:
    """Every task the resolved ``specs`` (names, tags, groups, configs) build, with its config."""
    walk = _Walk(manager=manager, yamls=yamls)
    for spec in specs:
        walk.visit(spec, {}, None)
    return walk.found


@dataclass(frozen=True, kw_only=True)
class _Walk:
    """The tasks found so far, walking names, tags and groups as lm-eval's factory does."""

    manager: Any
    """lm-eval's TaskManager (its index of names, tags and groups)."""

    yamls: TaskYamls
    """The parsed task YAMLs, for the files of tasks given as YAML paths."""

    found: list[TaskSource] = field(default_factory=list)
    """The tasks, in the order lm-eval builds them."""

    seen: set[str] = field(default_factory=set)
    """Names already visited (a group may name a task twice, or itself)."""

    def visit(self, spec: Any, overrides: Mapping[str, Any], parent: Path | None) -> None:
        from lm_eval.tasks._index import Kind

        if isinstance(spec, Mapping):
            self._visit_config(spec, overrides, parent)
            return
        entry = self.manager.task_index.get(spec) if isinstance(spec, str) else None
        if entry is None or spec in self.seen:
            return
        self.seen.add(spec)
        if entry.kind == Kind.TAG:
            for name in sorted(entry.tags):
                self.visit(name, overrides, None)
        elif entry.kind == Kind.GROUP:
            self._visit_group(entry.cfg or {}, overrides, entry.yaml_path)
        elif entry.kind == Kind.TASK:
            config = {**(entry.cfg or {}), **overrides}
            self.found.append(TaskSource(name=spec, yaml_path=entry.yaml_path, config=config))

    def _visit_group(
        self, config: Mapping[str, Any], overrides: Mapping[str, Any], path: Path | None
    ) -> None:
        from lm_eval.config.group import GroupConfig

        group_fields = set(GroupConfig.__dataclass_fields__)
        inherited = {k: v for k, v in config.items() if k not in group_fields}
        members = config.get("task")
        for member in members if isinstance(members, list) else []:
            self.visit(member, {**inherited, **overrides}, path)

    def _visit_config(
        self, spec: Mapping[str, Any], overrides: Mapping[str, Any], parent: Path | None
    ) -> None:
        if "group" in spec:
            self._visit_group(spec, overrides, parent)
            return
        name = spec.get("task")
        if not isinstance(name, str):
            return
        entry = self.manager.task_index.get(name)
        base = entry.cfg if entry is not None and entry.cfg else {}
        parsed = self.yamls.by_name.get(name)
        path = entry.yaml_path if entry is not None else parsed.yaml_path if parsed else parent
        config = {**base, **overrides, **spec}
        self.found.append(TaskSource(name=name, yaml_path=path, config=config))


def check_task_data(source: TaskSource) -> None:
    """Every local data file ``source`` reads exists and holds documents in its format, and
    every split it uses has one."""
    config = source.config
    fmt = config.get("dataset_path")
    kwargs = config.get("dataset_kwargs") or {}
    if fmt not in FORMATS or not isinstance(kwargs, Mapping) or "data_files" not in kwargs:
        return  # a Hub dataset, or a builder whose files lm-eval alone knows how to find
    splits = _splits(kwargs["data_files"], source)
    base = Path(str(kwargs.get("data_dir") or ".")).expanduser()
    counts = {
        split: sum(_count(source, split, str(p), base) for p in patterns)
        for split, patterns in splits.items()
    }
    for key in SPLIT_KEYS:
        split = config.get(key)
        if split is None:
            continue
        if split not in counts:
            raise TaskDataError(
                f"task {source.name} ({source.where(key)}): {key} {split!r} has no data file; "
                f"data_files names only {', '.join(map(repr, counts))}. Add a {split!r} entry "
                "to data_files, or name one of those"
            )
        if counts[split] == 0:
            files = ", ".join(str((base / p).absolute()) for p in splits[split])
            raise TaskDataError(
                f"task {source.name} ({source.where(key)}): its {split!r} split has no "
                f"documents ({files} holds none). Add documents, or point data_files at a "
                "file that has them"
            )


def _splits(files: Any, source: TaskSource) -> dict[str, list[Any]]:
    if isinstance(files, str):
        return {"train": [files]}  # the datasets library calls a lone file the train split
    if isinstance(files, list):
        return {"train": files}
    if isinstance(files, Mapping):
        return {str(k): v if isinstance(v, list) else [v] for k, v in files.items()}
    raise TaskInvalidError(
        f"task {source.name} ({source.where('dataset_kwargs')}): data_files must be a path, a "
        "list of paths, or a mapping of split -> path(s)"
    )


def _count(source: TaskSource, split: str, pattern: str, base: Path) -> int:
    if "://" in pattern:
        return 1  # remote: not checked here; offline, lm-eval's download fails by name (21)
    fmt, kwargs = str(source.config["dataset_path"]), source.config["dataset_kwargs"]
    full = base / Path(pattern).expanduser()
    where = source.where("dataset_kwargs")
    if any(c in pattern for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(str(full), recursive=True))]
    else:
        paths = [full] if full.exists() else []
    if not paths:
        raise DatasetNotLocalError(
            f"task {source.name} ({where}): its {split!r} data file {full.absolute()} does not "
            f"exist (relative paths resolve from {base.resolve()}, the directory aot eval runs in "
            "unless dataset_kwargs sets data_dir)"
        )
    total = 0
    for path in paths:
        try:
            total += count_documents(path, fmt, kwargs)
        except DataFileError as exc:
            raise TaskDataError(
                f"task {source.name} ({where}): data file {path.absolute()} ({split!r} split) "
                f"is not readable as {fmt}: {exc}. Fix the file, or point data_files at a "
                f"{fmt} file"
            ) from None
    return total
