"""``aot usage``'s arithmetic: per model, backend, spec and workload, the jobs, the time they
took, and the time compiling saved or lost against eager.

Measured: when the log holds eager jobs of the same model, backend, configuration (the spec
without its compile mode: ``config_fingerprint``) and workload, their median job time is the
baseline, and each compiled job saved ``baseline - its job time`` (negative: lost).

Estimated, when there is no such eager job: each compiled job is taken to have lost the
seconds it spent compiling or loading compiled code, and the compiled engine's speed-up is
not counted (nothing measured it). That is a lower bound on what compiling saved: a real
eager job of the workload (``aot eval --eager``, or ``aot bench``) replaces it with a
measurement.
"""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.usage.records import UsageRecord

ESTIMATE_NOTE = (
    "estimated: no eager job of this model, spec and workload in the log, so each compiled "
    "job counts its compile/load time as lost and any speed-up of the compiled engine is not "
    "counted (a lower bound on the saving); one eager job of the same workload "
    "(`aot eval --eager`, or `aot bench`) makes it measured"
)


@dataclass(frozen=True, kw_only=True)
class GroupUsage:
    """The jobs of one model, backend, configuration and workload, and what compiling did."""

    model: str
    """The model as the newest job named it."""

    model_path: str
    """Its directory."""

    backend: str
    """The backend."""

    config: str
    """The configuration's fingerprint (spec without compile mode), 12 hex digits."""

    dtype: str
    """The dtype the jobs ran in."""

    workload: str
    """What the jobs ran."""

    jobs: Mapping[str, int]
    """Jobs per start kind: eager, cold, warm."""

    time_spent_s: float
    """Seconds all these jobs took."""

    eager_baseline_s: float | None
    """Median eager job time (measured), or of compiled jobs less their compile/load time
    (estimated)."""

    saved_s: float | None
    """Seconds compiling saved over the compiled jobs (negative: lost); None when none."""

    basis: str
    """"measured", "estimated", or "eager only" (nothing compiled)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {
            "model": self.model,
            "model_path": self.model_path,
            "backend": self.backend,
            "config": self.config,
            "dtype": self.dtype,
            "workload": self.workload,
            "jobs": dict(self.jobs),
            "time_spent_s": round(self.time_spent_s, 3),
            "eager_baseline_s": _round(self.eager_baseline_s),
            "saved_s": _round(self.saved_s),
            "basis": self.basis,
            "suggestion": suggestion(self),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def parse_records(raw: Iterable[Mapping[str, Any]]) -> tuple[list[UsageRecord], int]:
    """The log's objects that are valid records, and how many were not (counted corrupt)."""
    records, bad = [], 0
    for item in raw:
        try:
            records.append(UsageRecord.from_dict(item))
        except (ValueError, TypeError):
            bad += 1
    return records, bad


def matches(record: UsageRecord, model: str) -> bool:
    """Whether ``--model MODEL`` names the record's model: as named, its directory, the
    directory's name, or a path that resolves to it."""
    if model in (record.model, record.model_path, Path(record.model_path).name):
        return True
    try:
        return Path(model).expanduser().resolve() == Path(record.model_path).resolve()
    except (OSError, RuntimeError):
        return False


def _key(r: UsageRecord) -> tuple[str, ...]:
    return (r.model_path, r.backend, r.config_fingerprint, r.workload_id)


def group_usage(records: Sequence[UsageRecord]) -> list[GroupUsage]:
    """One ``GroupUsage`` per model, backend, configuration and workload, in first-seen order."""
    groups: dict[tuple[str, ...], list[UsageRecord]] = {}
    for r in records:
        groups.setdefault(_key(r), []).append(r)
    return [summarise(rs) for rs in groups.values()]


def summarise(records: Sequence[UsageRecord]) -> GroupUsage:
    """What one group's jobs cost and what compiling saved (see the module docstring)."""
    last = records[-1]
    eager = [r.job_s for r in records if r.start == "eager"]
    compiled = [r for r in records if r.start != "eager"]
    baseline = statistics.median(eager) if eager else None
    saved: float | None = None
    if not compiled:
        basis = "eager only"
    elif baseline is not None:
        basis = "measured"
        saved = sum(baseline - r.job_s for r in compiled)
    else:
        basis = "estimated"
        lost = [r.compile_s or 0.0 for r in compiled]
        baseline = statistics.median(r.job_s - c for r, c in zip(compiled, lost, strict=True))
        saved = -sum(lost)
    return GroupUsage(
        model=last.model,
        model_path=last.model_path,
        backend=last.backend,
        config=last.config_fingerprint[:12],
        dtype=last.dtype,
        workload=last.workload,
        jobs={k: sum(r.start == k for r in records) for k in ("eager", "cold", "warm")},
        time_spent_s=sum(r.job_s for r in records),
        eager_baseline_s=baseline,
        saved_s=saved,
        basis=basis,
    )


def suggestion(group: GroupUsage) -> str:
    """What to do where compiling loses; empty where it pays or nothing was compiled."""
    if group.saved_s is None or group.saved_s >= 0:
        return ""
    target = group.model if group.model.split() == [group.model] else group.model_path
    tune = f"`aot tune {shlex.quote(target)}` measures which configuration pays for this workload"
    if group.basis == "measured":
        return f"compiling lost {-group.saved_s:.1f} s against eager here: {tune}"
    return (
        f"compiling cost {-group.saved_s:.1f} s of compile/load time here (estimated; run one "
        f"eager job of this workload to measure): {tune}"
    )


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _saved_cell(g: GroupUsage) -> str:
    if g.saved_s is None:
        return "-"
    text = f"{g.saved_s:+.1f} s"
    return text + (" (est.)" if g.basis == "estimated" else "")


def format_report(
    groups: Sequence[GroupUsage], *, path: Path, jobs: int, corrupt: int, recording: bool
) -> str:
    """The table, the suggestions and the notes, for people."""
    from aot_core.stats import format_table

    head = f"usage log: {path} ({jobs} job(s)"
    head += f"; {corrupt} corrupt line(s) skipped)" if corrupt else ")"
    lines = [head]
    if not recording:
        lines.append("recording is off ($AOT_USAGE_LOG=0): new jobs are not added")
    rows = [
        (
            g.model,
            g.backend,
            f"{g.config} {g.dtype}",
            g.workload,
            "/".join(str(g.jobs[k]) for k in ("eager", "cold", "warm")),
            _fmt_s(g.time_spent_s),
            _fmt_s(g.eager_baseline_s) + (" (est.)" if g.basis == "estimated" else ""),
            _saved_cell(g),
        )
        for g in groups
    ]
    header = (
        "model",
        "backend",
        "spec dtype",
        "workload",
        "jobs e/c/w",
        "time spent",
        "eager job",
        "saved(+)/lost(-)",
    )
    lines.append(format_table(header, rows))
    tips = [
        f"- {g.model} ({g.backend}, spec {g.config}): {s}" for g in groups if (s := suggestion(g))
    ]
    if tips:
        lines += ["", *tips]
    if any(g.basis == "estimated" for g in groups):
        lines += ["", f"(est.) {ESTIMATE_NOTE}"]
    lines.append(
        "spec: the spec's fingerprint without its compile mode, so eager and compiled jobs of "
        "one configuration compare; jobs e/c/w: eager, compiled cold, compiled warm"
    )
    return "\n".join(lines)


def plot(groups: Sequence[GroupUsage], path: Path) -> None:
    """Per group, time spent and time saved or lost (hatched: estimated), as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{_tail(g.model, 32)}\n{g.backend} {g.config[:8]} {g.dtype}\n{_tail(g.workload, 32)}"
        for g in groups
    ]
    ys = list(range(len(groups)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.4 + 0.8 * len(groups)), sharey=True)
    axes[0].barh(ys, [g.time_spent_s for g in groups], color="tab:blue")
    axes[0].set_title("time spent in jobs (s)", fontsize=10)
    for y, g in zip(ys, groups, strict=True):
        value = g.saved_s or 0.0
        axes[1].barh(
            y,
            value,
            color="tab:green" if value >= 0 else "tab:red",
            hatch="//" if g.basis == "estimated" else None,
        )
    axes[1].axvline(0, color="black", linewidth=0.8)
    axes[1].set_title("saved (+) / lost (-) vs eager (s); hatched: estimated", fontsize=10)
    axes[0].set_yticks(ys, labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tail(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters from its end (a path's end names it best)."""
    return text if len(text) <= width else "..." + text[-(width - 3) :]
