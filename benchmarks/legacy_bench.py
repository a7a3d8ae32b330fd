"""Benchmark of the legacy (plain PyTorch) backend on the built-in tiny Llama.

Prints: cold compile, warm start in a fresh process, eager start, AOTInductor package
build and load time, and decode tokens/s compiled vs eager. Every start runs in a fresh
process (nothing is shared but the on-disk cache), with one torch thread.

    python benchmarks/legacy_bench.py [--max-new-tokens 64] [--repeats 3] [--json out.json]

Goals on the 2-core CPU machine: warm start <= 0.25x the cold compile; compiled decode
>= 1.5x eager.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aot_core.bench.fresh_process import one_thread_env, print_result, run_fresh, tail

PROMPTS = [list(b"The quick brown fox"), list(b"Hello"), list(b"jumps over the lazy dog"), [65]]
MAX_MODEL_LEN = 256
MAX_NUM_SEQS = 4


def child(mode: str, model_dir: str, cache_root: str, max_new: int, repeats: int) -> None:
    """One start in this (fresh) process; prints a JSON line with what it measured."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    from aot_core import CompileSpec, GenerationParams
    from aot_legacy import LegacyBackend

    options: dict[str, Any] = {"aoti": mode in ("package_build", "package_load")}
    spec = CompileSpec(
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=MAX_NUM_SEQS,
        compile_mode="none" if mode == "eager" else "default",
        cache_dir=cache_root,
        backend_options=options,
    )
    compiler = LegacyBackend(spec)
    if mode == "package_build":
        model = compiler.compile_model_aot(model_dir, PROMPTS)
    else:
        model = compiler.compile_model(model_dir)
    ready_s = time.perf_counter() - t0
    params = GenerationParams(max_new_tokens=max_new, stop_on_eos=False)
    model.generate(PROMPTS, params)  # first call: allocator and caches warm up
    decode, output = [], []
    for _ in range(repeats):
        model.generate(PROMPTS, params)
        t = model.last_timings  # type: ignore[attr-defined]
        decode.append(t.decode_steps_tokens / t.decode_s)
        output.append(t.output_tokens / t.total_s)
    stats = model.stats
    model.close()
    print_result(
        {
            "mode": mode,
            "process_ready_s": ready_s,
            "startup_s": stats.startup_s,
            "compile_time_s": stats.compile_time_s,
            "cache": stats.cache.describe(),
            "cache_load_time_s": stats.cache.load_time_s,
            "tier": stats.resolved_config["tier"],
            "phases": dict(stats.startup_phases),
            "decode_tok_s": statistics.median(decode),
            "output_tok_s": statistics.median(output),
            "ttft_s": stats.time_to_first_token_s,
            "peak_rss_mib": (stats.peak_host_memory_bytes or 0) / 2**20,
            "torch": stats.torch_version,
            "device": stats.device,
        }
    )


def run(mode: str, model_dir: Path, cache_root: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        str(model_dir),
        str(cache_root),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--repeats",
        str(args.repeats),
    ]
    print(f"  {mode} ...", file=sys.stderr, flush=True)
    done = run_fresh(cmd, log=cache_root.parent / f"{mode}.log", env=one_thread_env())
    if not done.ok:
        sys.exit(f"{mode} failed:\n" + "\n".join(tail(done.log, 40)))
    out: dict[str, Any] = dict(done.result)
    out["process_wall_s"] = done.wall_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--child", nargs=3, metavar=("MODE", "MODEL", "CACHE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        mode, model_dir, cache_root = args.child
        child(mode, model_dir, cache_root, args.max_new_tokens, args.repeats)
        return
    with tempfile.TemporaryDirectory(prefix="legacy-bench-") as tmp:
        from aot_core.models.tiny import write_tiny_llama

        model_dir = write_tiny_llama(Path(tmp) / "tiny-llama")
        cache = Path(tmp) / "cache"
        r = {
            m: run(m, model_dir, cache, args)
            for m in ("eager", "cold_compile", "warm_compile", "package_build", "package_load")
        }
    cold, warm, eager = r["cold_compile"], r["warm_compile"], r["eager"]
    build, load = r["package_build"], r["package_load"]
    rows = [
        ("eager start (compile_model, ready to generate)", f"{eager['startup_s']:.2f} s"),
        (
            "cold compile: torch.compile, empty cache",
            f"{cold['compile_time_s']:.2f} s  [{cold['cache']}]",
        ),
        (
            "warm start: same, fresh process, cached",
            f"{warm['compile_time_s']:.2f} s  [{warm['cache']}]",
        ),
        (
            "  warm / cold compile",
            f"{warm['compile_time_s'] / cold['compile_time_s']:.3f}x  (goal <= 0.25x)",
        ),
        ("cold start total (startup_s)", f"{cold['startup_s']:.2f} s"),
        ("warm start total (startup_s)", f"{warm['startup_s']:.2f} s"),
        (
            "AOTInductor package build (export + package both steps)",
            f"{build['compile_time_s']:.2f} s",
        ),
        (
            "AOTInductor package load, fresh process",
            f"{load['cache_load_time_s']:.3f} s  [{load['cache']}]",
        ),
        ("package start total (startup_s)", f"{load['startup_s']:.2f} s"),
        ("decode tokens/s, eager", f"{eager['decode_tok_s']:.0f}"),
        ("decode tokens/s, torch.compile", f"{warm['decode_tok_s']:.0f}"),
        ("decode tokens/s, AOTInductor package", f"{load['decode_tok_s']:.0f}"),
        (
            "  compiled / eager decode",
            f"{warm['decode_tok_s'] / eager['decode_tok_s']:.2f}x  (goal >= 1.5x)",
        ),
        ("  packaged / eager decode", f"{load['decode_tok_s'] / eager['decode_tok_s']:.2f}x"),
    ]
    print(
        f"legacy backend, tiny Llama, torch {eager['torch']}, {eager['device']}, "
        f"{platform.machine()} x{os.cpu_count()} cpus, python {platform.python_version()}, "
        f"batch {len(PROMPTS)}, {args.max_new_tokens} new tokens, median of {args.repeats}"
    )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
