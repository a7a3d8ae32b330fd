"""``aot eval --parity``: the same tasks eager and compiled, each in a fresh process, compared
sample by sample (log-likelihoods, multiple-choice decisions, greedy generations)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aot_core.evaluation.errors import EvalUsageError, ParityExceededError

RUNS = ("eager", "compiled")


@dataclass(kw_only=True)
class TaskParity:
    """How one task's eager and compiled runs differ."""

    task: str
    """lm-eval task name."""

    metrics: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """Metric name -> (eager value, compiled value)."""

    docs: int = 0
    """Documents compared."""

    loglikelihoods: int = 0
    """Log-likelihood results compared (one per request)."""

    max_abs_delta: float = 0.0
    """Largest |Δ log-likelihood| of one request."""

    sum_abs_delta: float = 0.0
    """Sum of |Δ log-likelihood| over requests (mean = sum / loglikelihoods)."""

    decisions: int = 0
    """Multiple-choice decisions (or greedy flags of single continuations) compared."""

    flipped: int = 0
    """Decisions that differ."""

    generations: int = 0
    """Generations compared."""

    differing: int = 0
    """Generations whose text differs."""

    first_difference: dict[str, Any] | None = None
    """The first differing generation: doc id and both texts."""

    @property
    def mean_abs_delta(self) -> float:
        """Mean |Δ log-likelihood| per request."""
        return self.sum_abs_delta / self.loglikelihoods if self.loglikelihoods else 0.0


def _read_samples(directory: Path, task: str) -> dict[Any, dict[str, Any]]:
    path = directory / f"samples_{task}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {row["doc_id"]: row for row in rows}


def compare_runs(eager_dir: Path, compiled_dir: Path) -> list[TaskParity]:
    """Compare the results and samples two ``aot eval --log-samples`` runs wrote."""
    eager = json.loads((eager_dir / "results.json").read_text(encoding="utf-8"))
    compiled = json.loads((compiled_dir / "results.json").read_text(encoding="utf-8"))
    out = []
    for task in sorted(eager["results"]):
        if not (eager_dir / f"samples_{task}.jsonl").is_file():
            continue  # a group: its tasks are compared one by one
        parity = TaskParity(task=task)
        for name, value in eager["results"][task].items():
            if "," in name and "_stderr" not in name:
                parity.metrics[name] = (value, compiled["results"].get(task, {}).get(name))
        a, b = _read_samples(eager_dir, task), _read_samples(compiled_dir, task)
        for doc_id in sorted(set(a) & set(b), key=str):
            parity.docs += 1
            _compare_doc(parity, doc_id, a[doc_id], b[doc_id])
        out.append(parity)
    return out


def _compare_doc(parity: TaskParity, doc_id: Any, a: dict[str, Any], b: dict[str, Any]) -> None:
    resps_a = [r[0] for r in a["resps"]]
    resps_b = [r[0] for r in b["resps"]]
    texts = [(x, y) for x, y in zip(resps_a, resps_b, strict=True) if isinstance(x, str)]
    for x, y in texts:
        parity.generations += 1
        if x != y:
            parity.differing += 1
            if parity.first_difference is None:
                parity.first_difference = {"doc_id": doc_id, "eager": x, "compiled": y}
    scores = [
        (_logprob(x), _logprob(y), x, y)
        for x, y in zip(resps_a, resps_b, strict=True)
        if not isinstance(x, str)
    ]
    for lp_a, lp_b, _, _ in scores:
        parity.loglikelihoods += 1
        delta = abs(lp_a - lp_b) if math.isfinite(lp_a) and math.isfinite(lp_b) else math.inf
        parity.max_abs_delta = max(parity.max_abs_delta, delta)
        parity.sum_abs_delta += delta
    if len(scores) > 1:  # multiple choice: the chosen answer is the most likely one
        parity.decisions += 1
        pick_a = max(range(len(scores)), key=lambda i: scores[i][0])
        pick_b = max(range(len(scores)), key=lambda i: scores[i][1])
        parity.flipped += pick_a != pick_b
    elif len(scores) == 1 and isinstance(scores[0][2], list):  # one continuation: is_greedy
        parity.decisions += 1
        parity.flipped += bool(scores[0][2][1]) != bool(scores[0][3][1])


def _logprob(resp: Any) -> float:
    return float(resp[0] if isinstance(resp, list) else resp)


def exceeded(report: list[TaskParity], tolerance: float) -> list[str]:
    """Why ``report`` fails ``tolerance`` (empty when it passes)."""
    problems = []
    for t in report:
        if t.max_abs_delta > tolerance:
            problems.append(f"{t.task}: |Δ log-likelihood| {t.max_abs_delta:.3g} > {tolerance:g}")
        if t.flipped:
            problems.append(f"{t.task}: {t.flipped} decision(s) flipped")
        if t.differing:
            problems.append(f"{t.task}: {t.differing} generation(s) differ")
    return problems


def format_report(report: list[TaskParity], header: list[str]) -> str:
    """The per-task parity report for people."""
    lines = ["parity: eager vs compiled, each in a fresh process", *header, ""]
    for t in report:
        lines.append(f"{t.task}: {t.docs} docs")
        for name, (a, b) in t.metrics.items():
            lines.append(f"  {name:<28} eager {_fmt(a):>14}   compiled {_fmt(b):>14}")
        if t.loglikelihoods:
            lines.append(
                f"  |Δ log-likelihood| per request: max {t.max_abs_delta:.3g}, mean "
                f"{t.mean_abs_delta:.3g} over {t.loglikelihoods} requests"
            )
        if t.decisions:
            lines.append(f"  decisions flipped: {t.flipped} of {t.decisions}")
        if t.generations:
            lines.append(f"  greedy generations differing: {t.differing} of {t.generations}")
        if t.first_difference is not None:
            d = t.first_difference
            lines.append(f"    first difference, doc {d['doc_id']}:")
            lines.append(f"      eager:    {d['eager']!r}")
            lines.append(f"      compiled: {d['compiled']!r}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _child_argv(
    args: argparse.Namespace, model: Path, passthrough: list[str], out: Path, *, eager: bool
) -> list[str]:
    argv = [sys.executable, "-m", "aot_core"]
    if args.cache_dir:
        argv += ["--cache-dir", args.cache_dir]
    argv += ["eval", str(model), "--tasks", args.tasks, "--log-samples", "--output", str(out)]
    for flag, value in (
        ("--include-path", args.include_path),
        ("--backend", args.backend),
        ("--spec", args.spec),
        ("--model-args", args.model_args),
        ("--limit", None if args.limit is None else repr(args.limit)),
    ):
        if value:
            argv += [flag, str(value)]
    # --eager before --lm-eval: everything after that goes to lm-eval, which refused it
    # (exit 2), so --parity with lm-eval options such as --apply_chat_template never ran.
    argv += ["--eager"] if eager else []
    return argv + (["--lm-eval", *passthrough] if passthrough else [])


def run_parity(
    args: argparse.Namespace, model: Path, passthrough: list[str], progress: Callable[[str], None]
) -> int:
    """Run both jobs, print the report, write ``parity.json``; raise when out of tolerance."""
    from aot_core.evaluation.job import check_inputs
    from aot_core.evaluation.lm_eval_args import lm_eval_argv

    if args.eager:
        raise EvalUsageError("--parity runs both eager and compiled; drop --eager")
    # Bad input is refused here, before either run. What only lm-eval's task index reveals
    # (seconds to build) the eager run refuses before its engine starts, with the same code.
    check_inputs(lm_eval_argv(args, passthrough))
    with tempfile.TemporaryDirectory(prefix="aot-parity-") as tmp:
        root = Path(args.output).expanduser() if args.output else Path(tmp)
        header = []
        for label in RUNS:
            out = root / label
            argv = _child_argv(args, model, passthrough, out, eager=label == "eager")
            progress(f"parity: {label} run in a fresh process")
            # The child's table goes to stderr: stdout carries only the report.
            proc = subprocess.run(argv, stdout=sys.stderr, timeout=args.timeout, check=False)
            if proc.returncode != 0:
                progress(f"parity: the {label} run failed (exit {proc.returncode}); see above")
                return proc.returncode
            aot = json.loads((out / "results.json").read_text(encoding="utf-8"))["aot"]
            stats = aot["stats"]
            dtype = stats.get("resolved_config", {}).get("dtype") or aot["spec"]["dtype"]
            header.append(
                f"  {label:<8} {stats['backend']} {stats.get('backend_version', '')}, "
                f"{stats.get('compile_mode')}, dtype {dtype}, "
                f"start {aot['start']['path']}, job {aot['wall_s']['total']:.1f} s"
            )
            notes = aot.get("notes") or []
        report = compare_runs(root / "eager", root / "compiled")
        print(format_report(report, header + [f"  note: {n}" for n in notes]))
        if args.output:
            (root / "parity.json").write_text(
                json.dumps(
                    [asdict(t) | {"mean_abs_delta": t.mean_abs_delta} for t in report], indent=2
                )
                + "\n",
                encoding="utf-8",
            )
            progress(f"wrote {root / 'parity.json'}")
    if args.parity_tolerance is not None:
        problems = exceeded(report, args.parity_tolerance)
        if problems:
            raise ParityExceededError("parity tolerance exceeded: " + "; ".join(problems))
    return 0
