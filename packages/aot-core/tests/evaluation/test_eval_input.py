"""Bad tasks and data refused before any engine starts (issue 23): each with its documented
exit code, the file and line it is in, no traceback, and nothing of the data file repeated.

Run through ``aot``'s own ``run`` in this process, with the engine start replaced by a
recorder that must stay empty; one case runs the real command in a fresh process and reads
its output for any engine line.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aot_core.cli.app import ExitCode
from aot_core.evaluation import job, parity
from conftest import TASK_LIST, TASKS, Run

SECRET = "root:x:0:0:aot-secret-marker:/root:/bin/bash"

PPL_TASK = """\
task: {name}
dataset_path: {fmt}
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
{extra}"""


def write_task(
    directory: Path, data: str, content: bytes | None, *, fmt: str = "json", extra: str = ""
) -> Path:
    """A perplexity task ``t`` in ``directory`` reading ``data`` (written when ``content``
    is given); returns its YAML."""
    directory.mkdir(parents=True, exist_ok=True)
    if content is not None:
        (directory / data).write_bytes(content)
    yaml_path = directory / "t.yaml"
    yaml_path.write_text(PPL_TASK.format(name="t", fmt=fmt, data=data, extra=extra))
    return yaml_path


@pytest.fixture(scope="module", autouse=True)
def builtin_tasks_indexed_once() -> Iterator[None]:
    """lm-eval indexes its thousands of built-in task YAMLs for every TaskManager (about
    20 s here), and most tests below build one: the built-in part is indexed once."""
    from lm_eval.tasks import _index, manager

    build = _index.TaskIndex.build
    builtin = Path(manager.__file__).parent
    done: dict[str, Any] = {}

    def cached(paths: Any, *, resolve_includes: bool = True) -> dict[str, Any]:
        index: dict[str, Any] = {}
        for path in paths:
            if Path(path) != builtin:
                index.update(build([path], resolve_includes=resolve_includes))
                continue
            if resolve_includes not in done:
                done[resolve_includes] = build([path], resolve_includes=resolve_includes)
            index.update(done[resolve_includes])
        return index

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_index.TaskIndex, "build", staticmethod(cached))
        yield


@pytest.fixture
def engine_starts(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every engine start (and parity child run) attempted; each fails the job at once."""
    calls: list[object] = []

    def record(*args: object, **kwargs: object) -> object:
        calls.append(args)
        raise AssertionError("an engine was started for bad input")

    monkeypatch.setattr(job, "run_with_model", record)
    monkeypatch.setattr(parity.subprocess, "run", record)
    return calls


@pytest.fixture
def aot_eval(
    eval_here: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny: Path,
    engine_starts: list[object],
) -> Callable[..., Run]:
    """``aot eval TINY --include-path TMP ARGS`` from ``tmp_path``; asserts no engine start."""
    monkeypatch.chdir(tmp_path)  # after eval_here's: these tasks' data is here

    def run(*args: str, tasks: str = "t") -> Run:
        done = eval_here(str(tiny), "--tasks", tasks, "--include-path", str(tmp_path), *args)
        assert engine_starts == []
        assert "Traceback" not in done.stderr and "tasks ready" not in done.stderr
        return done

    return run


def test_a_broken_jsonl_line_is_named(aot_eval: Callable[..., Run], tmp_path: Path) -> None:
    lines = [b'{"text": "one"}', b'{"text": "two"}', b"", b'{"text": "aot-marker', b'{"text": "4"}']
    write_task(tmp_path, "data.jsonl", b"\n".join(lines) + b"\n")
    run = aot_eval()
    assert run.rc == ExitCode.TASK_DATA_INVALID, run.stderr
    assert f"{tmp_path / 'data.jsonl'}" in run.stderr and "line 4, column 10" in run.stderr
    assert f"{tmp_path / 't.yaml'}:3" in run.stderr  # dataset_kwargs
    assert "aot-marker" not in run.stderr


def test_a_file_that_is_not_json_is_refused_without_its_contents(
    aot_eval: Callable[..., Run], tmp_path: Path
) -> None:
    write_task(tmp_path, "passwd", f"{SECRET}\nnobody:x:65534\n".encode())
    run = aot_eval()
    assert run.rc == ExitCode.TASK_DATA_INVALID, run.stderr
    assert "line 1, column 1" in run.stderr and str(tmp_path / "passwd") in run.stderr
    assert "aot-secret-marker" not in run.stderr + run.stdout and "nobody" not in run.stderr


def test_etc_passwd_as_task_data_is_not_echoed(
    aot_eval: Callable[..., Run], tmp_path: Path
) -> None:
    passwd = Path("/etc/passwd")
    target = passwd if passwd.is_file() else tmp_path / "passwd"
    if target != passwd:
        target.write_text(f"{SECRET}\n")
    write_task(tmp_path, str(target), None)
    run = aot_eval()
    assert run.rc == ExitCode.TASK_DATA_INVALID, run.stderr
    assert "line 1" in run.stderr
    for line in target.read_text(errors="replace").splitlines():
        assert not line.strip() or line not in run.stderr


@pytest.mark.parametrize(
    "case",
    [
        ("empty.jsonl", b"", "json", "has no documents"),
        ("blank.jsonl", b"\n \n", "json", "has no documents"),
        ("latin1.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n', "json", "line 2: not UTF-8"),
        ("scalar.jsonl", b'{"text": "a"}\n42\n', "json", "line 2: a JSON number"),
        ("twice.jsonl", b'{"text": "a"}\n{"text": "b", "text": "c"}', "json", "line 2: an object"),
        ("list.json", b'[{"text": "a"},\n {"text": "b",]\n', "json", "line 2, column 15"),
        ("wide.csv", b"text\na\nb,c\n", "csv", "line 3: 2 fields where the header has 1"),
        ("quote.csv", b'text\n"a\n', "csv", "line 2: a quoted field is never closed"),
        ("header.csv", b"text\n", "csv", "has no documents"),
        ("data.parquet", b"PAR1 not really\n", "parquet", "is not a Parquet file"),
        ("latin1.txt", b"a\n\xff\n", "text", "line 2: not UTF-8"),
    ],
)
def test_data_unreadable_as_its_format_or_empty(
    aot_eval: Callable[..., Run], tmp_path: Path, case: tuple[str, bytes, str, str]
) -> None:
    name, content, fmt, expected = case
    write_task(tmp_path, name, content, fmt=fmt)
    run = aot_eval()
    assert run.rc == ExitCode.TASK_DATA_INVALID, run.stderr
    assert expected in run.stderr and str(tmp_path / name) in run.stderr


def test_a_missing_data_file_is_named(aot_eval: Callable[..., Run], tmp_path: Path) -> None:
    write_task(tmp_path, "nowhere.jsonl", None)
    run = aot_eval()
    assert run.rc == ExitCode.DATASET_NOT_LOCAL, run.stderr
    assert f"{tmp_path / 'nowhere.jsonl'} does not exist" in run.stderr


def test_a_directory_as_data_file(aot_eval: Callable[..., Run], tmp_path: Path) -> None:
    (tmp_path / "folder.jsonl").mkdir()
    write_task(tmp_path, "folder.jsonl", None)
    run = aot_eval()
    assert run.rc == ExitCode.TASK_DATA_INVALID, run.stderr
    assert "is a directory" in run.stderr


def test_a_split_without_a_data_file(aot_eval: Callable[..., Run], tmp_path: Path) -> None:
    write_task(tmp_path, "d.jsonl", b'{"text": "a"}\n', extra="validation_split: dev\n")
    run = aot_eval()
    assert run.rc == ExitCode.TASK_DATA_INVALID, run.stderr
    assert "validation_split 'dev' has no data file" in run.stderr
    assert f"{tmp_path / 't.yaml'}:12" in run.stderr


def test_a_split_emptied_by_process_docs(aot_eval: Callable[..., Run], tmp_path: Path) -> None:
    (tmp_path / "drop.py").write_text("def none(dataset):\n    return dataset.select([])\n")
    write_task(tmp_path, "d.jsonl", b'{"text": "a"}\n', extra="process_docs: !function drop.none\n")
    run = aot_eval()
    assert run.rc == ExitCode.TASK_DATA_INVALID, run.stderr
    assert "no documents" in run.stderr and f"{tmp_path / 't.yaml'}:12" in run.stderr


def test_data_lm_eval_cannot_read_is_refused_without_its_contents(tmp_path: Path) -> None:
    """What the checks miss, lm-eval's builder refuses: translated, by exception type only."""
    from aot_core.evaluation.errors import TaskDataError
    from aot_core.evaluation.task_files import TaskSource
    from aot_core.evaluation.tasks import _load_problem
    from datasets.exceptions import DatasetGenerationError
    from pyarrow.lib import ArrowInvalid

    try:
        try:
            raise ArrowInvalid(f"JSON parse error in row 3: {SECRET}")
        except ArrowInvalid as cause:
            raise DatasetGenerationError(
                "An error occurred while generating the dataset"
            ) from cause
    except DatasetGenerationError as exc:
        source = TaskSource(name="t", yaml_path=tmp_path / "t.yaml", config={})
        problem = _load_problem(exc, [source])
    assert isinstance(problem, TaskDataError)
    assert "DatasetGenerationError from ArrowInvalid" in str(problem)
    assert str(tmp_path / "t.yaml") in str(problem) and "aot-secret-marker" not in str(problem)


def test_a_malformed_task_yaml_names_file_and_line(
    aot_eval: Callable[..., Run], tmp_path: Path
) -> None:
    yaml_path = write_task(tmp_path, "d.jsonl", b'{"text": "a"}\n')
    text = yaml_path.read_text().replace("test_split: test", "test_split: test\n  oops: [1")
    yaml_path.write_text(text)
    run = aot_eval()
    assert run.rc == ExitCode.TASK_INVALID, run.stderr
    assert f"{yaml_path}:7:" in run.stderr and "does not load" in run.stderr
    assert "no lm-eval task" not in run.stderr


def test_a_task_yaml_whose_include_is_missing(aot_eval: Callable[..., Run], tmp_path: Path) -> None:
    yaml_path = write_task(tmp_path, "d.jsonl", b'{"text": "a"}\n')
    yaml_path.write_text("include: base.yaml\n" + yaml_path.read_text())
    run = aot_eval()
    assert run.rc == ExitCode.TASK_INVALID, run.stderr
    assert f"{tmp_path / 'base.yaml'} cannot be read" in run.stderr and str(yaml_path) in run.stderr


def test_a_task_yaml_lm_eval_refuses(aot_eval: Callable[..., Run], tmp_path: Path) -> None:
    write_task(tmp_path, "d.jsonl", b'{"text": "a"}\n', extra="target_delimitr: x\n")
    run = aot_eval()
    assert run.rc == ExitCode.TASK_INVALID, run.stderr
    assert f"{tmp_path / 't.yaml'}:12" in run.stderr and "target_delimitr" in run.stderr


@pytest.mark.parametrize("given_as", ["name", "path"])
def test_a_function_the_yaml_names_is_missing(
    aot_eval: Callable[..., Run], tmp_path: Path, given_as: str
) -> None:
    extra = "process_docs: !function nomodule.nothing\n"
    yaml_path = write_task(tmp_path, "d.jsonl", b'{"text": "a"}\n', extra=extra)
    run = aot_eval(tasks="t" if given_as == "name" else str(yaml_path))
    assert run.rc == ExitCode.TASK_INVALID, run.stderr
    assert "nomodule" in run.stderr and str(tmp_path) in run.stderr


def test_a_limit_passed_straight_to_lm_eval_is_checked(
    aot_eval: Callable[..., Run], tmp_path: Path
) -> None:
    write_task(tmp_path, "d.jsonl", b'{"text": "a"}\n')
    for bad in ("0", "-1", "2.5"):
        run = aot_eval("--lm-eval", "--limit", bad)
        assert run.rc == ExitCode.USAGE, run.stderr
        assert "--limit" in run.stderr and "fraction in (0, 1)" in run.stderr


def test_parity_refuses_bad_tasks_before_either_run(
    aot_eval: Callable[..., Run], tmp_path: Path
) -> None:
    write_task(tmp_path, "d.jsonl", b'{"text": "a"}\n{"text": \n')
    run = aot_eval("--parity")
    assert run.rc == ExitCode.TASK_DATA_INVALID, run.stderr
    assert "line 2" in run.stderr


def test_valid_data_in_every_checked_format_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from aot_core.evaluation.task_files import TaskSource, check_task_data

    monkeypatch.chdir(tmp_path)
    files = {
        "a.jsonl": (b'\xef\xbb\xbf{"text": "a"}\r\n\n{"text": "b"}', "json"),
        "b.json": (b'[{"text": "a"}, {"text": "b"}]', "json"),
        "c.json": (b'{"text": "one pretty-printed object",\n "n": 1}\n', "json"),
        "d.csv": (b'text,n\n"a, quoted",1\nb\n\n', "csv"),
        "e.txt": (b"one\ntwo\n", "text"),
    }
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "f.parquet")
    files["f.parquet"] = (b"", "parquet")
    for name, (_, fmt) in files.items():
        config = {"dataset_path": fmt, "dataset_kwargs": {"data_files": {"test": name}}}
        check_task_data(
            TaskSource(name=name, yaml_path=None, config=config | {"test_split": "test"})
        )


def test_the_shipped_tasks_pass_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TASKS)
    argv = ["--tasks", TASK_LIST, "--include_path", str(TASKS), "--limit", "2"]
    prepared = job.prepare_tasks(argv, lambda _m: None)
    assert sorted(t.task_name for t in prepared.tasks) == sorted(TASK_LIST.split(","))


def test_the_command_refuses_bad_data_before_any_engine_line(tiny: Path, tmp_path: Path) -> None:
    """The real ``aot eval``, fresh process, default backend: exit 25 and no engine output."""
    write_task(tmp_path, "d.jsonl", f'{{"text": "a"}}\n{SECRET}\n'.encode())
    more = ["--include-path", str(tmp_path), "--limit", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "aot_core", "eval", str(tiny), "--tasks", "t", *more],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == ExitCode.TASK_DATA_INVALID, proc.stderr[-3000:]
    assert "line 2, column 1" in proc.stderr and "Traceback" not in proc.stderr
    assert "aot-secret-marker" not in proc.stderr + proc.stdout
    engine_lines = ("aot: starting", "aot: compiling", "tasks ready")
    assert not [line for line in proc.stderr.splitlines() if line.startswith(engine_lines)]
    assert proc.stdout == ""


def test_an_include_path_that_is_not_a_directory(
    eval_here: Callable[..., Run], tiny: Path, tmp_path: Path, engine_starts: list[object]
) -> None:
    missing = tmp_path / "no-such-tasks"
    run = eval_here(str(tiny), "--tasks", "t", "--include-path", str(missing))
    assert run.rc == ExitCode.USAGE, run.stderr
    assert f"--include-path {missing}: no such directory" in run.stderr and engine_starts == []
