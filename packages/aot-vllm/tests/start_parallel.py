"""Start the tiny model once, on one or several ranks, in a fresh process; print one JSON line.

Used by test_parallel.py (and handy by hand):
    python start_parallel.py MODEL_DIR CACHE_DIR [--tp N] [--pp N] [--mode none|default]
                             [--kill-rank R] [--export FILE]

``--kill-rank R`` kills rank R's worker process once it has joined the distributed group
(mid-start) and reports the error; ``--export FILE`` exports the cache entry after closing.
The result always lists the engine processes seen and which of them are still alive.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

PROMPTS = [[72, 101, 108, 108, 111], list(range(40, 90))]
RANK_LINE = re.compile(r"\x1f(\d+)\x1f[A-Z]+\x1f[^\x1f]*\x1fworld_size=\d+ rank=(\d+) ")


def _descendants() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _alive(pids: set[int]) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            continue
    return sorted(out)


def _kill_rank_when_started(cache: str, rank: int, killed: dict[str, Any]) -> None:
    """Kill rank ``rank``'s worker once the capture log shows it joined (mid-start)."""
    deadline = time.time() + 1200
    while time.time() < deadline and "pid" not in killed:
        for log in glob.glob(os.path.join(cache, "logs", "*", "start-*.log")):
            text = Path(log).read_text(encoding="utf-8", errors="replace")
            for pid, seen_rank in RANK_LINE.findall(text):
                if int(seen_rank) == rank:
                    time.sleep(2.0)  # let it get into loading and compiling
                    os.kill(int(pid), signal.SIGKILL)
                    killed.update(pid=int(pid), at=time.time())
                    return
        time.sleep(0.5)


def spec_for(
    cache: str, *, tp: int = 1, pp: int = 1, mode: str = "default", executor: str | None = None
) -> Any:
    """The spec every start of this script uses (tests compute its cache entry from it)."""
    from aot_core.spec import CompileSpec

    options: dict[str, object] = {"kv_cache_memory_bytes": 64 << 20}
    if executor:
        options["distributed_executor_backend"] = executor
    return CompileSpec(
        compile_mode=mode,  # type: ignore[arg-type]
        cuda_graphs=mode != "none",
        dtype="float32",
        max_model_len=256,
        max_num_seqs=8,
        cache_dir=cache,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        backend_options=options,
    )


def _run(args: argparse.Namespace, seen: set[int], killed: dict[str, Any]) -> dict[str, Any]:
    from aot_core.compiler import GenerationParams
    from aot_vllm.backend import VllmBackend

    spec = spec_for(args.cache, tp=args.tp, pp=args.pp, mode=args.mode, executor=args.executor)
    if args.kill_rank is not None:
        threading.Thread(
            target=_kill_rank_when_started, args=(args.cache, args.kill_rank, killed), daemon=True
        ).start()
    t0 = time.time()
    compiled = VllmBackend().compile_model(args.model, spec)
    try:
        seen |= compiled.engine_pids
        gens = compiled.generate(PROMPTS, GenerationParams(max_new_tokens=12, stop_on_eos=False))
        stats = compiled.stats
    finally:
        compiled.close()
    return {
        "stats": stats.to_dict(),
        "tokens": [list(g.token_ids) for g in gens],
        "wall_s": round(time.time() - t0, 2),
        "entry": stats.cache.path,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("cache")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--mode", default="default")
    parser.add_argument("--executor", default=None)
    parser.add_argument("--kill-rank", type=int, default=None)
    parser.add_argument("--export", default=None)
    args = parser.parse_args()
    seen: set[int] = set()
    killed: dict[str, Any] = {}
    stop = threading.Event()

    def watch() -> None:  # every engine process that ever appeared, to check none survive
        while not stop.is_set():
            seen.update(_descendants())
            stop.wait(0.2)

    threading.Thread(target=watch, daemon=True).start()
    result: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = _run(args, seen, killed)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
    stop.set()
    if args.export and "entry" in result:
        from aot_core.artifacts import export_artifact

        result["export_sha256"] = export_artifact(result["entry"], args.export)
    result.update(
        warnings=[str(w.message) for w in caught if "aot" in str(w.message).lower()],
        killed=killed,
        engine_pids_seen=sorted(seen),
        alive_after_close=_alive(seen),
    )
    print("AOT-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
