"""Ray: a real local cluster of two nodes on this machine (``ray start --head`` and ``ray
start --address``), each with one logical CPU, started for this module and stopped by pid.

Not loopback-only, although both nodes are given 127.0.0.1: Ray 2.60 on Linux replaces a
loopback node address with the host's reachable one (``services.resolve_ip_for_localhost``),
its GCS and raylets listen on every interface, and the only switch that keeps it on
loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) also forbids a second node. The ports
are free ones picked at random and the cluster lives only as long as this module.

vLLM's Ray executor cannot run the CPU platform (no release declares a Ray device for it;
0.20+ raise, older ones swap in multiprocessing), so on this CPU machine Ray places the
work: a task pinned to the second node imports an exported aot artifact and starts a warm
TP=2 engine there through vLLM's multiprocessing executor, which is how many nodes each
run a warm engine from one artifact. The second test shows vLLM's own refusal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_cluster import LocalRayCluster

pytestmark = [pytest.mark.slow, pytest.mark.ray]

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    # Ray's socket paths must stay short: a temp dir of its own under /tmp.
    with tempfile.TemporaryDirectory(prefix="aotray-", dir="/tmp") as temp_dir:
        ray = LocalRayCluster(temp_dir)
        try:
            ray.start()
            yield ray
        finally:
            left = ray.stop()
            assert left == [], f"Ray processes left running: {left}"


def _driver(cluster: LocalRayCluster, *args: str) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_ADDRESS=cluster.address)
    env.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / "ray_driver.py"), cluster.address, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=2400,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("AOT-RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(json.loads(lines[-1][len("AOT-RESULT ") :]))


def test_a_warm_tp2_engine_runs_on_the_second_node_from_an_exported_artifact(
    cluster: LocalRayCluster, tiny_model: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "tp2.tar"
    cold = subprocess.run(
        [
            sys.executable,
            str(HERE / "start_parallel.py"),
            str(tiny_model),
            str(tmp_path / "built-here"),
            "--tp",
            "2",
            "--export",
            str(archive),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "VLLM_CPU_OMP_THREADS_BIND"},
    )
    built = json.loads(cold.stdout.split("AOT-RESULT ")[-1])
    assert built["stats"]["cache"]["status"] == "miss" and archive.is_file(), built
    result = _driver(cluster, "warm", str(tiny_model), str(archive), str(tmp_path / "node-b"))
    node_b = [node for node, res in result["nodes"].items() if res]
    assert result["node"] == node_b[0] != result["driver_node"]  # ran on the second node
    assert result["placed"]
    stats = result["stats"]
    assert stats["cache"]["status"] == "hit", stats["cache"]
    assert [r["cache"]["status"] for r in stats["ranks"]] == ["hit", "hit"]
    assert result["tokens"] == built["tokens"]
    assert result["alive_after_close"] == []


def test_vllms_own_ray_executor_refuses_the_cpu_platform(
    cluster: LocalRayCluster, tiny_model: Path
) -> None:
    result = _driver(cluster, "vllm-ray", str(tiny_model))
    # The translation refuses it before any engine starts, with this reason (0.20+).
    assert "does not support ray" in result["error"], result
