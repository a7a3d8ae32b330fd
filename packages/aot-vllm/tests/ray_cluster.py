"""A real local two-node Ray cluster on this machine (``ray start --head`` and ``ray start
--address``, one logical CPU each, free ports, a temp dir of the caller's), stopped by pid.

test_ray.py runs vLLM work on it; test_serve_replicas.py runs ``aot serve --replicas`` on a
variant of it. Why it is not loopback-only: see test_ray.py's docstring.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray() -> str:
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        pytest.skip("Ray is not installed here: pip install 'aot-vllm[ray]'")
    return str(ray)


class LocalRayCluster:
    """Two ``ray start --block`` processes (head, second node), each the root of its node's
    processes; stopping ends exactly the processes found below those roots."""

    def __init__(self, temp_dir: str) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = temp_dir
        self.roots: list[subprocess.Popen[bytes]] = []
        self.logs = Path(temp_dir) / "start-logs"
        self.logs.mkdir()

    def _start(self, name: str, *args: str) -> None:
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        with (self.logs / f"{name}.log").open("wb") as log:
            self.roots.append(
                subprocess.Popen(
                    [_ray(), "start", "--block", "--num-cpus", "1", *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )

    def start(self) -> None:
        """Head node, then the second node once the head answers."""
        self._start(
            "head",
            "--head",
            "--port",
            str(self.port),
            "--node-ip-address",
            "127.0.0.1",
            "--include-dashboard=false",
            "--temp-dir",
            self.temp_dir,
        )
        self._wait_for_port()
        self._start(
            "node-b",
            "--address",
            self.address,
            "--node-ip-address",
            "127.0.0.1",
            "--resources",
            json.dumps({"aot_node_b": 1}),
        )

    def _wait_for_port(self, timeout_s: float = 300) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            if self.roots[0].poll() is not None:
                break
            time.sleep(1)
        raise RuntimeError((self.logs / "head.log").read_text(errors="replace")[-3000:])

    def stop(self) -> list[int]:
        """End every process below the two roots, by pid; returns those still alive."""
        import psutil

        procs: list[psutil.Process] = []
        for root in self.roots:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(root.pid)
                procs += [parent, *parent.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        _gone, alive = psutil.wait_procs(procs, timeout=20)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        for root in self.roots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                root.wait(timeout=5)
        return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
