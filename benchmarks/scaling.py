"""The scaling table: `aot bench` on the tiny model and real architectures, both backends.

    python benchmarks/scaling.py [--shapes tiny,smollm2-135m,qwen2.5-0.5b,llama-3.2-1b]
                                 [--backends vllm,legacy] [--repeats 1] [--out DIR]
                                 [--cache-dir DIR]

Run it in an environment with both backends (`nox -s bench` builds one: `.nox/bench/bin/
python benchmarks/scaling.py`). For every shape and backend it runs one `aot bench`
(fresh-process cold compile, warm start and eager start; ``--repeats`` of each) and writes
``DIR/scaling.md`` (a Markdown table) and ``DIR/scaling.json`` (every bench result, plus
the rows). A shape aot refuses for memory (exit 14) gets a row with the estimate as the
measured reason, and a failed run a row with its error, so one bad cell never loses the
others. Shapes other than tiny run on placeholder weights (`--shape`): speed and start-up
do not depend on the weights' values.

Per row: cold, warm and eager start (launch to ready, medians), compile time cold -> warm,
output tokens/s eager -> compiled (warm start), peak host memory (the largest of the three
starts), and whether compiled greedy tokens equal eager's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SHAPES = ("tiny", "smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b")
BACKENDS = ("vllm", "legacy")
NOT_ENOUGH_MEMORY = 14  # aot_core.cli.app.ExitCode.NOT_ENOUGH_MEMORY
BENCH_FAILED = 13


def _bench(shape: str, backend: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One `aot bench` run; the parsed JSON result, or why there is none."""
    out = work / f"{shape}-{backend}.json"
    cmd = [sys.executable, "-m", "aot_core"]
    if args.cache_dir is not None:
        cmd += ["--cache-dir", str(args.cache_dir)]
    cmd += ["bench", "--backend", backend]
    cmd += ["--repeats", str(args.repeats), "--json", str(out), "--timeout", str(args.timeout)]
    cmd += ["--max-new-tokens", str(args.max_new_tokens)]
    if shape != "tiny":
        cmd += ["--shape", shape]
    print(f"scaling: {shape} / {backend}: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    (work / f"{shape}-{backend}.log").write_text(proc.stdout + proc.stderr)
    record: dict[str, Any] = {"shape": shape, "backend": backend, "exit": proc.returncode}
    record["wall_s"] = wall
    if proc.returncode in (0, BENCH_FAILED) and out.is_file():
        record["result"] = json.loads(out.read_text())
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("aot: error")]
        record["error"] = (lines or proc.stderr.splitlines()[-3:] or ["(no output)"])[-1]
    return record


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _row(record: dict[str, Any]) -> dict[str, Any]:
    """The table's cells for one bench record."""
    row: dict[str, Any] = {"shape": record["shape"], "backend": record["backend"]}
    result = record.get("result")
    summary = (result or {}).get("backends", {}).get(record["backend"])
    if summary is None:
        row["note"] = record.get("error", "no result")
        return row
    med = summary["median"]
    wall = summary["median_process_wall_s"]

    def stat(phase: str, name: str) -> Any:
        return (med.get(phase) or {}).get(name)

    row.update(
        {
            "cold_start_s": stat("cold", "startup_s"),
            "warm_start_s": stat("warm", "startup_s"),
            "eager_start_s": stat("eager", "startup_s"),
            "process_wall_s": wall,
            "compile_cold_s": stat("cold", "compile_time_s"),
            "compile_warm_s": stat("warm", "compile_time_s"),
            "eager_tok_s": stat("eager", "output_tokens_per_s"),
            "compiled_tok_s": stat("warm", "output_tokens_per_s"),
            "peak_memory_bytes": max(
                (v for p in med.values() if p and (v := p.get("peak_host_memory_bytes"))),
                default=None,
            ),
            "tokens_match_eager": summary.get("tokens_match_eager"),
            "dtype": (stat("warm", "resolved_config") or {}).get("dtype")
            or result["settings"]["spec"].get("dtype"),
            "warm_latency": summary.get("latency", {}).get("warm", {}),
            "decode_limit_tok_s": result["settings"].get("decode_limit_tokens_per_s"),
            "note": "; ".join(f"{f['phase']}: {f['error'][:80]}" for f in result["failures"]),
        }
    )
    return row


def _markdown(rows: list[dict[str, Any]], header: str) -> str:
    cols = (
        "model",
        "backend",
        "cold start",
        "warm start",
        "eager start",
        "compile cold → warm",
        "tok/s eager → compiled",
        "peak memory",
        "TTFT / per token p50 (warm)",
        "dtype",
        "tokens = eager",
        "note",
    )
    out = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "cold_start_s" not in r:
            cells = [r["shape"], r["backend"], *["-"] * 9, r.get("note", "")]
        else:
            ratio = (
                f" ({r['compiled_tok_s'] / r['eager_tok_s']:.2f}×)"
                if r["eager_tok_s"] and r["compiled_tok_s"]
                else ""
            )
            mem = r["peak_memory_bytes"]
            lat = r["warm_latency"] or {}
            limit = r["decode_limit_tok_s"]
            if limit and r["compiled_tok_s"]:
                ratio += f", {r['compiled_tok_s'] / limit:.0%} of the {limit:.0f} limit"
            cells = [
                r["shape"],
                r["backend"],
                _s(r["cold_start_s"]),
                _s(r["warm_start_s"]),
                _s(r["eager_start_s"]),
                f"{_s(r['compile_cold_s'])} → {_s(r['compile_warm_s'])}",
                f"{r['eager_tok_s'] or 0:.0f} → {r['compiled_tok_s'] or 0:.0f}{ratio}",
                "-" if mem is None else f"{mem / (1 << 30):.2f} GiB",
                f"{_ms(lat.get('ttft_p50_s'))} / {_ms(lat.get('token_p50_s'))}",
                r["dtype"] or "-",
                {True: "yes", False: "NO", None: "-"}[r["tokens_match_eager"]],
                r.get("note", ""),
            ]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out) + "\n"


def _write(
    args: argparse.Namespace,
    started: str,
    records: list[dict[str, Any]],
    rows: list[dict[str, Any]],
) -> str:
    """Write DIR/scaling.md and DIR/scaling.json for the rows so far; the table's header."""
    machine = next((r["result"]["machine"] for r in records if r.get("result")), {})
    header = (
        f"Scaling table ({started}; `python benchmarks/scaling.py --repeats {args.repeats} "
        f"--max-new-tokens {args.max_new_tokens}`): {machine.get('machine', '?')}, "
        f"{machine.get('cpu_count', '?')} cores; a start is aot's `startup_s`, "
        "`compile_model` to ready (not the interpreter's start, nor any generation), the median "
        f"of {args.repeats} fresh process(es); tokens/s is the warm start's."
    )
    (args.out / "scaling.md").write_text(_markdown(rows, header))
    (args.out / "scaling.json").write_text(
        json.dumps(
            {
                "date_utc": started,
                "repeats": args.repeats,
                "max_new_tokens": args.max_new_tokens,
                "rows": rows,
                "runs": records,
            },
            indent=2,
        )
        + "\n"
    )
    return header


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per start")
    parser.add_argument("--out", type=Path, default=Path("scaling-results"))
    parser.add_argument("--cache-dir", type=Path, help="aot's cache root (default: aot's own)")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite DIR/scaling.md (and the rows) from the runs in DIR/scaling.json",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        saved = json.loads((args.out / "scaling.json").read_text())
        args.repeats = saved.get("repeats", args.repeats)
        args.max_new_tokens = saved.get("max_new_tokens", args.max_new_tokens)
        rows = [_row(r) for r in saved["runs"]]
        print(_markdown(rows, _write(args, saved["date_utc"], saved["runs"], rows)))
        return 0
    records: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    started = datetime.now(UTC).isoformat(timespec="seconds")
    # Each run's log and JSON stay under DIR/runs/, and the table is rewritten after every
    # cell: a run of an hour or more that is stopped keeps every finished row.
    work = args.out / "runs"
    work.mkdir(exist_ok=True)
    header = ""
    for shape in args.shapes.split(","):
        for backend in args.backends.split(","):
            record = _bench(shape, backend, args, work)
            records.append(record)
            rows.append(_row(record))
            print(f"scaling: {rows[-1]}", file=sys.stderr, flush=True)
            header = _write(args, started, records, rows)
    print(_markdown(rows, header))
    print(f"wrote {args.out / 'scaling.md'} and {args.out / 'scaling.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
