"""Start-up of the tiny Llama on one rank and on two (tensor parallel), cold and warm, printed.

    python benchmarks/scale_bench.py [--workdir DIR] [--json OUT.json] [--repeats N]

Every start runs in a fresh process: TP=1 (engine in the calling process, aot-vllm's
default for one device) and TP=2 (vLLM's multiprocessing executor: an engine-core process
and one worker per rank, each bound to its own core by aot-vllm). "Cold" compiles into an
empty cache directory; "warm" is a new process finding that entry (a verified hit, on
every rank for TP=2). Each start generates 8 x 32 greedy tokens (float32) so the numbers
include a working engine; start-up is ``stats.startup_s`` (start of ``compile_model`` to
an engine ready to generate) and wall is the whole child process. Medians of --repeats.

On a 2-core machine TP=2 cannot be faster: it runs three processes that each import vLLM
and torch on two cores. What it shows is what a second rank costs at start-up, and what a
warm artifact saves on every rank.
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

MARK = "BENCH-RESULT "
PROMPTS = [[(7 * i + 3 * j) % 250 + 1 for j in range(16)] for i in range(8)]


def _child(model: str, cache: str, tp: int) -> None:
    """One start in this (fresh) process; prints its figures as one JSON line."""
    from aot_core.compiler import GenerationParams
    from aot_core.spec import CompileSpec
    from aot_vllm.backend import VllmBackend

    spec = CompileSpec(
        dtype="float32",
        max_model_len=256,
        max_num_seqs=8,
        cache_dir=cache,
        tensor_parallel_size=tp,
        backend_options={"kv_cache_memory_bytes": 64 << 20},
    )
    with VllmBackend().compile_model(model, spec) as compiled:
        compiled.generate(PROMPTS, GenerationParams(max_new_tokens=32, stop_on_eos=False))
        stats = compiled.stats
    out = {
        "startup_s": stats.startup_s,
        "cache": stats.cache.status,
        "phases": dict(stats.startup_phases),
        "rank_compile_s": [r.compile_time_s for r in stats.ranks],
        "rank_cache": [r.cache.status for r in stats.ranks],
        "rank_peak_mib": [round((r.peak_memory_bytes or 0) / 2**20) for r in stats.ranks],
        "peak_mib": round((stats.peak_host_memory_bytes or 0) / 2**20),
    }
    print(MARK + json.dumps(out), flush=True)


def _start(model: str, cache: Path, tp: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", model, str(cache), str(tp)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        check=False,
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"a TP={tp} start failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len(MARK) :]), "wall_s": round(wall, 2)}


def _run(model: str, workdir: Path, repeats: int) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for i in range(repeats):
        for tp in (1, 2):
            cache = workdir / f"tp{tp}-{i}"
            for kind in ("cold", "warm"):
                result = _start(model, cache, tp)
                runs.setdefault(f"TP={tp} {kind}", []).append(result)
                print(f"  TP={tp} {kind}: start-up {result['startup_s']:.1f} s, "
                      f"cache {result['cache']}", file=sys.stderr, flush=True)  # fmt: skip
    return runs


def _table(runs: dict[str, list[dict[str, Any]]]) -> str:
    def median(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)

    lines = [
        f"{'start':<12} {'start-up (s)':>12} {'wall (s)':>9} {'cache':>6}  per-rank compile (s)",
        "-" * 66,
    ]
    for name, rows in runs.items():
        ranks = rows[-1]["rank_compile_s"] or ["-"]
        lines.append(
            f"{name:<12} {median(rows, 'startup_s'):>12.1f} {median(rows, 'wall_s'):>9.1f} "
            f"{rows[-1]['cache']:>6}  {', '.join(str(r) for r in ranks)}"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    from aot_core.models.tiny import ensure_tiny_llama

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="aot-scale-bench-"))
    os.environ.setdefault("AOT_CACHE_DIR", str(workdir / "aot-home"))
    model = str(ensure_tiny_llama())
    # One discarded start shares vLLM's model inspection with every later entry.
    _start(model, workdir / "prime", 1)
    runs = _run(model, workdir, args.repeats)
    print(_table(runs))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
