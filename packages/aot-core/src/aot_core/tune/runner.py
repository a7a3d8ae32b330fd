"""One ``aot tune`` trial: a fresh process that runs the user's job once in one configuration.

- ``--prompts``: ``aot_core.bench.worker`` (what ``aot bench`` runs), one untimed and one
  timed generate call, no latency probes: the job is start plus generation.
- ``--tasks``: an ``aot eval`` job (``aot_core.tune.eval_worker``) with ``--log-samples``, so
  its samples can be compared with the float32 run's.

An eager trial gets a private directory; a cold trial compiles into a fresh one (so it pays
a first compile); the warm trial starts from the directory its cold trial wrote. Each
trial's record (``TrialResults``) says where, so a resumed sweep's warm trial finds it.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.bench.fresh_process import one_thread_env, run_fresh
from aot_core.spec import CompileSpec
from aot_core.tune.sweep import Trial


@dataclass(frozen=True, kw_only=True)
class Workload:
    """What one of the user's jobs does: generate on prompts, or run lm-eval tasks."""

    prompts: tuple[tuple[int, ...], ...] = ()
    """Token-id prompts generated on together (``--prompts``); empty for tasks."""

    new_tokens: int = 0
    """Tokens generated per prompt (``--new-tokens``)."""

    tasks: str | None = None
    """lm-eval task names, comma-separated (``--tasks``)."""

    include_path: str | None = None
    """Directory of the user's task YAMLs (``--include-path``)."""

    limit: str | None = None
    """Documents per task (``--limit``), as ``aot eval`` takes it."""

    @property
    def is_eval(self) -> bool:
        """Whether a job is an ``aot eval`` run."""
        return self.tasks is not None

    def identity(self) -> dict[str, Any]:
        """The workload as JSON, for results keys."""
        if self.is_eval:
            return {"tasks": self.tasks, "include_path": self.include_path, "limit": self.limit}
        return {"prompts": [list(p) for p in self.prompts], "new_tokens": self.new_tokens}

    def describe(self) -> str:
        """One line for the report."""
        if self.is_eval:
            limit = f", limit {self.limit}" if self.limit else ""
            return f"aot eval --tasks {self.tasks}{limit}"
        return f"{len(self.prompts)} prompts x {self.new_tokens} new tokens"


@dataclass(frozen=True, kw_only=True)
class TuneRun:
    """What every trial of one sweep shares."""

    model: Path
    """The model directory (a GGUF or real model's name already converted)."""

    base: CompileSpec
    """The user's spec with the workload's open fields resolved; knobs are applied to it."""

    workload: Workload
    """The job every trial runs."""

    work: Path
    """The sweep's directory: results, logs, and what trials compile."""

    cache_root: Path
    """aot's cache root, handed to the workers as ``$AOT_CACHE_DIR``."""

    timeout_s: float
    """Seconds before one trial is killed."""


def run_trial(
    trial: Trial, run: TuneRun, *, key: str, cold: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Run ``trial`` in a fresh process and return its record (ok or not).

    ``cold``: for a warm trial, its cold trial's record (where it compiled to).
    """
    spec = trial.config.spec(run.base)
    logs = run.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{key}.log"
    if trial.phase == "warm":
        if cold is None:
            raise ValueError("a warm trial needs its cold trial's record")
        place = Path(cold["location"])
    elif trial.phase == "cold":
        place = run.work / "compiled" / f"{key}-{uuid.uuid4().hex[:8]}"
    else:
        place = run.work / "eager" / key
    record: dict[str, Any] = {
        "key": key,
        "trial": trial.identity(),
        "label": trial.config.label(),
        "spec": spec.to_dict(),
        "location": str(place),
        "log": str(log),
    }
    if run.workload.is_eval:
        record |= _eval_trial(trial, run, spec=spec, store=place, key=key, log=log)
    else:
        record |= _prompts_trial(trial, run, spec=spec, artifact=place, log=log)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return record


def _prompts_trial(
    trial: Trial, run: TuneRun, *, spec: CompileSpec, artifact: Path, log: Path
) -> dict[str, Any]:
    from aot_core.bench.run import run_worker

    done = run_worker(
        backend=trial.config.backend,
        phase=trial.phase,
        model=run.model,
        artifact=artifact,
        spec=spec,
        prompts=run.workload.prompts,
        max_new_tokens=run.workload.new_tokens,
        timeout_s=run.timeout_s,
        log=log,
        cache_root=run.cache_root,
        measured_calls=1,
        latency=False,
    )
    if not done.ok or done.result is None:
        return {"ok": False, "error": done.error, "wall_s": done.wall_s}
    result = done.result
    stats = result["stats"]
    refused = any("artifact refused" in n for n in result.get("notes", []))
    return {
        "ok": True,
        "wall_s": done.wall_s,
        "start_s": result["timings"].get("start_s"),
        "job_s": done.wall_s,
        "tokens_per_s": stats.get("output_tokens_per_s"),
        "peak_memory_bytes": stats.get("peak_host_memory_bytes"),
        "started": "cold" if refused else trial.phase,
        "cache": (stats.get("cache") or {}).get("status"),
        "tokens": result["tokens"],
        "notes": result.get("notes", []),
    }


def _eval_trial(
    trial: Trial, run: TuneRun, *, spec: CompileSpec, store: Path, key: str, log: Path
) -> dict[str, Any]:
    workload = run.workload
    specs = run.work / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    spec_file = specs / f"{key}.json"
    spec_file.write_text(spec.to_json() + "\n", encoding="utf-8")
    output = run.work / "runs" / key
    argv = [sys.executable, "-m", "aot_core.tune.eval_worker", "--cache-dir", str(store)]
    argv += ["eval", str(run.model), "--tasks", str(workload.tasks)]
    argv += ["--backend", trial.config.backend, "--spec", str(spec_file)]
    argv += ["--log-samples", "--output", str(output)]
    if workload.include_path:
        argv += ["--include-path", workload.include_path]
    if workload.limit:
        argv += ["--limit", workload.limit]
    env = one_thread_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = run_fresh(argv, log=log, timeout_s=run.timeout_s, env=env)
    if not done.ok or done.result is None:
        return {"ok": False, "error": done.error, "wall_s": done.wall_s}
    aot = done.result["aot"]
    wall, requests, stats = aot["wall_s"], aot["requests"], aot["stats"]
    tokens = int(requests.get("generated_tokens", 0)) + int(requests.get("scored_tokens", 0))
    evaluate = float(wall["evaluate"])
    return {
        "ok": True,
        "wall_s": done.wall_s,
        "start_s": wall["to_model_ready"],
        "job_s": done.wall_s,
        "evaluate_s": evaluate,
        "tokens_per_s": tokens / evaluate if evaluate > 0 else None,
        "peak_memory_bytes": stats.get("peak_host_memory_bytes")
        or done.result.get("peak_rss_bytes"),
        "started": aot["start"]["path"],
        "cache": (stats.get("cache") or {}).get("status"),
        "output": str(output),
        "scores": done.result.get("scores", {}),
        "notes": list(aot.get("notes") or []),
    }
