"""One benchmark start in a fresh process: ``python -m aot_core.bench.worker ...``.

``aot bench`` runs this once per measurement so that every start pays what a real
process pays (imports, engine start, compile or cache load). It builds the backend from
the registry, starts the model in one of three ways, generates on fixed token-id prompts
and prints its result line (``aot_core.bench.fresh_process.print_result``) holding the
OptimizationStats and the worker's own timings.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aot_core.bench.fresh_process import print_result


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux; children counts engine processes that were waited for.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) * 1024


@dataclass(kw_only=True)
class _Start:
    """What one start measured, filled in as it goes."""

    prompts: list[list[int]]
    params: Any
    measured_calls: int
    latency_probes: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def generate(self, compiled: Any) -> None:
        """One untimed call, then the timed ones; throughput is the median of those."""
        # The first call pays lazy set-up (part of being ready); throughput is the median of
        # the calls after it, because one call on a tiny model lasts milliseconds.
        t = time.perf_counter()
        first = compiled.generate(self.prompts, self.params)
        self.timings["first_generate_s"] = time.perf_counter() - t
        samples = []
        for _ in range(self.measured_calls):
            t = time.perf_counter()
            last = compiled.generate(self.prompts, self.params)
            self.timings.setdefault("measured_generate_s", 0.0)
            self.timings["measured_generate_s"] += time.perf_counter() - t
            samples.append(compiled.stats)
        self.outputs["tokens"] = [list(g.token_ids) for g in last]
        self.outputs["deterministic"] = [g.token_ids for g in first] == [g.token_ids for g in last]
        stats = samples[-1].to_dict()
        for name in ("prompt_tokens_per_s", "output_tokens_per_s", "time_to_first_token_s"):
            values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
            if values:
                stats[name] = statistics.median(values)
        self.outputs["stats"] = stats
        if self.latency_probes:
            self.outputs["latency"] = self.latency(compiled)

    def latency(self, compiled: Any) -> dict[str, float | None]:
        """Time to first token and per-token decode latency, p50 and p95 over the prompts.

        Each prompt (up to 8) runs alone (a batch of one) twice: for one new token (time to
        first token: prefill plus one step) and for up to 32; the difference over the extra
        tokens is its per-token latency. Backend-neutral: only ``generate`` is timed.
        """
        import dataclasses

        one = dataclasses.replace(self.params, max_new_tokens=1)
        some = dataclasses.replace(
            self.params, max_new_tokens=min(self.params.max_new_tokens, _LATENCY_TOKENS)
        )
        ttft, per_token = [], []
        for prompt in self.prompts[:_LATENCY_PROMPTS]:
            t = time.perf_counter()
            compiled.generate([prompt], one)
            first = time.perf_counter() - t
            t = time.perf_counter()
            (gen,) = compiled.generate([prompt], some)
            full = time.perf_counter() - t
            ttft.append(first)
            if len(gen.token_ids) > 1:
                per_token.append(max(full - first, 0.0) / (len(gen.token_ids) - 1))
        return {
            "ttft_p50_s": _percentile(ttft, 50),
            "ttft_p95_s": _percentile(ttft, 95),
            "token_p50_s": _percentile(per_token, 50),
            "token_p95_s": _percentile(per_token, 95),
            "probed_prompts": float(len(ttft)),
        }


# Latency probes run each prompt alone twice, the second time for up to 32 tokens: enough
# steps for a per-token figure, and a bounded cost (the default bench has 12 starts).
_LATENCY_PROMPTS = 8
_LATENCY_TOKENS = 32


def _percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aot_core.bench.worker")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--phase", choices=("eager", "cold", "warm"), required=True)
    parser.add_argument("--artifact", required=True, help="artifact dir (eager: private cache)")
    parser.add_argument("--spec-json", required=True, help="base CompileSpec as JSON")
    parser.add_argument("--prompts-json", required=True, help="list of token-id lists")
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--measured-calls", type=int, default=3)
    parser.add_argument(
        "--no-latency", action="store_true", help="skip the latency probes (aot tune's jobs)"
    )
    return parser.parse_args(argv)


def _eager(cls: Any, args: argparse.Namespace, base: Any, run: _Start, t_start: float) -> None:
    artifact = Path(args.artifact)
    artifact.mkdir(parents=True, exist_ok=True)
    spec = base.replace(compile_mode="none", cache_dir=str(artifact))
    compiled = cls(spec).compile_model(args.model, spec)
    run.timings["start_s"] = time.perf_counter() - t_start
    try:
        run.generate(compiled)
    finally:
        compiled.close()


def _warm(cls: Any, args: argparse.Namespace, spec: Any, run: _Start, t_start: float) -> bool:
    """Start from the cold run's artifact; False when it was refused (then compile afresh)."""
    from aot_core import artifacts
    from aot_core.errors import ArtifactError

    artifact = Path(args.artifact)
    t = time.perf_counter()
    held = artifacts.using_artifact(artifact, backend=args.backend)
    try:
        held.__enter__()
    except ArtifactError as exc:
        run.notes.append(f"artifact refused, compiling afresh: {exc}")
        run.timings["verify_s"] = time.perf_counter() - t
        return False
    run.timings["verify_s"] = time.perf_counter() - t
    with contextlib.ExitStack() as stack:
        stack.push(held)  # re-seals the files the engine added, on success only
        run_spec = spec.replace(cache_dir=str(artifact / artifacts.FILES_DIR))
        compiled = cls(run_spec).compile_model_aot(args.model, run.prompts, run_spec)
        run.timings["start_s"] = time.perf_counter() - t_start
        try:
            run.generate(compiled)
        finally:
            compiled.close()
    return True


def _cold(cls: Any, args: argparse.Namespace, spec: Any, run: _Start, t_start: float) -> None:
    from aot_core import artifacts
    from aot_core.cli.workflow import compile_into

    key = artifacts.entry_key(
        backend=args.backend, backend_version=cls.version(), model=args.model, spec=spec
    )
    marks: dict[str, float] = {}

    def after_compile(model: Any) -> None:
        marks["ready"] = time.perf_counter()
        run.generate(model)

    compile_into(
        dest=Path(args.artifact),
        key=key,
        backend=args.backend,
        model=Path(args.model),
        spec=spec,
        example_inputs=run.prompts,
        force=True,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
        after_compile=after_compile,
    )
    run.timings["start_s"] = marks["ready"] - t_start
    run.timings["publish_s"] = time.perf_counter() - marks["ready"]


def main(argv: list[str] | None = None) -> int:
    """Run one start and print its result line; returns the process exit status."""
    t_process = time.perf_counter()
    args = _parse(argv)

    from aot_core.compiler import GenerationParams
    from aot_core.registry import get_backend
    from aot_core.spec import CompileSpec

    base = CompileSpec.from_json(args.spec_json)
    run = _Start(
        prompts=json.loads(args.prompts_json),
        params=GenerationParams(max_new_tokens=args.max_new_tokens, stop_on_eos=False),
        measured_calls=args.measured_calls,
        latency_probes=not args.no_latency,
    )
    t0 = time.perf_counter()
    cls = get_backend(args.backend)
    run.timings["backend_lookup_s"] = time.perf_counter() - t0

    t_start = time.perf_counter()
    if args.phase == "eager":
        _eager(cls, args, base, run, t_start)
    else:
        spec = base if base.compiles else base.replace(compile_mode="default")
        if not (args.phase == "warm" and _warm(cls, args, spec, run, t_start)):
            _cold(cls, args, spec, run, t_start)
    run.timings["worker_total_s"] = time.perf_counter() - t_process

    stats = dict(run.outputs["stats"])
    if stats.get("peak_host_memory_bytes") is None:
        stats["peak_host_memory_bytes"] = _peak_rss_bytes()
        run.notes.append("peak host memory from getrusage (the backend reported none)")
    print_result(
        {
            "backend": args.backend,
            "phase": args.phase,
            "stats": stats,
            "timings": run.timings,
            "tokens": run.outputs["tokens"],
            "deterministic": run.outputs["deterministic"],
            "latency": run.outputs.get("latency", {}),
            "notes": run.notes,
            "pid": os.getpid(),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
