"""``aot serve MODEL --replicas N --ray-address ADDR``: N replicas of ``aot serve`` on a Ray
cluster through Ray Serve, behind Ray Serve's one HTTP endpoint.

The driver (this process) keys and, when missing, compiles the entry exactly as ``aot
serve`` does (``serve_command``), exports it (verified while it is packed) and puts the
archive in Ray's object store. Each replica (``serve_replica.AotReplica``) imports and
verifies it into a cache of its own on its node, starts ``aot serve`` warm from it and
refuses to serve otherwise. Ray Serve's proxy runs on the head node at ``--host``:``--port``
and routes every path (``/v1/...``, ``/health``, ``/aot/stats``) to a replica; with at least
N nodes alive, at most one replica runs per node. A replica that dies or fails its health
check is replaced by Ray Serve with a new one that starts warm the same way. SIGTERM or
SIGINT deletes the application: each replica's server drains, then stops.

Ray (aot-vllm[ray]: ``ray[serve]``) is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core import artifacts
from aot_core.cli.command import CLIError, ExitCode
from aot_core.spec import CompileSpec

APP_NAME = "aot"
"""The Ray Serve application's name (one ``aot serve --replicas`` per cluster)."""

RAY_HINT = "pip install 'aot-vllm[ray]' (ray[serve] 2.60)"

REPLICA_CPUS = 1.0
"""Ray CPUs each replica reserves (its engine's threads are vLLM's own business)."""

SPREAD_ENV = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}
"""Ray Serve's proxy sends every request to a replica on its own node until that one is full
(``max_ongoing_requests``); with this in the job's environment (which the Serve controller
and proxy this job starts inherit) it picks among all replicas. A cluster whose Serve was
started before keeps its own setting: set the variable on the head node's ``ray start``."""

PROBE_TIMEOUT_S = 5.0
"""Seconds a connection to ``--ray-address`` may take before the cluster counts as absent."""

READY_TIMEOUT_S = 1800.0
"""Seconds a replica's server may take to be ready (imports and a warm engine start)."""


@dataclass(frozen=True, kw_only=True)
class ReplicaPlan:
    """One ``aot serve --replicas`` run, decided by ``aot serve`` before Ray is asked."""

    model: Path
    """The model directory (the same path on every node)."""

    spec: CompileSpec
    """The resolved spec the entry is keyed with."""

    backend: str
    """The aot backend."""

    entry: Path | None
    """The verified cache entry to export (None: eager)."""

    key: str | None
    """Its key (None: eager)."""


def connect(address: str | None, progress: Callable[[str], None]) -> Any:
    """``ray`` connected to the cluster at ``address`` (None: ``$RAY_ADDRESS`` or a new local
    one), or a CLIError: SERVER_UNREACHABLE when nothing listens there, MISSING_DEPENDENCY
    without Ray Serve."""
    if address:
        _probe(address)  # ray.init retries a dead address for minutes
    try:
        import ray
        from ray import serve  # noqa: F401  (ray without its serve extra fails here)
    except ImportError as exc:
        raise CLIError(
            ExitCode.MISSING_DEPENDENCY,
            f"aot serve --replicas needs Ray Serve ({exc}): {RAY_HINT}",
        ) from None
    where = address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
    progress(f"connecting to the Ray cluster at {where}")
    try:
        ray.init(
            address=address,
            logging_level="warning",
            log_to_driver=False,
            runtime_env={"env_vars": SPREAD_ENV},
        )
    except ConnectionError as exc:  # something listens there, but no Ray cluster answers
        raise CLIError(
            ExitCode.SERVER_UNREACHABLE,
            f"could not join the Ray cluster at {where}: {exc}. Is it a Ray head node's GCS "
            "address, and is the node on this machine up (`ray status`)?",
        ) from None
    return ray


def _probe(address: str) -> None:
    """SERVER_UNREACHABLE unless something accepts a connection at ``address``."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            return
    except (OSError, ValueError) as exc:
        problem = str(exc)
    raise CLIError(
        ExitCode.SERVER_UNREACHABLE,
        f"no Ray cluster answers at --ray-address {address} ({problem}); start one "
        "(`ray start --head --port 6379`) or pass its address as HOST:PORT",
    )


def run(plan: ReplicaPlan, args: argparse.Namespace, progress: Callable[[str], None]) -> int:
    """Deploy ``args.replicas`` replicas, wait for SIGTERM/SIGINT, delete them; 0."""
    import ray
    from ray import serve

    from aot_core.serve.replica import AotReplica, ReplicaLaunch

    started = time.perf_counter()
    serve.start(proxy_location="HeadOnly", http_options={"host": args.host, "port": args.port})
    if APP_NAME in serve.status().applications:
        raise CLIError(
            ExitCode.ENTRY_IN_USE,
            f"this Ray cluster already serves a Serve application named {APP_NAME!r} (another "
            "aot serve --replicas); stop it (or `serve shutdown`) first",
        )
    launch = ReplicaLaunch(
        model=str(plan.model),
        spec_json=plan.spec.to_json(),
        backend=plan.backend,
        archive=None if plan.entry is None else [ray.put(_exported(plan.entry, progress))],
        entry_key=plan.key,
        served_model_name=args.served_model_name or args.model,
        api_key=args.api_key,
        drain_timeout_s=args.drain_timeout,
        ready_timeout_s=READY_TIMEOUT_S,
    )
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    options: dict[str, Any] = {
        "num_replicas": args.replicas,
        "ray_actor_options": {"num_cpus": REPLICA_CPUS},
        "max_ongoing_requests": 64,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 30.0,
        "graceful_shutdown_timeout_s": float(args.drain_timeout + 60),
        "max_constructor_retry_count": 3,
    }
    if len(nodes) >= args.replicas:
        options["max_replicas_per_node"] = 1
    progress(f"starting {args.replicas} replicas on {len(nodes)} Ray nodes, each from the entry")
    deployment = serve.deployment(AotReplica, name="AotReplica").options(**options)
    try:
        serve.run(deployment.bind(launch), name=APP_NAME, route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        progress(
            f"ready: {args.replicas} replicas of {launch.served_model_name!r} at {url}/v1 "
            f"({time.perf_counter() - started:.1f} s after Ray was reached; each started warm "
            f"from entry {plan.key}). A replica's start record: {url}/aot/stats"
        )
        _wait_for_stop_signal()
        progress("stopping: every replica drains, then stops")
    finally:
        serve.delete(APP_NAME)
        ray.shutdown()
    progress("replicas stopped")
    return ExitCode.OK


def _exported(entry: Path, progress: Callable[[str], None]) -> bytes:
    """The entry packed as ``aot cache export`` packs it (each file verified)."""
    with tempfile.TemporaryDirectory(prefix="aot-replicas-") as tmp:
        tar = Path(tmp) / "entry.tar"
        artifacts.export_artifact(entry, tar)
        data = tar.read_bytes()
    progress(f"exported {entry} ({len(data) / 2**20:.1f} MiB) for the replicas")
    return data


def _wait_for_stop_signal() -> None:
    """Block until SIGTERM or SIGINT arrives (Python handlers: whichever of Ray's threads
    the signal lands on, the handler runs here, in the main thread)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        while not stop.wait(timeout=1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
