"""What ``aot tune`` concludes from its trials: the table, parity against float32, the
break-even in jobs, the best configuration for the jobs the user expects, and advice where
compiling does not pay. Pure functions of the trial records (``TrialResults``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.tune.sweep import TrialConfig


def break_even(*, eager_s: float, cold_s: float, warm_s: float) -> int | None:
    """The fewest jobs for which compiling (one cold job, then warm ones) takes less time in
    all than running every job eagerly; None when a warm job is no faster than an eager one
    (compiling never pays)."""
    saving = eager_s - warm_s
    if saving <= 0:
        return None
    # cold + (n - 1) * warm < n * eager  <=>  n > (cold - warm) / (eager - warm)
    return max(1, math.floor((cold_s - warm_s) / saving) + 1)


def total_s(mode: str, jobs: int, *, eager_s: float, cold_s: float, warm_s: float) -> float:
    """Seconds ``jobs`` jobs take in ``mode``, starting with an empty compile cache."""
    if mode == "eager":
        return jobs * eager_s
    return cold_s + (jobs - 1) * warm_s


@dataclass(frozen=True, kw_only=True)
class Parity:
    """How a trial's outputs compare with its backend's float32 eager run."""

    exact: bool | None
    """True: identical; False: differs; None: nothing to compare with."""

    text: str
    """For the table."""


def token_parity(reference: Sequence[Sequence[int]], tokens: Sequence[Sequence[int]]) -> Parity:
    """Greedy token ids against the reference run's, sequence by sequence."""
    same = sum(list(a) == list(b) for a, b in zip(reference, tokens, strict=False))
    if same == len(reference) == len(tokens):
        return Parity(exact=True, text="identical")
    first = min(
        (_first_diff(a, b) for a, b in zip(reference, tokens, strict=False) if list(a) != list(b)),
        default=0,
    )
    return Parity(
        exact=False, text=f"{same}/{len(reference)} identical (first diff at token {first})"
    )


def _first_diff(a: Sequence[int], b: Sequence[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def eval_parity(reference: Path, output: Path) -> Parity:
    """Two ``aot eval --log-samples`` runs: decisions, generations, log-likelihoods."""
    from aot_core.evaluation.parity import compare_runs

    try:
        tasks = compare_runs(reference, output)
    except (OSError, ValueError, KeyError) as exc:
        return Parity(exact=None, text=f"not compared ({type(exc).__name__})")
    flipped = sum(t.flipped for t in tasks)
    decisions = sum(t.decisions for t in tasks)
    differing = sum(t.differing for t in tasks)
    generations = sum(t.generations for t in tasks)
    delta = max((t.max_abs_delta for t in tasks), default=0.0)
    parts = []
    if decisions:
        parts.append(f"{flipped}/{decisions} decisions flipped")
    if generations:
        parts.append(f"{differing}/{generations} generations differ")
    parts.append(f"max |dLL| {delta:.2g}")
    return Parity(exact=not flipped and not differing and delta <= 1e-3, text=", ".join(parts))


def config_of(record: Mapping[str, Any]) -> TrialConfig:
    """The configuration a record was measured in."""
    trial = {k: v for k, v in record["trial"].items() if k != "phase"}
    return TrialConfig(**trial)


def parities(records: Sequence[Mapping[str, Any]]) -> dict[str, Parity]:
    """Each record's parity against its backend's float32 run (eager preferred)."""
    out: dict[str, Parity] = {}
    for record in records:
        config = config_of(record)
        ref = _reference(records, config.backend)
        if ref is None:
            out[record["key"]] = Parity(exact=None, text="no float32 run to compare with")
        elif ref["key"] == record["key"]:
            out[record["key"]] = Parity(exact=True, text="reference (float32)")
        elif "tokens" in record:
            out[record["key"]] = token_parity(ref["tokens"], record["tokens"])
        else:
            out[record["key"]] = eval_parity(Path(ref["output"]), Path(record["output"]))
    return out


def _reference(records: Sequence[Mapping[str, Any]], backend: str) -> Mapping[str, Any] | None:
    ours = [
        r for r in records if config_of(r).backend == backend and r["trial"]["dtype"] == "float32"
    ]
    eager = [r for r in ours if r["trial"]["phase"] == "eager"]
    found = eager or ours
    return found[0] if found else None


@dataclass(frozen=True, kw_only=True)
class Setup:
    """One setup (backend, dtype, batch, budget) with its eager and compiled jobs."""

    config: TrialConfig
    """The setup (its mode is that of its first trial)."""

    job_s: Mapping[str, float]
    """Job seconds by phase: "eager", "cold", "warm" (those that ran)."""

    parity: Parity
    """The worst parity among its trials."""

    def total(self, mode: str, jobs: int) -> float | None:
        """Seconds for ``jobs`` jobs in ``mode``, None when that mode was not measured."""
        need = ("eager",) if mode == "eager" else ("cold", "warm")
        if any(p not in self.job_s for p in need):
            return None
        return total_s(
            mode,
            jobs,
            eager_s=self.job_s.get("eager", 0.0),
            cold_s=self.job_s.get("cold", 0.0),
            warm_s=self.job_s.get("warm", 0.0),
        )

    @property
    def break_even(self) -> int | None:
        """``break_even`` of this setup; None when it never pays or was not measured."""
        if not {"eager", "cold", "warm"} <= set(self.job_s):
            return None
        return break_even(
            eager_s=self.job_s["eager"], cold_s=self.job_s["cold"], warm_s=self.job_s["warm"]
        )


def setups(records: Sequence[Mapping[str, Any]], parity: Mapping[str, Parity]) -> list[Setup]:
    """The records grouped by setup, in the order they first appear."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(config_of(record).setup(), []).append(record)
    out = []
    for group in groups.values():
        marks = [parity[r["key"]] for r in group]
        worst = next((p for p in marks if p.exact is False), None) or next(
            (p for p in marks if p.exact is None), marks[0]
        )
        out.append(
            Setup(
                config=config_of(group[0]),
                job_s={r["trial"]["phase"]: float(r["job_s"]) for r in group},
                parity=worst,
            )
        )
    return out


@dataclass(frozen=True, kw_only=True)
class Choice:
    """The configuration that runs the expected jobs fastest, with parity kept."""

    config: TrialConfig
    """Setup and mode."""

    total_s: float
    """Seconds for the expected jobs, from an empty compile cache."""


def eligible(setup: Setup) -> bool:
    """Whether ``setup`` may be recommended: float32, or outputs identical to float32's."""
    return setup.config.dtype == "float32" or setup.parity.exact is True


def choose(all_setups: Sequence[Setup], jobs: int) -> tuple[Choice | None, list[str]]:
    """The fastest eligible configuration for ``jobs`` jobs, and notes on faster ones left
    out: a dtype other than float32 is eligible only where its outputs equal float32's."""
    best: Choice | None = None
    notes: list[str] = []
    left_out: list[Choice] = []
    for setup in all_setups:
        for mode in ("eager", "compiled"):
            total = setup.total(mode, jobs)
            if total is None:
                continue
            config = TrialConfig(**{**setup.config.__dict__, "mode": mode})
            choice = Choice(config=config, total_s=total)
            if not eligible(setup):
                left_out.append(choice)
            elif best is None or total < best.total_s:
                best = choice
    for choice in left_out:
        if best is None or choice.total_s < best.total_s:
            notes.append(
                f"{choice.config.label()} {choice.config.mode} would take "
                f"{choice.total_s:.0f} s but its outputs differ from float32 (see parity); "
                f'not chosen: set dtype = "{choice.config.dtype}" yourself if that is acceptable'
            )
    return best, notes


def advice(all_setups: Sequence[Setup], jobs: int) -> list[str]:
    """Per setup with eager and compiled measured: whether compiling pays for ``jobs`` jobs."""
    lines = []
    for s in all_setups:
        if not {"eager", "cold", "warm"} <= set(s.job_s):
            continue
        eager, cold, warm = s.job_s["eager"], s.job_s["cold"], s.job_s["warm"]
        n = s.break_even
        label = s.config.label()
        if n is None:
            lines.append(
                f"{label}: compiling does not pay: a warm compiled job ({warm:.1f} s) is no "
                f"faster than an eager one ({eager:.1f} s); run it eager (--eager, "
                'compile_mode = "none")'
            )
        elif n > jobs:
            lines.append(
                f"{label}: compiling pays only from job {n} (the first job costs "
                f"{cold - eager:+.1f} s, each later one saves {eager - warm:.1f} s); for the "
                f"{jobs} job(s) you expect, run it eager"
            )
        else:
            lines.append(
                f"{label}: compiling pays from job {n} (first job {cold - eager:+.1f} s, then "
                f"{eager - warm:.1f} s saved per job)"
            )
    return lines


def table_rows(
    records: Sequence[Mapping[str, Any]],
    parity: Mapping[str, Parity],
    fmt_bytes: Callable[[float], str],
) -> list[tuple[str, ...]]:
    """One row per trial: configuration, phase, start, job, tokens/s, memory, parity."""
    rows: list[tuple[str, ...]] = []
    for r in records:
        tps = r.get("tokens_per_s")
        mem = r.get("peak_memory_bytes")
        phase = r["trial"]["phase"]
        if r.get("started") not in (None, phase):
            phase += f" (started {r['started']})"
        rows.append(
            (
                r["label"],
                phase,
                f"{r['start_s']:.1f} s" if r.get("start_s") is not None else "-",
                f"{r['job_s']:.1f} s",
                f"{tps:.0f}" if tps else "-",
                fmt_bytes(mem) if mem else "-",
                parity[r["key"]].text,
            )
        )
    return rows


TABLE_HEADER = ("configuration", "trial", "start", "job", "tokens/s", "memory", "parity")
"""The columns of ``table_rows``."""
