"""``aot bench``: eager vs compiled, cold vs warm, every start in a fresh process.

For each backend and repeat it runs three worker processes (``aot_core.bench_worker``):
a cold compile into a fresh artifact, a warm start from that artifact, and an eager
start. Eager goes last so that it, like the warm start, finds whatever a backend keeps
machine-wide outside its compile cache (vLLM's model-inspection results, as plain vLLM
keeps them in ~/.cache/vllm); the eager baseline is then what a user's second eager
start costs, not a first-ever start. Medians over the repeats go into before/after tables built by
``aot_core.stats.compare``; everything measured goes into the JSON result.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aot_core import artifacts
from aot_core.bench_worker import RESULT_MARKER
from aot_core.spec import CompileSpec
from aot_core.stats import OptimizationStats, compare

# Chosen so that both backends on the tiny Llama finish within 10 minutes on 2 cores:
# a vLLM start costs 30-70 s here, so 2 repeats x 3 starts is the budget.
DEFAULT_REPEATS = 2
# Long enough that decode steps, which compilation speeds up, outweigh the prefill and the
# per-call overhead in tokens/s; 4 prompts x 128 tokens take well under a second.
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_TIMEOUT_S = 300
# Generate calls timed per start (after one untimed call); throughput is their median.
MEASURED_CALLS = 5
PHASES: tuple[str, ...] = ("cold", "warm", "eager")
PHASE_LABELS = {"eager": "eager", "cold": "AOT cold compile", "warm": "AOT warm start"}
RESULT_FORMAT = 1

# The bench keeps the engine small: four prompts in one batch, short sequences.
BENCH_SPEC_DEFAULTS: Mapping[str, Any] = {"max_model_len": 256, "max_num_seqs": 4}


def ensure_bench_model(cache_root: Path | None = None) -> Path:
    """The built-in tiny Llama every backend is benchmarked on, written on first use.

    It lives under ``cache_root`` (the store root ``--cache-dir`` names), else the default.
    """
    from aot_core.tiny import ensure_tiny_llama

    return ensure_tiny_llama(cache_root)


def bench_prompts() -> list[list[int]]:
    """The fixed token-id prompts every run generates on."""
    from aot_core.cli import default_prompts

    return default_prompts()


def _worker_env(cache_root: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if cache_root is not None:
        # What workers and their backends keep outside the run's artifact (aot-vllm's shared
        # model-inspection results, the legacy backend's default cache) goes under it too.
        env[artifacts.CACHE_ENV_VAR] = str(cache_root)
    # One thread: on 2 cores, thread oversubscription makes every number noise.
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)


def run_worker(
    *,
    backend: str,
    phase: str,
    model: Path,
    artifact: Path,
    spec: CompileSpec,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    timeout_s: float,
    log: Path,
    cache_root: Path | None = None,
) -> dict[str, Any]:
    """Start one worker process and return its run record (ok or not)."""
    cmd = [
        sys.executable,
        "-m",
        "aot_core.bench_worker",
        "--backend",
        backend,
        "--model",
        str(model),
        "--phase",
        phase,
        "--artifact",
        str(artifact),
        "--spec-json",
        spec.to_json(indent=None),
        "--prompts-json",
        json.dumps([list(p) for p in prompts]),
        "--max-new-tokens",
        str(max_new_tokens),
        "--measured-calls",
        str(MEASURED_CALLS),
    ]
    record: dict[str, Any] = {"backend": backend, "phase": phase, "log": str(log)}
    start = time.perf_counter()
    with log.open("wb") as out:
        # A session of its own, so a timeout or Ctrl-C can kill the engine children too.
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_worker_env(cache_root),
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            record.update(
                ok=False,
                wall_s=time.perf_counter() - start,
                error=f"timed out after {timeout_s:.0f} s (log: {log})",
            )
            return record
        except BaseException:
            _kill_group(proc)
            raise
    record["wall_s"] = time.perf_counter() - start
    # Engine processes the worker forgot to reap must not outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    result = None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
    if rc != 0 or result is None:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-12:]
        record.update(
            ok=False,
            error=f"worker exited with status {rc}; last lines of {log}:\n  " + "\n  ".join(lines),
        )
        return record
    record.update(ok=True, result=result)
    return record


def _median(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def median_stats(runs: Sequence[Mapping[str, Any]]) -> OptimizationStats | None:
    """Stats whose numbers are medians over ``runs`` (descriptive fields from the first)."""
    stats = [OptimizationStats.from_dict(r["result"]["stats"]) for r in runs if r.get("ok")]
    if not stats:
        return None
    first = stats[0]
    numeric = (
        "compile_time_s",
        "cuda_graph_capture_time_s",
        "peak_host_memory_bytes",
        "peak_device_memory_bytes",
        "kv_cache_tokens",
        "prompt_tokens_per_s",
        "output_tokens_per_s",
        "time_to_first_token_s",
        "startup_s",
    )
    changes: dict[str, Any] = {}
    for name in numeric:
        value = _median([getattr(s, name) for s in stats])
        if value is not None and name.endswith(("_bytes", "_tokens")):
            value = round(value)
        changes[name] = value
    phases = sorted({k for s in stats for k in s.startup_phases})
    changes["startup_phases"] = {
        k: v for k in phases if (v := _median([s.startup_phases.get(k) for s in stats])) is not None
    }
    load = _median([s.cache.load_time_s for s in stats])
    changes["cache"] = first.cache.__class__(
        status=first.cache.status,
        reason=first.cache.reason,
        load_time_s=load,
        path=first.cache.path,
    )
    return first.replace(**changes)


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_isa": list(artifacts.cpu_isa()),
        "cuda_capabilities": list(artifacts.cuda_capabilities()),
        "python": platform.python_version(),
        "torch": artifacts.torch_version(),
        "vllm": artifacts.vllm_version(),
        "aot_core": artifacts.package_version("aot-core"),
    }


@contextlib.contextmanager
def _work_dir(path: Path | None, cache_root: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    parent = None
    if cache_root is not None:
        parent = cache_root / "tmp"
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aot-bench-", dir=parent) as tmp:
        yield Path(tmp)


def run_bench(
    *,
    model: Path,
    model_label: str,
    backends: Sequence[str] | None,
    spec: CompileSpec,
    repeats: int,
    max_new_tokens: int,
    timeout_s: float,
    work_dir: Path | None,
    progress: Callable[[str], None],
    cache_root: Path | None = None,
) -> dict[str, Any]:
    """Run every measurement and return the JSON-ready result (see ``format_report``).

    ``cache_root`` (``aot --cache-dir``) holds everything the runs write outside
    ``work_dir``, which itself defaults to a temporary directory under it; the workers get
    it as ``$AOT_CACHE_DIR``. None keeps the default root and the system's temp directory.
    """
    from aot_core.registry import get_backend, list_backends

    infos = {i.name: i for i in list_backends()}
    skipped: dict[str, str] = {}
    if backends:
        chosen = list(dict.fromkeys(backends))
        for name in chosen:
            get_backend(name)  # raises a clear error for an unknown or unusable backend
    else:
        get_backend()  # raises NoBackendInstalledError / NoUsableBackendError
        chosen = [n for n, i in infos.items() if i.availability.usable]
        skipped = {n: i.availability.reason for n, i in infos.items() if n not in chosen}
        for name, reason in skipped.items():
            progress(f"skipping backend {name}: {reason}")

    base = spec
    for field_name, value in BENCH_SPEC_DEFAULTS.items():
        if getattr(spec, field_name) is None:
            base = base.replace(**{field_name: value})
    prompts = bench_prompts()
    total = len(chosen) * repeats * len(PHASES)
    progress(
        f"benchmarking {', '.join(chosen)} on {model_label}: {repeats} repeat(s) x "
        f"{len(PHASES)} fresh-process starts each ({total} runs); per-run logs kept while running"
    )
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["aot", *sys.argv[1:]]) if sys.argv else "aot bench",
        "machine": _machine(),
        "model": model_label,
        "model_path": str(model),
        "settings": {
            "repeats": repeats,
            "max_new_tokens": max_new_tokens,
            "prompts": len(prompts),
            "prompt_lengths": [len(p) for p in prompts],
            "spec": base.to_dict(),
            "threads": 1,
        },
        "backends": {},
        "skipped": skipped,
        "failures": [],
    }
    t_all = time.perf_counter()
    done = 0
    with _work_dir(work_dir, cache_root) as work:
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        for name in chosen:
            info = infos[name]
            runs: list[dict[str, Any]] = []
            for rep in range(repeats):
                art = work / "artifacts" / name / f"repeat-{rep + 1}"
                for phase in PHASES:
                    done += 1
                    target = art.with_name(art.name + "-eager") if phase == "eager" else art
                    progress(
                        f"[{done}/{total}] {name}: {PHASE_LABELS[phase]} "
                        f"(repeat {rep + 1}/{repeats}) ..."
                    )
                    if phase == "warm" and not runs[-1]["ok"]:
                        # Without its cold artifact a "warm" start would be a cold one.
                        record = {
                            "backend": name,
                            "phase": phase,
                            "ok": False,
                            "error": "skipped: the cold compile of this repeat failed",
                        }
                    else:
                        record = run_worker(
                            backend=name,
                            phase=phase,
                            model=model,
                            artifact=target,
                            spec=base,
                            prompts=prompts,
                            max_new_tokens=max_new_tokens,
                            timeout_s=timeout_s,
                            log=logs / f"{name}-{phase}-{rep + 1}.log",
                            cache_root=cache_root,
                        )
                    record["repeat"] = rep + 1
                    runs.append(record)
                    progress(f"[{done}/{total}] {name}: {PHASE_LABELS[phase]}: {_summary(record)}")
                    if not record["ok"]:
                        result["failures"].append(
                            {k: record[k] for k in ("backend", "phase", "repeat", "error")}
                        )
            result["backends"][name] = _summarise_backend(name, info.version, runs)
    result["total_wall_s"] = time.perf_counter() - t_all
    progress(f"done in {result['total_wall_s']:.0f} s")
    return result


def _summary(record: Mapping[str, Any]) -> str:
    if not record["ok"]:
        return f"FAILED ({str(record['error']).splitlines()[0]})"
    stats = record["result"]["stats"]
    parts = [f"{record['wall_s']:.1f} s in all"]
    if stats.get("startup_s") is not None:
        parts.append(f"startup {stats['startup_s']:.1f} s")
    cache = stats.get("cache") or {}
    if record["phase"] != "eager":
        parts.append(f"cache {cache.get('status', '?')}")
    if stats.get("output_tokens_per_s") is not None:
        parts.append(f"{stats['output_tokens_per_s']:.0f} output tok/s")
    return ", ".join(parts)


def _summarise_backend(name: str, version: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_phase = {p: [r for r in runs if r["phase"] == p] for p in PHASES}
    medians = {p: median_stats(rs) for p, rs in by_phase.items()}
    wall = {p: _median([r["wall_s"] for r in rs if r.get("ok")]) for p, rs in by_phase.items()}
    tokens = {p: [r["result"]["tokens"] for r in rs if r.get("ok")] for p, rs in by_phase.items()}
    reference = tokens["eager"][0] if tokens["eager"] else None
    compiled_tokens = tokens["cold"] + tokens["warm"]
    tokens_match = (
        None
        if reference is None or not compiled_tokens
        else all(t == reference for t in compiled_tokens)
    )
    divergence = _divergence(reference, compiled_tokens)
    warm_cache = [r["result"]["stats"].get("cache", {}) for r in by_phase["warm"] if r.get("ok")]
    comparisons: dict[str, Any] = {}
    eager, cold, warm = medians["eager"], medians["cold"], medians["warm"]
    if eager is not None and warm is not None:
        comparisons["eager_vs_warm"] = compare(
            eager, warm, before_label="eager", after_label="AOT warm"
        ).to_dict()
    if eager is not None and cold is not None:
        comparisons["eager_vs_cold"] = compare(
            eager, cold, before_label="eager", after_label="AOT cold"
        ).to_dict()
    if cold is not None and warm is not None:
        comparisons["cold_vs_warm"] = compare(
            cold, warm, before_label="cold compile", after_label="warm start"
        ).to_dict()
    return {
        "version": version,
        "runs": runs,
        "median": {p: (s.to_dict() if s is not None else None) for p, s in medians.items()},
        "median_process_wall_s": wall,
        "comparisons": comparisons,
        "tokens_match_eager": tokens_match,
        "tokens_divergence": divergence,
        "warm_cache": [
            f"{c.get('status', '?')}" + (f" ({c['reason']})" if c.get("reason") else "")
            for c in warm_cache
        ],
    }


def _divergence(reference: Any, candidates: Sequence[Any]) -> str:
    """Where compiled greedy output first departs from eager, for people."""
    if reference is None:
        return ""
    worst = ""
    for cand in candidates:
        same = sum(a == b for a, b in zip(reference, cand, strict=False))
        for i, (a, b) in enumerate(zip(reference, cand, strict=False)):
            if a != b:
                first = next(j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
                worst = (
                    f"{same}/{len(reference)} prompts identical; prompt {i} departs at "
                    f"generated token {first} (numerics of compiled kernels can flip a near-tie "
                    "in greedy decoding)"
                )
                break
    return worst


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def format_report(result: Mapping[str, Any]) -> str:
    """The before/after tables and the key facts, for people."""
    from aot_core.stats import Comparison, ComparisonRow

    m = result["machine"]
    s = result["settings"]
    out = [
        f"aot bench: {result['model']}; {s['prompts']} prompts of {s['prompt_lengths']} tokens, "
        f"{s['max_new_tokens']} new tokens each; medians of {s['repeats']} fresh-process "
        "start(s)",
        f"machine: {m['machine']}, {m['cpu_count']} cores; torch {m['torch'] or '-'}, "
        f"vllm {m['vllm'] or '-'}, python {m['python']}",
    ]
    for name, reason in result["skipped"].items():
        out.append(f"skipped {name}: {reason}")
    for name, b in result["backends"].items():
        out.append("")
        out.append(f"== {name} {b['version']}")
        for key, title in (
            ("eager_vs_warm", "eager vs AOT warm start (the saving on every later start)"),
            ("cold_vs_warm", "AOT cold compile vs warm start (what the artifact saves)"),
        ):
            data = b["comparisons"].get(key)
            if data is None:
                continue
            table = Comparison(
                before_label=data["before_label"],
                after_label=data["after_label"],
                rows=tuple(ComparisonRow(**r) for r in data["rows"]),
            )
            out.append(f"-- {title}")
            out.append(table.format())
        wall = b["median_process_wall_s"]
        out.append(
            "fresh-process wall time (launch to exit): "
            + ", ".join(f"{PHASE_LABELS[p]} {_fmt_s(wall[p])}" for p in PHASES)
        )
        if b["warm_cache"]:
            out.append("warm-start cache: " + "; ".join(b["warm_cache"]))
        match = b["tokens_match_eager"]
        verdict = {True: "identical", False: "DIFFERENT", None: "not compared"}[match]
        if match is False and b.get("tokens_divergence"):
            verdict += f" ({b['tokens_divergence']})"
        out.append(f"greedy tokens, compiled vs eager: {verdict}")
    names = [n for n, b in result["backends"].items() if b["median"].get("warm")]
    if len(names) >= 2:
        out.append("")
        out.append(f"== backends side by side (AOT warm start): {names[0]} vs {names[1]}")
        a = OptimizationStats.from_dict(result["backends"][names[0]]["median"]["warm"])
        b2 = OptimizationStats.from_dict(result["backends"][names[1]]["median"]["warm"])
        out.append(compare(a, b2, before_label=names[0], after_label=names[1]).format())
    if result["failures"]:
        out.append("")
        out.append(f"{len(result['failures'])} run(s) FAILED:")
        for f in result["failures"]:
            out.append(f"  {f['backend']} {f['phase']} repeat {f['repeat']}: {f['error']}")
    out.append("")
    out.append(f"total: {result['total_wall_s']:.0f} s")
    return "\n".join(out)


def plot(result: Mapping[str, Any], path: Path) -> None:
    """Bar charts of start time and output tokens/s per backend and phase (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["backends"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(PHASES)
    panels = (
        ("fresh-process start to exit (s), lower is better", "wall"),
        ("output tokens/s, higher is better", "output_tokens_per_s"),
    )
    for ax, (title, metric) in zip(axes, panels, strict=True):
        for j, phase in enumerate(PHASES):
            values = []
            for name in names:
                b = result["backends"][name]
                if metric == "wall":
                    v = b["median_process_wall_s"].get(phase)
                else:
                    med = b["median"].get(phase)
                    v = med.get(metric) if med else None
                values.append(v or 0.0)
            xs = [i + (j - 1) * width for i in range(len(names))]
            bars = ax.bar(xs, values, width, label=PHASE_LABELS[phase])
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"aot bench: {result['model']} ({result['machine']['machine']}, "
        f"{result['machine']['cpu_count']} cores), medians of {result['settings']['repeats']}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
