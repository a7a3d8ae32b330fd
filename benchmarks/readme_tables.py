"""Render the README's measured tables from the archived run JSON, so no figure can drift.

Every measured table in README.md sits between two markers::

    <!-- table NAME: rendered by benchmarks/readme_tables.py; edit the data, not the table -->
    ...
    <!-- end table NAME -->

and is produced here from a run directory under ``archive/migration_records/runs/``: the
run's own JSON plus its ``provenance.json`` (command, commit, date, machine, CPU flags,
versions, conditions), which every table's caption names.

    python benchmarks/readme_tables.py --check   # exit 1 if README.md differs (CI: lint)
    python benchmarks/readme_tables.py --write   # re-render README.md in place

Standard library only: it runs in the lint session, beside ruff.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "archive" / "migration_records" / "runs"
README = ROOT / "README.md"
# The flags every published figure names (the fleet has AVX2-only and AVX-512/AMX CPUs).
NAMED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@dataclass(frozen=True, kw_only=True)
class Table:
    """One README table and where its numbers come from."""

    run: str
    """The run directory's name under ``archive/migration_records/runs``."""

    render: Callable[[Path], list[str]]
    """Markdown lines of the table itself, from the run directory."""


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _s(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f} s"


def _rate(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _gib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f} GiB"


def _ratio(after: float | None, before: float | None) -> str:
    return "–" if not (after and before) else f"{after / before:.2f}×"


def caption(run_dir: Path) -> str:
    """The line above a table: command, commit, date, machine, CPU flags, versions."""
    p = _load(run_dir / "provenance.json")
    flags = set(p["cpu_flags"])
    has = [f for f in NAMED_FLAGS if f in flags]
    lacks = [f for f in NAMED_FLAGS if f not in flags]
    flag_text = ", ".join(has) or "none of " + ", ".join(NAMED_FLAGS)
    if has and lacks:
        flag_text += f" (no {', '.join(lacks)})"
    versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
    rel = f"{RUNS.relative_to(ROOT).as_posix()}/{run_dir.name}"
    return (
        f"*Measured {p['date_utc']} at commit {p['commit']} on {p['machine']}; CPU flags: "
        f"{flag_text}; {versions}. Command: `{p['command']}`. {p['conditions']}. "
        f"Data: [{rel}]({rel}).*"
    )


def scaling_rows(run_dir: Path) -> list[dict[str, Any]]:
    return list(_load(run_dir / "scaling.json")["rows"])


def _scaling(run_dir: Path) -> list[str]:
    out = [
        "| model | backend | cold start | warm start | eager start | compile cold → warm "
        "| output tok/s eager → compiled | peak memory | tokens = eager |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in scaling_rows(run_dir):
        out.append(
            f"| {r['shape']} | {r['backend']} | {_s(r['cold_start_s'])} "
            f"| {_s(r['warm_start_s'])} | {_s(r['eager_start_s'])} "
            f"| {_s(r['compile_cold_s'])} → {_s(r['compile_warm_s'], 2)} "
            f"| {_rate(r['eager_tok_s'])} → {_rate(r['compiled_tok_s'])} "
            f"({_ratio(r['compiled_tok_s'], r['eager_tok_s'])}) "
            f"| {_gib(r['peak_memory_bytes'])} | {'yes' if r['tokens_match_eager'] else 'NO'} |"
        )
    return out


def _median(summary: dict[str, Any], phase: str, field: str) -> Any:
    return (summary["median"].get(phase) or {}).get(field)


def _bench_row(label: str, backend: str, summary: dict[str, Any]) -> str:
    walls = summary.get("median_process_wall_s") or {}

    def start(phase: str) -> str:
        wall = walls.get(phase)
        inner = _s(_median(summary, phase, "startup_s"), 2)
        return inner if wall is None else f"{inner} ({wall:.1f} s)"

    eager_tok = _median(summary, "eager", "output_tokens_per_s")
    warm_tok = _median(summary, "warm", "output_tokens_per_s")
    hits = summary.get("warm_cache") or []
    verified = bool(hits) and all(str(h).startswith("hit") for h in hits)
    return (
        f"| {label} | {backend} | {start('eager')} | {start('cold')} | {start('warm')} "
        f"| {_s(_median(summary, 'cold', 'compile_time_s'))} → "
        f"{_s(_median(summary, 'warm', 'compile_time_s'), 2)} "
        f"| {_rate(eager_tok)} → {_rate(warm_tok)} ({_ratio(warm_tok, eager_tok)}) "
        f"| {'yes' if summary.get('tokens_match_eager') else 'NO'} "
        f"| {'yes' if verified else 'NO'} |"
    )


_BENCH_HEADER = [
    "| model | backend | eager start | cold start | warm start | compile cold → warm "
    "| output tok/s eager → warm | tokens = eager | warm start a verified hit |",
    "|---|---|---|---|---|---|---|---|---|",
]


def _aot_bench(run_dir: Path) -> list[str]:
    data = _load(run_dir / "bench.json")
    rows = [_bench_row("tiny", b, s) for b, s in sorted(data["backends"].items())]
    return [*_BENCH_HEADER, *rows]


# `nox -s bench`: one `aot bench` JSON per model, named as BENCH_RUNS in noxfile.py names them.
_MAIN_JOB_MODELS = (("tiny", "tiny"), ("smollm2-135m-instruct", "SmolLM2-135M-Instruct"))


def _main_job(run_dir: Path) -> list[str]:
    rows = []
    for name, label in _MAIN_JOB_MODELS:
        data = _load(run_dir / f"{name}.json")
        rows += [_bench_row(label, b, s) for b, s in sorted(data["backends"].items())]
    return [*_BENCH_HEADER, *rows]


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "–"


def _real_answers(run_dir: Path) -> list[str]:
    """The real model's answers eager beside compiled, and how long the model took to be
    ready (GGUF to verified cache entry, first and reused)."""
    data = _load(run_dir / "smollm2-135m-instruct.json")
    ready = data["settings"].get("model_ready") or {}
    out = [
        "| backend | question | eager | compiled | same tokens |",
        "|---|---|---|---|---|",
    ]
    for g in data["generations"]:
        out.append(
            f"| {g['backend']} | {_cell(g['prompt'])} | {_cell(g['eager'])} "
            f"| {_cell(g['compiled'])} | {'yes' if g['identical'] else 'NO'} |"
        )
    how = "converted" if ready.get("converted") else "reused"
    out += [
        "",
        "| model ready from its GGUF file | first time | reused (every later start) |",
        "|---|---|---|",
        f"| {ready.get('source', '–')} | {_s(ready.get('first_s'), 2)} ({how}) "
        f"| {_s(ready.get('reused_s'), 2)} |",
    ]
    return out


def _vllm_aot_cpu(run_dir: Path) -> list[str]:
    rows = []
    for shape in ("tiny", "smollm2-135m"):
        data = _load(run_dir / f"{shape}-aot.json")
        rows.append(_bench_row(shape, "vllm, compile_cache aot", data["backends"]["vllm"]))
    return [*_BENCH_HEADER, *rows]


def _eval_jobs(run_dir: Path) -> list[str]:
    """benchmarks/eval_jobs.py: each way's median job wall, model ready and evaluation, then
    the goal ratios of the same run."""
    data = _load(run_dir / "eval_jobs.json")
    out = [
        "| way | start | jobs | job wall | model ready | evaluation |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["summary"].values():
        out.append(
            f"| {row['way']} | {row['kind']} | {row['jobs']} | {_s(row['wall_s'])} "
            f"| {_s(row['model_ready_s'])} | {_s(row['evaluation_s'])} |"
        )
    out += _goal_rows(
        (r["name"] + (f" ({r['detail']})" if r["detail"] else ""), r["value"], r["goal"])
        for r in data["ratios"]
    )
    if data.get("dtype", "float32") != "float32":
        return [*out, "", *_parity_rows(data)]
    same = "yes" if data["scores_agree"] else "**NO**"
    rule = "log-likelihoods within 1e-3, same generations"
    out += ["", f"Scores agree across every way and job ({rule}): {same}."]
    return out


def _parity_rows(data: dict[str, Any]) -> list[str]:
    """A bfloat16 run's parity, each job against the first (measured, not required)."""
    records = [r for r in data["records"] if "parity" in r]
    first = next(r for r in data["records"] if "error" not in r)
    out = [
        f"Parity in {data['dtype']}, each job against {first['way']} job {first['job']}:",
        "",
        "| way | job | decisions that differ | generations that differ | largest Δ log-lik |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        p = r["parity"]
        out.append(
            f"| {r['way']} | {r['job']} | {p['decisions_differ']} of {p['decisions']} "
            f"| {p['generations_differ']} of {p['generations']} "
            f"| {p['max_abs_loglik_diff']:.2g} |"
        )
    return out


def _goal_rows(goals: Iterable[tuple[str, float, float]]) -> list[str]:
    """A blank line, then the goal table: each (name, measured ratio, goal), met or not."""
    out = ["", "| goal (same run, side by side) | measured | goal | met |", "|---|---|---|---|"]
    for name, value, goal in goals:
        met = "yes" if value <= goal else "**no**"
        out.append(f"| {name} | {value:.2f}× | ≤ {goal:.2f}× | {met} |")
    return out


def _serve_ready(run_dir: Path) -> list[str]:
    """benchmarks/serve_ready.py: each server's ready times and the two goals of one run."""
    data = _load(run_dir / "serve_ready.json")
    ready = data["ready"]
    names = {
        "aot": "`aot serve` from its verified entry",
        "vllm": "`vllm serve`, same settings, vLLM's own compile cache",
    }
    out = ["| server | warm-up start | timed starts | median ready |", "|---|---|---|---|"]
    for way, name in names.items():
        warm = [r["ready_s"] for r in ready["warmups"] if r["way"] == way]
        timed = [r["ready_s"] for r in ready["timed"] if r["way"] == way]
        out.append(
            f"| {name} | {', '.join(_s(t) for t in warm)} "
            f"| {', '.join(_s(t) for t in timed)} | {_s(ready['median_ready_s'][way])} |"
        )
    ev = data["eval"]
    base = next(j for j in ev["aot_eval_jobs"] if j["job"] == ev["baseline"])
    goals = [
        ("warm `aot serve` ready / `vllm serve` ready", ready["ratio"], ready["goal"]),
        (
            f"job via `aot eval --server` ({_s(ev['server_job']['wall_s'])}) / "
            f"`aot eval` compiled warm ({_s(base['wall_s'])})",
            ev["ratio"],
            ev["goal"],
        ),
    ]
    out += _goal_rows(goals)
    same = "yes" if ev["scores_agree"] else "**NO**"
    out += ["", f"The server job's samples agree with the `aot eval` job's: {same}."]
    return out


TABLES: dict[str, Table] = {
    "main_job": Table(run="2026-12-08T0122Z-nox_bench", render=_main_job),
    "real_answers": Table(run="2026-12-08T0122Z-nox_bench", render=_real_answers),
    "scaling": Table(run="2026-11-30T2337Z-scaling", render=_scaling),
    "tiny_bench": Table(run="2026-11-30T2228Z-aot_bench", render=_aot_bench),
    "vllm_aot_cpu": Table(run="2026-12-01T0115Z-vllm_aot_cpu", render=_vllm_aot_cpu),
    "eval_jobs": Table(run="2026-12-08T0003Z-eval_jobs_full", render=_eval_jobs),
    "eval_jobs_short": Table(run="2026-12-08T0029Z-eval_jobs_short", render=_eval_jobs),
    "eval_jobs_bf16": Table(run="2026-12-08T0018Z-eval_jobs_bf16_full", render=_eval_jobs),
    "eval_jobs_before": Table(run="2026-12-07T1431Z-eval_jobs", render=_eval_jobs),
    "serve_ready": Table(run="2026-12-07T1905Z-serve_ready", render=_serve_ready),
}

_BLOCK = re.compile(
    r"(?P<open><!-- table (?P<name>[\w-]+): [^>]*-->\n)(?P<body>.*?)"
    r"(?P<close><!-- end table (?P=name) -->)",
    re.DOTALL,
)


def render_table(name: str, runs: Path = RUNS) -> str:
    """The block body for table ``name``: caption, blank line, table."""
    table = TABLES[name]
    run_dir = runs / table.run
    return "\n".join([caption(run_dir), "", *table.render(run_dir)]) + "\n"


def render_readme(text: str, runs: Path = RUNS) -> str:
    """``text`` with every marked table re-rendered; an unknown table name is an error."""

    def repl(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise KeyError(f"README names table {name!r}, which readme_tables.py does not know")
        return m.group("open") + render_table(name, runs) + m.group("close")

    return _BLOCK.sub(repl, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md differs")
    mode.add_argument("--write", action="store_true", help="re-render README.md in place")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    rendered = render_readme(text)
    missing = sorted(set(TABLES) - set(m.group("name") for m in _BLOCK.finditer(text)))
    if args.write:
        args.readme.write_text(rendered, encoding="utf-8")
        return 0
    if rendered != text:
        print(
            f"{args.readme}: a measured table differs from its archived data; run "
            "`python benchmarks/readme_tables.py --write` (or fix the data)",
            file=sys.stderr,
        )
        return 1
    if missing:
        print(f"{args.readme}: tables not shown: {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
