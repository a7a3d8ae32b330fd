"""One benchmark start in a fresh process: ``python -m aot_core.bench_worker ...``.

``aot bench`` runs this once per measurement so that every start pays what a real
process pays (imports, engine start, compile or cache load). It builds the backend from
the registry, starts the model in one of three ways, generates on fixed token-id prompts
and prints one line ``AOT_BENCH_RESULT {json}`` holding the OptimizationStats and the
worker's own timings.

- eager: compile_mode "none", an empty private cache directory.
- cold:  compile into a fresh artifact (staging, manifest, atomic publish), as
  ``aot compile`` does.
- warm:  verify the artifact written by the cold run, then start from it; a refused
  artifact is reported and compiled afresh, as a user's run would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RESULT_MARKER = "AOT_BENCH_RESULT "


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux; children counts engine processes that were waited for.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) * 1024


def main(argv: list[str] | None = None) -> int:
    """Run one start and print its result line; returns the process exit status."""
    t_process = time.perf_counter()
    parser = argparse.ArgumentParser(prog="python -m aot_core.bench_worker")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--phase", choices=("eager", "cold", "warm"), required=True)
    parser.add_argument("--artifact", required=True, help="artifact dir (eager: private cache)")
    parser.add_argument("--spec-json", required=True, help="base CompileSpec as JSON")
    parser.add_argument("--prompts-json", required=True, help="list of token-id lists")
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--measured-calls", type=int, default=3)
    args = parser.parse_args(argv)

    from aot_core import artifacts
    from aot_core.compiler import GenerationParams
    from aot_core.errors import ArtifactError
    from aot_core.registry import get_backend
    from aot_core.spec import CompileSpec

    prompts: list[list[int]] = json.loads(args.prompts_json)
    base = CompileSpec.from_json(args.spec_json)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, stop_on_eos=False)
    timings: dict[str, float] = {}
    notes: list[str] = []
    outputs: dict[str, Any] = {}

    t0 = time.perf_counter()
    cls = get_backend(args.backend)
    timings["backend_lookup_s"] = time.perf_counter() - t0

    def generate(compiled: Any) -> None:
        # The first call pays lazy set-up (part of being ready); throughput is the median of
        # the calls after it, because one call on a tiny model lasts milliseconds.
        t = time.perf_counter()
        first = compiled.generate(prompts, params)
        timings["first_generate_s"] = time.perf_counter() - t
        samples = []
        for _ in range(args.measured_calls):
            t = time.perf_counter()
            last = compiled.generate(prompts, params)
            timings.setdefault("measured_generate_s", 0.0)
            timings["measured_generate_s"] += time.perf_counter() - t
            samples.append(compiled.stats)
        outputs["tokens"] = [list(g.token_ids) for g in last]
        outputs["deterministic"] = [g.token_ids for g in first] == [g.token_ids for g in last]
        stats = samples[-1].to_dict()
        for name in ("prompt_tokens_per_s", "output_tokens_per_s", "time_to_first_token_s"):
            values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
            if values:
                stats[name] = statistics.median(values)
        outputs["stats"] = stats

    artifact = Path(args.artifact)
    t_start = time.perf_counter()
    if args.phase == "eager":
        artifact.mkdir(parents=True, exist_ok=True)
        spec = base.replace(compile_mode="none", cache_dir=str(artifact))
        compiled = cls(spec).compile_model(args.model, spec)
        timings["start_s"] = time.perf_counter() - t_start
        try:
            generate(compiled)
        finally:
            compiled.close()
    else:
        from aot_core.cli import compile_into

        spec = base if base.compiles else base.replace(compile_mode="default")
        key = artifacts.entry_key(
            backend=args.backend, backend_version=cls.version(), model=args.model, spec=spec
        )
        loaded = False
        if args.phase == "warm":
            t = time.perf_counter()
            held = artifacts.using_artifact(artifact, backend=args.backend)
            try:
                held.__enter__()
            except ArtifactError as exc:
                notes.append(f"artifact refused, compiling afresh: {exc}")
            else:
                loaded = True
            timings["verify_s"] = time.perf_counter() - t
        if loaded:
            with contextlib.ExitStack() as stack:
                stack.push(held)  # re-seals the files the engine added, on success only
                run_spec = spec.replace(cache_dir=str(artifact / artifacts.FILES_DIR))
                compiled = cls(run_spec).compile_model_aot(args.model, prompts, run_spec)
                timings["start_s"] = time.perf_counter() - t_start
                try:
                    generate(compiled)
                finally:
                    compiled.close()
        else:
            marks: dict[str, float] = {}

            def after_compile(model: Any) -> None:
                marks["ready"] = time.perf_counter()
                generate(model)

            compile_into(
                dest=artifact,
                key=key,
                backend=args.backend,
                model=Path(args.model),
                spec=spec,
                example_inputs=prompts,
                force=True,
                progress=lambda m: print(m, file=sys.stderr, flush=True),
                after_compile=after_compile,
            )
            timings["start_s"] = marks["ready"] - t_start
            timings["publish_s"] = time.perf_counter() - marks["ready"]
    timings["worker_total_s"] = time.perf_counter() - t_process

    stats = dict(outputs["stats"])
    if stats.get("peak_host_memory_bytes") is None:
        stats["peak_host_memory_bytes"] = _peak_rss_bytes()
        notes.append("peak host memory from getrusage (the backend reported none)")
    result = {
        "backend": args.backend,
        "phase": args.phase,
        "stats": stats,
        "timings": timings,
        "tokens": outputs["tokens"],
        "deterministic": outputs["deterministic"],
        "notes": notes,
        "pid": os.getpid(),
    }
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
