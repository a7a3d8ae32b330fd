"""What the usage log holds per job (``UsageRecord``), built from an ``aot eval`` job's
results or an ``aot bench`` run, and the calls the two commands make to record them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aot_core.spec import CompileSpec

if TYPE_CHECKING:
    import argparse

    from aot_core.bench.results import BenchResult, Run

RECORD_FORMAT = 1
START_KINDS = ("eager", "cold", "warm")


@dataclass(frozen=True, kw_only=True)
class UsageRecord:
    """One job, as one line of the usage log."""

    command: str
    """"eval" or "bench"."""

    model: str
    """The model as the user named it (a real model's name, a path), for reports."""

    model_path: str
    """The model directory the job ran (a name's converted directory): the model's identity."""

    backend: str
    """The aot backend."""

    backend_version: str
    """Its engine's version."""

    spec_fingerprint: str
    """``CompileSpec.fingerprint()`` of the spec the job ran (compile mode included)."""

    config_fingerprint: str
    """The same spec's fingerprint without its compile mode (``config_fingerprint``), so an
    eager job and a compiled job of one configuration pair up."""

    start: str
    """"eager", "cold" (compiled and published) or "warm" (a verified artifact loaded)."""

    dtype: str
    """The dtype the job ran in."""

    workload: str
    """What the job ran, for people: its tasks and limit, or the bench's prompts."""

    workload_id: str
    """A digest of the workload: jobs compare against eager only on the same one."""

    start_s: float | None
    """Seconds until the model was ready (eval: from the command's start; bench: the
    engine's start)."""

    job_s: float
    """Seconds the whole job took (eval: the command; bench: the run's process)."""

    compile_s: float | None
    """Seconds spent compiling or loading compiled code (None: none, or not reported)."""

    tokens_generated: int
    """Tokens generated (bench: those of its timed calls)."""

    tokens_scored: int
    """Tokens scored by log-likelihood requests (eval only)."""

    timestamp: str
    """When the record was written, UTC ISO 8601."""

    aot_version: str
    """aot-core's version."""

    format: int = RECORD_FORMAT
    """Version of the record's shape."""

    def to_dict(self) -> dict[str, Any]:
        """The log line's JSON object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageRecord:
        """A record from a log line; ``ValueError`` when a field is missing or of the wrong
        type (the reader counts that line as corrupt). Unknown keys are ignored."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.name == "format":
                    continue
                raise ValueError(f"missing field {f.name!r}")
            values[f.name] = _checked(f.name, data[f.name])
        record = cls(**values)
        if record.start not in START_KINDS:
            raise ValueError(f"start {record.start!r} is not one of {START_KINDS}")
        if record.job_s < 0:
            raise ValueError("job_s is negative")
        return record


_NUMBERS = {"start_s", "job_s", "compile_s"}
_INTS = {"tokens_generated", "tokens_scored", "format"}
_OPTIONAL = {"start_s", "compile_s"}


def _checked(name: str, value: Any) -> Any:
    if value is None and name in _OPTIONAL:
        return None
    if name in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} is not a number")
        return float(value)
    if name in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} is not an integer")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


def config_fingerprint(spec: CompileSpec) -> str:
    """A digest of ``spec`` without its compile mode and cache directory: what an eager job
    and a compiled job of the same configuration share."""
    data = spec.to_dict()
    data.pop("compile_mode", None)
    data["cache_dir"] = None
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _aot_version() -> str:
    from aot_core.artifacts import package_version

    return package_version("aot-core") or "unknown"


# --------------------------------------------------------------------------- aot eval


def eval_workload(args: argparse.Namespace, passthrough: Sequence[str]) -> tuple[str, str]:
    """(description, digest) of an ``aot eval`` job's workload: its tasks, their directory,
    the limit and lm-eval's own options (where results go is left out)."""
    include = str(Path(args.include_path).expanduser().absolute()) if args.include_path else ""
    what = {"tasks": args.tasks, "include": include, "limit": args.limit, "lm_eval": passthrough}
    text = f"eval {args.tasks}" + (f", limit {args.limit}" if args.limit is not None else "")
    if passthrough:
        text += ", " + " ".join(passthrough)
    return (text if len(text) <= 80 else text[:77] + "..."), _digest(what)


def eval_record(
    aot: Mapping[str, Any], args: argparse.Namespace, passthrough: Sequence[str]
) -> UsageRecord:
    """The record of one finished ``aot eval`` job, from its results' ``aot`` section."""
    stats, start, requests = aot["stats"], aot["start"], aot["requests"]
    resolved = {k: v.get("value") for k, v in (start.get("resolved") or {}).items()}
    spec = CompileSpec.from_dict(aot["spec"])
    opened = {k: v for k, v in resolved.items() if k != "dtype" and v is not None}
    spec = spec.replace(**{k: v for k, v in opened.items() if getattr(spec, k) is None})
    dtype = str(resolved.get("dtype") or spec.dtype)
    workload, workload_id = eval_workload(args, passthrough)
    return UsageRecord(
        command="eval",
        model=str(args.model),
        model_path=str(Path(aot["model"]).absolute()),
        backend=str(stats["backend"]),
        backend_version=str(stats.get("backend_version") or ""),
        spec_fingerprint=spec.fingerprint(),
        config_fingerprint=config_fingerprint(spec.replace(dtype=dtype)),
        start=str(start["path"]),
        dtype=dtype,
        workload=workload,
        workload_id=workload_id,
        start_s=aot["wall_s"].get("to_model_ready"),
        job_s=float(aot["wall_s"]["total"]),
        compile_s=None if start["path"] == "eager" else stats.get("compile_time_s"),
        tokens_generated=int(requests.get("generated_tokens") or 0),
        tokens_scored=int(requests.get("scored_tokens") or 0),
        timestamp=_now(),
        aot_version=_aot_version(),
    )


def record_eval(
    aot: Mapping[str, Any],
    args: argparse.Namespace,
    passthrough: Sequence[str],
    warn: Callable[[str], None],
) -> None:
    """Append the job's record to the usage log; never fails the job (``record_job``)."""
    from aot_core.artifacts import ArtifactStore
    from aot_core.usage.log import record_job

    record_job(
        lambda: [eval_record(aot, args, passthrough).to_dict()],
        cache_root=lambda: ArtifactStore(args.cache_dir).root,
        warn=warn,
    )


# --------------------------------------------------------------------------- aot bench


def bench_records(result: BenchResult, *, model: str | None) -> list[UsageRecord]:
    """One record per successful run of an ``aot bench`` (each is a fresh-process job)."""
    from aot_core.bench.run import MEASURED_CALLS

    s = result.settings
    spec = CompileSpec.from_dict(s["spec"])
    what = {k: s.get(k) for k in ("prompt_lengths", "max_new_tokens", "workload")}
    workload = (
        f"bench {s['prompts']} prompts ({s.get('workload') or 'short'}), "
        f"{s['max_new_tokens']} new tokens"
    )
    records = []
    for name, summary in result.backends.items():
        for run in summary.runs:
            if run.ok and run.result is not None and run.wall_s is not None:
                records.append(
                    _bench_record(
                        run,
                        backend=name,
                        version=summary.version,
                        spec=spec,
                        model=model or result.model,
                        model_path=result.model_path,
                        workload=(workload, _digest(what)),
                        calls=MEASURED_CALLS + 1,
                    )
                )
    return records


def _bench_record(
    run: Run,
    *,
    backend: str,
    version: str,
    spec: CompileSpec,
    model: str,
    model_path: str,
    workload: tuple[str, str],
    calls: int,
) -> UsageRecord:
    assert run.result is not None and run.wall_s is not None
    stats = run.result["stats"]
    mode = "none" if run.phase == "eager" else (spec.compile_mode if spec.compiles else "default")
    try:
        fingerprint = spec.replace(compile_mode=mode).fingerprint()
    except ValueError:  # a field that needs compilation (compile_sizes) beside "none"
        fingerprint = ""
    return UsageRecord(
        command="bench",
        model=model,
        model_path=str(Path(model_path).absolute()),
        backend=backend,
        backend_version=str(stats.get("backend_version") or version),
        spec_fingerprint=fingerprint,
        config_fingerprint=config_fingerprint(spec),
        start=run.phase,
        dtype=spec.dtype,
        workload=workload[0],
        workload_id=workload[1],
        start_s=stats.get("startup_s"),
        job_s=float(run.wall_s),
        compile_s=None if run.phase == "eager" else stats.get("compile_time_s"),
        tokens_generated=calls * sum(len(t) for t in run.result.get("tokens") or []),
        tokens_scored=0,
        timestamp=_now(),
        aot_version=_aot_version(),
    )


def record_bench(
    result: BenchResult, *, model: str | None, cache_root: Path, warn: Callable[[str], None]
) -> None:
    """Append the bench's runs to the usage log; never fails the bench (``record_job``)."""
    from aot_core.usage.log import record_job

    record_job(
        lambda: [r.to_dict() for r in bench_records(result, model=model)],
        cache_root=lambda: cache_root,
        warn=warn,
    )
