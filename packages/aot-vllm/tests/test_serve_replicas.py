"""``aot serve --replicas 2 --ray-address ADDR`` on a real local two-node Ray cluster (as
ray_cluster.py starts one, on ports and a temp dir of its own): Ray Serve's one endpoint
spreads requests over both replicas, each on its own node, each started warm from the
entry the driver exported; a replica killed (SIGKILL) in the middle of a load costs only
requests that fail visibly (an error status or a dropped connection, none hanging, none
answered wrongly), which succeed when retried; Ray Serve replaces the dead replica, which
starts warm from the entry again; SIGTERM stops everything.

Opt-in (``nox -s vllm_parallel``): a cold compile and three warm engine starts, 10+ minutes
on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import KV_BYTES
from ray_cluster import LocalRayCluster

pytestmark = [pytest.mark.slow, pytest.mark.ray]

HOST = "127.0.0.1"
SPEC = f"""dtype = "float32"
max_model_len = 256
max_num_seqs = 4

[backend_options]
kv_cache_memory_bytes = {KV_BYTES}
"""
READY_TIMEOUT_S = 2400
REPLICA = "x-aot-replica"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class SeparateRayCluster(LocalRayCluster):
    """ray_cluster's cluster with each fixed-default port of Ray's set to a free one, so it
    can run beside another local cluster (a release check's) on this machine."""

    def _start(self, name: str, *args: str) -> None:
        ports = ["--dashboard-agent-listen-port", str(_free_port())]
        if "--head" in args:
            ports += ["--ray-client-server-port", str(_free_port())]
        super()._start(name, *args, *ports)

    def start(self) -> None:
        """Both nodes, and a driver can join; on a loaded machine a raylet can give up
        waiting (15 s) for its dashboard agent to start, so a failed start is stopped and
        tried again, up to three times."""
        os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
        # As the README tells users: Serve's proxy spreads requests over every replica
        # instead of preferring the one on its own node (aot's driver sets it too).
        os.environ.setdefault("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
        for attempt in range(3):
            with contextlib.suppress(RuntimeError):  # the head's port never answered
                super().start()
                if self._both_nodes_up(timeout_s=300):
                    return
            left = self.stop()
            assert left == [], f"Ray processes left running: {left}"
            self.roots = []
            self.port = _free_port()
            self.address = f"127.0.0.1:{self.port}"
            print(f"Ray cluster start {attempt + 1} failed; logs in {self.logs}")
        raise AssertionError(f"the two-node Ray cluster did not start: see {self.logs}")

    def _both_nodes_up(self, *, timeout_s: float) -> bool:
        """Whether a driver joins and sees two alive nodes while both node processes run (a
        driver that joins sooner finds no node of this machine registered and fails)."""
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='error'); "
            "print('ALIVE', sum(1 for n in ray.nodes() if n['Alive']))"
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and all(r.poll() is None for r in self.roots):
            proc = subprocess.run(
                [sys.executable, "-c", probe, self.address],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if "ALIVE 2" in proc.stdout:
                return True
            time.sleep(3)
        return False


@dataclass(frozen=True)
class Answer:
    """One request's outcome as the client saw it."""

    status: int | None
    """HTTP status; None: no answer (the connection dropped)."""

    replica: str
    """The ``x-aot-replica`` header (REPLICA@NODE), empty without one."""

    body: Any
    """The JSON body, or the error's text."""


def _post(port: int, prompt: str, max_tokens: int, timeout: float = 300) -> Answer:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    request = urllib.request.Request(
        f"http://{HOST}:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    return _call(request, timeout)


def _get(port: int, path: str, timeout: float = 30) -> Answer:
    return _call(urllib.request.Request(f"http://{HOST}:{port}{path}"), timeout)


def _call(request: urllib.request.Request, timeout: float) -> Answer:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
            body = json.loads(text) if text.startswith("{") else text  # /health: empty
            return Answer(response.status, response.headers.get(REPLICA, ""), body)
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers.get(REPLICA, ""), exc.read().decode(errors="replace"))
    except TimeoutError:
        raise  # a request left unanswered is the failure this test looks for
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        return Answer(None, "", f"{type(exc).__name__}: {exc}")


def _load(port: int, count: int, max_tokens: int, workers: int = 4) -> list[Answer]:
    prompts = [f"Request {i}: the quick brown fox" for i in range(count)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: _post(port, p, max_tokens), prompts))


@dataclass
class Replicas:
    """The running ``aot serve --replicas 2`` driver."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    cluster: SeparateRayCluster

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def replicas(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    work = tmp_path_factory.mktemp("replicas")
    spec = work / "spec.toml"
    spec.write_text(SPEC)
    with tempfile.TemporaryDirectory(prefix="aotsrv-", dir="/tmp") as temp_dir:
        cluster = SeparateRayCluster(temp_dir)
        proc = None
        try:
            cluster.start()
            port = _free_port()
            log = work / "driver.log"
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
            env.pop("VLLM_CPU_OMP_THREADS_BIND", None)
            argv = [
                sys.executable, "-m", "aot_core", "--cache-dir", str(work / "cache"), "serve",
                str(tiny_model), "--spec", str(spec), "--served-model-name", "tiny",
                "--port", str(port), "--replicas", "2", "--ray-address", cluster.address,
            ]  # fmt: skip
            with log.open("wb") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
            running = Replicas(proc=proc, port=port, log=log, cluster=cluster)
            _wait_for(lambda: "aot: ready:" in running.output(), running, READY_TIMEOUT_S)
            yield running
        finally:
            if proc is not None:
                _stop_driver(proc)
                print(log.read_text(errors="replace")[-4000:])
            left = cluster.stop()
            assert left == [], f"Ray processes left running: {left}"


def _stop_driver(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=300)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def _wait_for(done: Any, running: Replicas, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert running.proc.poll() is None, running.output()[-6000:]
        if done():
            return
        time.sleep(2)
    raise AssertionError(f"not done in {timeout_s} s:\n{running.output()[-6000:]}")


def _records(port: int, tries: int = 12) -> dict[str, dict[str, Any]]:
    """Each replica's start record (``/aot/stats`` through the one endpoint), by replica."""
    out: dict[str, dict[str, Any]] = {}
    for _ in range(tries):
        answer = _get(port, "/aot/stats")
        if answer.status == 200:
            out[answer.replica] = answer.body
    return out


def _server_pids(record: dict[str, Any]) -> list[int]:
    """The replica's ``aot serve`` process, found by the cache it serves from."""
    workdir = str(Path(record["start"]["artifact"]).parents[1])
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if workdir in cmdline and " serve " in cmdline:
            found.append(proc.info["pid"])
    return found


def _gone(pids: list[int], *, timeout_s: float) -> list[int]:
    """Waits for ``pids`` to exit; those still running after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and _not_zombie(p)]
        if not alive:
            return []
        time.sleep(1)
    return alive


def _not_zombie(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    return False


def test_two_warm_replicas_on_two_nodes_share_the_load(replicas: Replicas) -> None:
    assert _get(replicas.port, "/health").status == 200
    records = _records(replicas.port)
    assert len(records) == 2, records.keys()
    assert len({name.split("@")[1] for name in records}) == 2  # one replica per node
    for record in records.values():
        assert record["start"]["path"] == "warm", record["start"]  # imported, verified
    t0 = time.perf_counter()
    answers = _load(replicas.port, 24, max_tokens=8)
    wall = time.perf_counter() - t0
    assert [a.status for a in answers] == [200] * 24, [a.body for a in answers if a.status != 200]
    assert {a.replica for a in answers} == set(records)  # spread over both
    print(f"24 requests (8 tokens, 4 clients) over 2 replicas: {wall:.1f} s")


def test_a_replica_killed_mid_load_loses_no_request_and_is_replaced_warm(
    replicas: Replicas,
) -> None:
    before = _records(replicas.port)
    victim, survivor = sorted(before)
    victim_pid = int(before[victim]["replica"]["pid"])
    servers = _server_pids(before[victim])
    assert servers, before[victim]
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(_load, replicas.port, 40, 48)
        time.sleep(3.0)  # requests in flight on both replicas
        os.kill(victim_pid, signal.SIGKILL)
        answers = load.result(timeout=900)  # TimeoutError here: a request was left hanging
    ok = [a for a in answers if a.status == 200]
    failed = [a for a in answers if a.status != 200]
    assert len(ok) + len(failed) == 40
    for answer in ok:  # every 200 is a whole completion
        assert answer.body["choices"][0]["text"] is not None and answer.replica
    print(f"killed {victim}: {len(ok)} answered, {len(failed)} failed visibly:",
          sorted({str(a.status) for a in failed}))  # fmt: skip
    retried = [_post(replicas.port, "retry", 8) for _ in failed]
    assert all(a.status == 200 for a in retried), [a.body for a in retried]
    # The killed replica's server was told to stop (its parent died) and did.
    assert _gone(servers, timeout_s=180) == [], servers
    t0 = time.monotonic()

    def replaced() -> bool:
        now = _records(replicas.port)
        return len(now) == 2 and victim not in now

    _wait_for(replaced, replicas, READY_TIMEOUT_S)
    print(f"replacement serving {time.monotonic() - t0:.0f} s after the kill was answered")
    after = _records(replicas.port, tries=16)
    assert survivor in after and victim not in after, after.keys()
    for record in after.values():
        assert record["start"]["path"] == "warm", record["start"]
    answers = _load(replicas.port, 16, max_tokens=8)
    assert [a.status for a in answers] == [200] * 16
    assert {a.replica for a in answers} == set(after)


def test_sigterm_stops_the_replicas_and_their_servers(replicas: Replicas) -> None:
    records = _records(replicas.port)
    servers = [pid for record in records.values() for pid in _server_pids(record)]
    assert len(servers) == 2, records
    replicas.proc.send_signal(signal.SIGTERM)
    assert replicas.proc.wait(timeout=600) == 0, replicas.output()[-4000:]
    assert "replicas stopped" in replicas.output()
    assert _gone(servers, timeout_s=120) == [], servers
