"""What ``aot tune`` prints and writes once its trials are done: the table, the break-even
per setup, the advice, the best configuration and its spec file."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aot_core.cli.command import CLIError, ExitCode
from aot_core.spec import CompileSpec
from aot_core.tune import report
from aot_core.tune.plan import SweepPlan

OUT_HEADER = "# aot tune:"
"""How the spec files ``aot tune`` writes begin; only such a file is replaced."""


def report_and_write(
    plan: SweepPlan, records: Sequence[Mapping[str, Any]], *, out: Path | None, jobs: int
) -> report.Choice | None:
    """Print the report on stdout; write the best spec to ``out`` (when given and found)."""
    from aot_core.artifacts import format_bytes
    from aot_core.stats import format_table

    parity = report.parities(records)
    setups = report.setups(records, parity)
    lines = [
        f"aot tune: {plan.model_label}, {plan.run.workload.describe()}, {jobs} job(s) expected",
        "",
        format_table(report.TABLE_HEADER, report.table_rows(records, parity, format_bytes)),
        "",
        "start: until the model is ready (engine import, load or compile; --tasks: from "
        "aot eval's start); job: the whole fresh process, launch to exit; parity: against "
        "the backend's float32 eager run",
    ]
    lines += ["", *_setup_lines(setups, jobs)]
    lines += report.advice(setups, jobs)
    best, notes = report.choose(setups, jobs)
    lines += notes
    spec = None
    if best is None:
        lines.append("no configuration finished both ways: nothing to recommend")
    else:
        spec = best.config.spec(plan.run.base)
        lines += _best_lines(best, setups, jobs)
    print("\n".join(lines))
    sys.stdout.flush()
    if spec is not None and best is not None:
        text = _spec_text(spec, best, plan, jobs)
        if out is None:
            print(f"\nbest spec (--out FILE writes it):\n{text}", end="")
        else:
            _write(out, text)
            print(f"\nwrote {out}: aot eval MODEL --backend {best.config.backend} --spec {out}")
    return best


def _setup_lines(setups: Sequence[report.Setup], jobs: int) -> list[str]:
    lines = [f"per setup, {jobs} job(s) from an empty compile cache:"]
    for s in setups:
        parts = []
        for mode in ("eager", "compiled"):
            total = s.total(mode, jobs)
            if total is not None:
                parts.append(f"{mode} {total:.0f} s")
        n = s.break_even
        if {"eager", "cold", "warm"} <= set(s.job_s):
            parts.append(f"break-even {n} job(s)" if n is not None else "compiling never pays")
        lines.append(f"  {s.config.label()}: {', '.join(parts) or 'not measured'}")
    return lines


def _best_lines(best: report.Choice, setups: Sequence[report.Setup], jobs: int) -> list[str]:
    lines = [
        f"best for {jobs} job(s): {best.config.label()} {best.config.mode}, "
        f"{best.total_s:.0f} s in all"
    ]
    others: dict[str, float] = {}
    for s in setups:
        if s.config.backend == best.config.backend or not report.eligible(s):
            continue  # a faster dtype whose outputs differ was named already
        for mode in ("eager", "compiled"):
            total = s.total(mode, jobs)
            if total is not None:
                others[s.config.backend] = min(total, others.get(s.config.backend, total))
    for backend, total in others.items():
        lines.append(
            f"  the {backend} backend's best takes {total:.0f} s "
            f"({total / best.total_s:.1f}x): use --backend {best.config.backend}"
        )
    return lines


def _spec_text(spec: CompileSpec, best: report.Choice, plan: SweepPlan, jobs: int) -> str:
    header = [
        f"{OUT_HEADER} the best of {len(plan.trials)} trials for {plan.model_label}, "
        f"{plan.run.workload.describe()}, {jobs} job(s), on this machine",
        f"# backend: {best.config.backend}; use it with: aot eval|bench|compile MODEL "
        f"--backend {best.config.backend} --spec THIS_FILE",
    ]
    text = "\n".join(header) + "\n" + spec.to_toml()
    if CompileSpec.from_toml(text) != spec:  # what the user loads is what was measured
        raise AssertionError("the best spec does not read back as written")
    return text


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CLIError(
            ExitCode.CACHE_NOT_WRITABLE, f"cannot write {path}: {exc.strerror or exc}"
        ) from exc
