"""Running ``aot tune``'s trials (skipping those already finished) and reporting on them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aot_core.tune.plan import SweepPlan
from aot_core.tune.runner import run_trial
from aot_core.tune.sweep import Trial

BAR_WIDTH = 20


def _bar(done: int, total: int) -> str:
    filled = BAR_WIDTH * done // total if total else BAR_WIDTH
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total}"


def _cold_of(trial: Trial, trials: Sequence[Trial]) -> Trial:
    return next(t for t in trials if t.config == trial.config and t.phase == "cold")


def run_sweep(
    plan: SweepPlan, progress: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every trial not yet in the results; returns the finished records in sweep order
    and the failures (one line each)."""
    finished = plan.results.load()
    keys = {id(t): t.key(plan.context) for t in plan.trials}
    kept = sum(keys[id(t)] in finished for t in plan.trials)
    total = len(plan.trials)
    progress(
        f"tuning {plan.model_label} for {plan.run.workload.describe()}: {total} trials, each a "
        f"fresh process"
        + (f"; {kept} already finished, kept from {plan.results.path}" if kept else "")
    )
    for note in plan.notes:
        progress(note)
    failures: list[str] = []
    started = time.perf_counter()
    for done, trial in enumerate(plan.trials, start=1):
        key = keys[id(trial)]
        what = f"{trial.config.label()} {trial.phase}"
        if key in finished:
            progress(f"{_bar(done, total)} {what}: kept ({finished[key]['job_s']:.1f} s job)")
            continue
        cold = None
        if trial.phase == "warm":
            cold = _cold_for(trial, plan, keys, finished, progress)
            if cold is None:
                failures.append(f"{what}: skipped, its cold trial failed")
                progress(f"{_bar(done, total)} {what}: skipped (its cold trial failed)")
                continue
        progress(f"{_bar(done - 1, total)} {what} ...")
        record = run_trial(trial, plan.run, key=key, cold=cold)
        plan.results.append(record)
        if record["ok"]:
            finished[key] = record
            progress(f"{_bar(done, total)} {what}: {_summary(record)}")
        else:
            failures.append(f"{what}: {_why(record['error'])}")
            progress(f"{_bar(done, total)} {what}: FAILED ({_why(record['error'])})")
    progress(f"trials done in {time.perf_counter() - started:.0f} s; kept in {plan.results.path}")
    records = [finished[keys[id(t)]] for t in plan.trials if keys[id(t)] in finished]
    return records, failures


def _cold_for(
    trial: Trial,
    plan: SweepPlan,
    keys: dict[int, str],
    finished: dict[str, dict[str, Any]],
    progress: Callable[[str], None],
) -> dict[str, Any] | None:
    """The cold record a warm trial starts from; its files gone (a cleared cache), the cold
    trial runs again first, so the warm one never measures a compile."""
    cold_trial = _cold_of(trial, plan.trials)
    cold_key = keys[id(cold_trial)]
    cold = finished.get(cold_key)
    if cold is not None and Path(cold["location"]).exists():
        return cold
    if cold is not None:
        progress(f"{trial.config.label()}: its cold trial's files are gone; running it again")
        record = run_trial(cold_trial, plan.run, key=cold_key, cold=None)
        plan.results.append(record)
        if record["ok"]:
            finished[cold_key] = record
            return record
    return None


def _summary(record: dict[str, Any]) -> str:
    parts = [f"{record['job_s']:.1f} s job"]
    if record.get("start_s") is not None:
        parts.append(f"start {record['start_s']:.1f} s")
    if record.get("tokens_per_s"):
        parts.append(f"{record['tokens_per_s']:.0f} tokens/s")
    if record.get("started") not in (None, record["trial"]["phase"]):
        parts.append(f"started {record['started']}")
    return ", ".join(parts)


def _why(error: str) -> str:
    """The worker's own error line when its log has one (aot eval's), else the first line."""
    lines = error.splitlines()
    found = [line.strip() for line in lines if line.strip().startswith("aot: error:")]
    return f"{lines[0]} {found[-1]}" if found else lines[0]
