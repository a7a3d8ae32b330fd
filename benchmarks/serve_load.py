"""Loopback load on an OpenAI-compatible server (``aot serve``): N concurrent clients, a fixed
number of completions, a time limit; prints p50/p95 latency, throughput and every error.

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --model NAME \\
        [--api-key K] [--clients 4] [--requests 64] [--max-tokens 16] [--time-limit 300]
    python benchmarks/serve_load.py --serve MODEL --spec spec.toml [...]   # starts aot serve

``--serve`` starts ``aot serve MODEL`` on a free loopback port, waits for it, runs the load
and stops it with SIGTERM. Each client sends its requests one after another (greedy, the
same prompt, ``ignore_eos`` so every request generates ``--max-tokens`` tokens); a request
counts as an error unless it returns 200 with that many tokens. Exit status 1 when any
request failed or the time limit cut the run short. Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROMPT = "The quick brown fox jumps over the lazy dog because"


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    """What one load run measured."""

    clients: int
    """Concurrent clients."""

    requests: int
    """Requests asked for."""

    completed: int
    """Requests that returned 200 with every token asked for."""

    errors: list[str] = field(default_factory=list)
    """One line per failed request (status or exception, and the reply's start)."""

    wall_s: float = 0.0
    """Seconds from the first request sent to the last reply."""

    latency_p50_s: float | None = None
    """Median seconds per successful request."""

    latency_p95_s: float | None = None
    """95th-percentile seconds per successful request."""

    requests_per_s: float = 0.0
    """Successful requests per second of wall time."""

    output_tokens_per_s: float = 0.0
    """Generated tokens per second of wall time, over the successful requests."""

    cut_short: bool = False
    """The time limit stopped the run before every request was sent."""

    def summary(self) -> str:
        """The printed report."""
        p50 = "-" if self.latency_p50_s is None else f"{self.latency_p50_s:.3f} s"
        p95 = "-" if self.latency_p95_s is None else f"{self.latency_p95_s:.3f} s"
        lines = [
            f"clients {self.clients}, requests {self.completed}/{self.requests} ok, "
            f"errors {len(self.errors)}{', cut short by the time limit' if self.cut_short else ''}",
            f"latency p50 {p50}, p95 {p95}; {self.requests_per_s:.2f} requests/s, "
            f"{self.output_tokens_per_s:.1f} output tokens/s over {self.wall_s:.1f} s",
        ]
        return "\n".join(lines + [f"  error: {e}" for e in self.errors[:20]])


def run_load(
    url: str,
    model: str,
    *,
    api_key: str | None = None,
    clients: int = 4,
    requests: int = 64,
    max_tokens: int = 16,
    time_limit_s: float = 300.0,
) -> LoadResult:
    """Send ``requests`` completions from ``clients`` threads to ``url`` (``/v1/completions``)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps(
        {
            "model": model,
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    lock = threading.Lock()
    state: dict[str, Any] = {"next": 0, "latencies": [], "errors": [], "tokens": 0}
    deadline = time.monotonic() + time_limit_s

    def take() -> bool:
        with lock:
            if state["next"] >= requests or time.monotonic() >= deadline:
                return False
            state["next"] += 1
            return True

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=time_limit_s)
        while take():
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/completions", body=body, headers=headers)
                response = conn.getresponse()
                text = response.read().decode(errors="replace")
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=time_limit_s)
                status, text = 0, f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - t0
            tokens = _tokens(text) if status == 200 else None
            with lock:
                if tokens == max_tokens:
                    state["latencies"].append(elapsed)
                    state["tokens"] += tokens
                else:
                    state["errors"].append(f"status {status}, tokens {tokens}: {text[:160]}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t_start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t_start
    latencies = sorted(state["latencies"])
    return LoadResult(
        clients=clients,
        requests=requests,
        completed=len(latencies),
        errors=state["errors"],
        wall_s=round(wall, 3),
        latency_p50_s=round(statistics.median(latencies), 4) if latencies else None,
        latency_p95_s=round(_percentile(latencies, 0.95), 4) if latencies else None,
        requests_per_s=round(len(latencies) / wall, 3) if wall > 0 else 0.0,
        output_tokens_per_s=round(state["tokens"] / wall, 2) if wall > 0 else 0.0,
        cut_short=state["next"] < requests,
    )


def _tokens(text: str) -> int | None:
    try:
        return int(json.loads(text)["usage"]["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        return None


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    index = max(0, min(len(values) - 1, math.ceil(q * len(values)) - 1))
    return values[index]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    argv = [sys.executable, "-m", "aot_core", "serve", args.serve, "--port", str(port)]
    argv += ["--spec", args.spec] if args.spec else []
    argv += ["--api-key", args.api_key] if args.api_key else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"aot serve exited with {proc.returncode}; see {log}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, url
        except OSError:
            time.sleep(2)
    proc.kill()
    raise SystemExit(f"aot serve was not ready in {args.start_timeout} s; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--serve", metavar="MODEL", help="start aot serve MODEL for the run")
    parser.add_argument("--spec", help="with --serve: the spec file")
    parser.add_argument("--model", help="the served model name (default: --serve's MODEL)")
    parser.add_argument("--api-key")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds for the load")
    parser.add_argument("--start-timeout", type=float, default=900.0)
    parser.add_argument("--json", help="write the result as JSON here")
    args = parser.parse_args(argv)
    model = args.model or args.serve
    if not model:
        parser.error("--model is needed with --url")
    proc = None
    url = args.url
    if args.serve:
        log = Path(tempfile.mkdtemp(prefix="serve-load-")) / "server.log"
        proc, url = _start_server(args, log)
        print(f"aot serve ready at {url} (log {log})", file=sys.stderr)
    try:
        result = run_load(
            url,
            model,
            api_key=args.api_key,
            clients=args.clients,
            requests=args.requests,
            max_tokens=args.max_tokens,
            time_limit_s=args.time_limit,
        )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=180)
    print(result.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 1 if result.errors or result.cut_short else 0


if __name__ == "__main__":
    sys.exit(main())
