"""Real lm-eval jobs through ``aot eval`` on both backends: parity of eager and compiled in
float32, aot's stats in the results, a warm second job, and log-likelihoods checked
against lm-eval's own transformers model on the same weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aot_core import artifacts
from aot_core.usage import log as usage_log
from conftest import F32, LIMIT, TASKS, Run, aot_eval, samples, task_args

BACKENDS = ("legacy", "vllm")
_parity: dict[str, tuple[Run, Path]] = {}


@pytest.fixture(scope="module")
def parity_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parity")


def parity(backend: str, tiny: Path, root: Path) -> tuple[Run, Path]:
    """``aot eval --parity`` for ``backend``, run once per session (eager, then cold compiled)."""
    if backend not in _parity:
        out = root / backend
        run = aot_eval(
            *task_args(tiny, "--backend", backend, "--model-args", F32),
            "--parity",
            "--parity-tolerance",
            "1e-3",
            "--output",
            str(out),
        )
        _parity[backend] = (run, out)
    return _parity[backend]


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_parity_is_exact(backend: str, tiny: Path, parity_dir: Path) -> None:
    run, out = parity(backend, tiny, parity_dir)
    assert run.rc == 0, run.stderr[-3000:]
    report = {t["task"]: t for t in json.loads((out / "parity.json").read_text())}
    assert set(report) == {"aot_mc", "aot_gen", "aot_ppl"}
    for task in report.values():
        assert task["flipped"] == 0 and task["differing"] == 0, task
        assert task["max_abs_delta"] < 1e-3, task
    assert report["aot_mc"]["decisions"] == int(LIMIT)
    assert report["aot_gen"]["generations"] == int(LIMIT)
    assert report["aot_ppl"]["loglikelihoods"] == int(LIMIT)
    assert f"decisions flipped: 0 of {LIMIT}" in run.stdout
    assert f"greedy generations differing: 0 of {LIMIT}" in run.stdout
    assert "noise" in run.stdout  # the tiny model's scores are flagged as meaningless
    print(run.stdout)  # the measured report, in the session log (-rA)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_carry_aot_stats(backend: str, tiny: Path, parity_dir: Path) -> None:
    run, out = parity(backend, tiny, parity_dir)
    assert run.rc == 0, run.stderr[-3000:]
    eager = run.results(out / "eager")
    compiled = run.results(out / "compiled")
    assert set(compiled["results"]) >= {"aot_mc", "aot_gen", "aot_ppl"}
    for results, path, cache in ((eager, "eager", "disabled"), (compiled, "cold", "miss")):
        aot = results["aot"]
        stats = aot["stats"]
        assert stats["backend"] == backend and stats["backend_version"] and stats["torch_version"]
        assert stats["cache"]["status"] == cache, stats["cache"]
        assert aot["start"]["path"] == path
        assert stats["startup_s"] > 0 and stats["startup_phases"]
        assert aot["requests"]["generated_tokens"] > 0 and aot["requests"]["scored_tokens"] > 0
        assert aot["wall_s"]["total"] >= aot["wall_s"]["evaluate"] > 0
        assert aot["versions"]["lm-eval"] == "0.4.13"
    assert compiled["aot"]["stats"]["compile_time_s"] > 0
    assert compiled["aot"]["start"]["artifact"]
    # One start configuration for both runs of the command, recorded with its sources.
    fields = ("dtype", "max_model_len", "max_num_seqs", "max_num_batched_tokens")
    eager_start, compiled_start = (r["aot"]["start"]["resolved"] for r in (eager, compiled))
    assert {k: eager_start[k] for k in fields} == {k: compiled_start[k] for k in fields}
    assert compiled_start["dtype"] == {"value": "float32", "source": "spec"}
    # The artifact the compiled job built records the same resolution.
    manifest = artifacts.read_manifest(Path(compiled["aot"]["start"]["artifact"]))
    assert manifest.extra["resolved"] == compiled_start
    if backend == "vllm":  # and the engines got the same dtype, context and KV cache
        keys = ("dtype", "max_model_len", "max_num_seqs", "kv_cache_memory_bytes")
        eager_config, compiled_config = (
            r["aot"]["stats"]["start_config"] for r in (eager, compiled)
        )
        assert {k: eager_config[k] for k in keys} == {k: compiled_config[k] for k in keys}


def test_second_compiled_job_starts_warm_from_the_verified_cache(
    tiny: Path, parity_dir: Path, tmp_path: Path, aot_home: Path
) -> None:
    first, first_out = parity("legacy", tiny, parity_dir)
    assert first.rc == 0, first.stderr[-3000:]
    run = aot_eval(
        *task_args(tiny, "--backend", "legacy", "--model-args", F32),
        "--log-samples",
        "--output",
        str(tmp_path),
    )
    assert run.rc == 0, run.stderr[-3000:]
    aot = run.results(tmp_path)["aot"]
    assert aot["start"]["path"] == "warm"
    assert (
        aot["start"]["artifact"] == run.results(first_out / "compiled")["aot"]["start"]["artifact"]
    )
    assert aot["stats"]["cache"]["status"] == "hit", aot["stats"]["cache"]
    for task in ("aot_mc", "aot_ppl"):
        again, before = samples(tmp_path, task), samples(first_out / "compiled", task)
        assert [r["resps"] for r in again.values()] == [r["resps"] for r in before.values()]
    # Each job, the parity pair's included, is in the usage log `aot usage` reads.
    jobs = [r for r in usage_log.read(aot_home).records if r["model_path"] == aot["model"]]
    assert {(r["command"], r["backend"], r["start"]) for r in jobs} >= {
        ("eval", "legacy", start) for start in ("eager", "cold", "warm")
    }


def _loglikelihoods(rows: dict[int, dict[str, Any]]) -> list[float]:
    out = []
    for doc in sorted(rows):
        for resp in rows[doc]["resps"]:
            value = resp[0]
            out.append(float(value[0] if isinstance(value, (list, tuple)) else value))
    return out


def test_scores_match_lm_evals_own_transformers_model(
    tiny: Path, parity_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-eval's ``--model hf`` (transformers' forward pass, float32) is the reference."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(TASKS)  # the fixtures' data_files are relative
    reference = simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny},dtype=float32",
        tasks=["aot_mc", "aot_ppl"],
        limit=int(LIMIT),
        log_samples=True,
        device="cpu",
        task_manager=TaskManager(include_path=str(TASKS)),
    )
    assert reference is not None
    for backend in BACKENDS:
        run, out = parity(backend, tiny, parity_dir)
        assert run.rc == 0, run.stderr[-3000:]
        for task in ("aot_mc", "aot_ppl"):
            ref = _loglikelihoods({r["doc_id"]: r for r in reference["samples"][task]})
            for label in ("eager", "compiled"):
                ours = _loglikelihoods(samples(out / label, task))
                assert ours == pytest.approx(ref, abs=1e-3), (backend, label, task)
