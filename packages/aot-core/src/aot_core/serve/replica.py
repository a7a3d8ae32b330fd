"""One ``aot serve --replicas`` replica: a Ray Serve deployment that imports the exported
artifact into a cache of its own, starts ``aot serve`` on it (warm, or it refuses), and
passes HTTP requests through to it.

Each replica is a full ``aot serve`` (vLLM's OpenAI-compatible server, ``/health``,
``/aot/stats``, its drain on SIGTERM) on a loopback port of its node; Ray Serve's proxy is
the one endpoint and spreads requests over the replicas. Every answer names the replica
and node that made it (``x-aot-replica``). The server process is started with
``PR_SET_PDEATHSIG``, so it is told to drain and stop when its replica's process dies
however it dies; Ray Serve's health check (``check_health``) finds a replica whose server
is gone, and Ray Serve replaces it with a new one that imports and starts warm again.

Imports Ray: only ``aot serve --replicas`` imports this module (aot-vllm[ray]).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aot_core.serving import STATS_PATH

REPLICA_HEADER = "x-aot-replica"
"""Response header naming the replica and node that answered: ``REPLICA_ID@NODE_ID``."""

_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, kw_only=True)
class ReplicaLaunch:
    """What every replica starts from (the same for all of them)."""

    model: str
    """The model directory; the same path on every node."""

    spec_json: str
    """The resolved spec the driver keyed the entry with (JSON), so every node keys it alike."""

    backend: str
    """The aot backend."""

    archive: list[Any] | None
    """``[ObjectRef]`` of the exported entry's tar bytes (a list, so Ray passes the reference
    rather than the bytes); None serves eager."""

    entry_key: str | None
    """The key the entry was exported under (None eager)."""

    served_model_name: str
    """The model name requests use."""

    api_key: str | None
    """Passed on to every replica's ``aot serve --api-key``."""

    drain_timeout_s: int
    """Each replica's ``aot serve --drain-timeout``."""

    ready_timeout_s: float
    """Seconds a replica's server may take to become ready before the replica fails."""


class AotReplica:
    """The Ray Serve deployment class (``serve.deployment(AotReplica)``)."""

    def __init__(self, launch: ReplicaLaunch) -> None:
        replica = serve.get_replica_context().replica_id.unique_id
        node = ray.get_runtime_context().get_node_id()
        self.name = f"{replica}@{node}"
        self.identity = {"replica": replica, "node": node, "pid": os.getpid()}
        self.workdir = Path(tempfile.mkdtemp(prefix="aot-replica-"))
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            argv, imported = self._prepare(launch)
            self.port = _free_port()
            self.log = self.workdir / "server.log"
            # On this thread (Ray runs the constructor on the replica's own user-code
            # thread, which lives as long as the replica): the death signal follows it.
            with self.log.open("wb") as out:
                self.proc = subprocess.Popen(
                    [*argv, "--port", str(self.port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # Only one prctl call on libc loaded beforehand: nothing that takes a
                    # lock another thread could hold at the fork.
                    preexec_fn=_term_when_parent_dies,  # noqa: PLW1509
                )
            self.record = self._wait_ready(launch.ready_timeout_s)
            _check_warm(self.record, imported, launch.entry_key)
        except BaseException:
            self._stop()
            raise
        self.base = f"http://127.0.0.1:{self.port}"

    def _prepare(self, launch: ReplicaLaunch) -> tuple[list[str], Path | None]:
        """Import and verify the entry into this replica's cache; ``aot serve``'s argv."""
        from aot_core.artifacts import ArtifactStore, import_artifact

        spec = self.workdir / "spec.json"
        spec.write_text(launch.spec_json, encoding="utf-8")
        cache = self.workdir / "cache"
        argv = [sys.executable, "-m", "aot_core", "--cache-dir", str(cache), "serve"]
        argv += [launch.model, "--spec", str(spec), "--backend", launch.backend]
        argv += ["--served-model-name", launch.served_model_name]
        argv += ["--drain-timeout", str(launch.drain_timeout_s)]
        if launch.api_key:
            argv += ["--api-key", launch.api_key]
        if launch.archive is None:
            return [*argv, "--eager"], None
        tar = self.workdir / "entry.tar"
        tar.write_bytes(ray.get(launch.archive[0]))
        # Checks the manifest, every member and every checksum before publishing.
        entry, _manifest, _placed = import_artifact(tar, ArtifactStore(cache))
        tar.unlink()
        return argv, entry

    def _wait_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"aot serve exited with {self.proc.returncode} before it was ready:\n"
                    + self._log_tail()
                )
            with contextlib.suppress(OSError, ValueError):
                return dict(json.loads(_get(self.port, "/aot/stats", timeout_s=2.0)))
            time.sleep(1.0)
        raise RuntimeError(f"aot serve was not ready in {timeout_s:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""

    async def __call__(self, request: Request) -> Response:
        """Pass the request to this replica's server; its answer, naming this replica.
        ``GET /aot/stats`` is the server's start record with this replica's own added."""
        import httpx

        if request.method == "GET" and request.url.path == STATS_PATH:
            record = {**self.record, "replica": self.identity}
            return JSONResponse(record, headers={REPLICA_HEADER: self.name})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        url = f"{self.base}{request.url.path}"
        if request.url.query:
            url += f"?{request.url.query}"
        async with httpx.AsyncClient(timeout=None) as client:
            answer = await client.request(
                request.method, url, headers=headers, content=await request.body()
            )
        out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
        out[REPLICA_HEADER] = self.name
        return Response(content=answer.content, status_code=answer.status_code, headers=out)

    async def check_health(self) -> None:
        """Ray Serve's health check: the server process runs and answers ``/health``."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"replica {self.name}: aot serve has exited ({code})")
        await asyncio.to_thread(_get, self.port, "/health", timeout_s=10.0)

    def __del__(self) -> None:
        # Ray Serve calls this on a graceful stop: the server drains, then stops.
        self._stop()

    def _stop(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        # The directory this replica made (its imported entry and log), nothing else.
        shutil.rmtree(getattr(self, "workdir", ""), ignore_errors=True)


def _check_warm(record: dict[str, Any], imported: Path | None, key: str | None) -> None:
    """Refuse a replica whose server did not start warm from the imported entry."""
    if imported is None:
        return
    start = record.get("start", {})
    if start.get("path") != "warm" or start.get("key") != key:
        raise RuntimeError(
            f"aot serve did not start warm from the imported entry {key} (it started "
            f"{start.get('path')!r} from {start.get('key')}): this node resolves the spec "
            "differently (other memory, vLLM or torch?); give every node the same software"
        )


def _term_when_parent_dies() -> None:
    """In the child before exec: SIGTERM when the thread that started it dies."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _get(port: int, path: str, *, timeout_s: float) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
        return str(r.read().decode("utf-8"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
