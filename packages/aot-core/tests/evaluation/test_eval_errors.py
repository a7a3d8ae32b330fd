"""Bad input to ``aot eval``: each a clear message and its documented exit code, before any
engine starts. Run through ``aot``'s own ``run`` in this process (the path ``main`` takes),
so the cases cost no interpreter start each."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from aot_core.cli.app import ExitCode
from conftest import F32, TASKS, Run


def test_unknown_task(eval_here: Callable[..., Run], tiny: Path) -> None:
    run = eval_here(str(tiny), "--tasks", "no_such_task", "--include-path", str(TASKS))
    assert run.rc == ExitCode.TASK_NOT_FOUND, run.stderr[-2000:]
    assert "no_such_task" in run.stderr and "--include-path" in run.stderr


def test_dataset_not_on_this_machine(eval_here: Callable[..., Run], tiny: Path) -> None:
    run = eval_here(str(tiny), "--tasks", "aot_hub", "--include-path", str(TASKS))
    assert run.rc == ExitCode.DATASET_NOT_LOCAL, run.stderr[-2000:]
    assert "offline" in run.stderr and "dataset_path: json" in run.stderr


def test_model_without_a_tokenizer(
    eval_here: Callable[..., Run], tiny: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny / name, bare / name)
    run = eval_here(str(bare), "--tasks", "aot_mc", "--include-path", str(TASKS))
    assert run.rc == ExitCode.NO_TOKENIZER, run.stderr[-2000:]
    assert "tokenizer" in run.stderr and "tokenizer=DIR" in run.stderr


def test_chat_template_asked_of_a_tokenizer_without_one(
    eval_here: Callable[..., Run], tiny: Path
) -> None:
    # the tiny Llama's byte tokenizer has no chat template (the real model's has one)
    args = ("--tasks", "aot_gen", "--include-path", str(TASKS), "--limit", "2", "--eager")
    run = eval_here(str(tiny), *args, "--backend", "legacy", "--lm-eval", "--apply_chat_template")
    assert run.rc == ExitCode.USAGE, run.stderr[-2000:]
    assert "has no chat template" in run.stderr and "Traceback" not in run.stderr


def test_invalid_spec_in_model_args(eval_here: Callable[..., Run], tiny: Path) -> None:
    args = ("--tasks", "aot_mc", "--include-path", str(TASKS))
    run = eval_here(str(tiny), *args, "--model-args", "dtype=float64")
    assert run.rc == ExitCode.SPEC_ERROR, run.stderr[-2000:]
    assert "dtype" in run.stderr
    run = eval_here(str(tiny), *args, "--model-args", "max_model_lenn=64")
    assert run.rc == ExitCode.SPEC_ERROR, run.stderr[-2000:]
    assert "did you mean 'max_model_len'" in run.stderr or "unknown key" in run.stderr


def test_lm_eval_options_are_checked_by_lm_eval(eval_here: Callable[..., Run], tiny: Path) -> None:
    run = eval_here(str(tiny), "--tasks", "aot_mc", "--include-path", str(TASKS), "--log-samples")
    assert run.rc == ExitCode.USAGE, run.stderr[-2000:]
    assert "output" in run.stderr


def test_missing_model_and_parity_with_eager(
    eval_here: Callable[..., Run], tiny: Path, tmp_path: Path
) -> None:
    run = eval_here(str(tmp_path / "nothing"), "--tasks", "aot_mc")
    assert run.rc == ExitCode.MODEL_NOT_FOUND
    run = eval_here(str(tiny), "--tasks", "aot_mc", "--parity", "--eager", "--model-args", F32)
    assert run.rc == ExitCode.USAGE
    assert "--parity runs both" in run.stderr
