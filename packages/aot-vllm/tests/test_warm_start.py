"""Cold then warm start in fresh processes, and a damaged cache entry refused, not replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fresh_start import SCRIPT, start_fresh
from read_only_mount import can_mount_read_only, run_read_only

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cold_warm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("warm-cache")
    cold = start_fresh(tiny_model, cache)
    warm = start_fresh(tiny_model, cache)
    return {"cache": cache, "cold": cold, "warm": warm}


def test_cold_then_warm_start_reports_a_hit_with_the_same_tokens(
    cold_warm: dict[str, Any],
) -> None:
    cold, warm = cold_warm["cold"]["stats"], cold_warm["warm"]["stats"]
    assert cold["cache"]["status"] == "miss", cold["cache"]
    assert warm["cache"]["status"] == "hit", warm["cache"]
    assert warm["cache"]["path"] == cold["cache"]["path"]
    assert cold_warm["warm"]["tokens"] == cold_warm["cold"]["tokens"]
    # How much faster a warm start is, is a benchmark's figure (benchmarks/vllm_bench.py,
    # `aot bench`), not a test's: a loaded machine can make it anything. Printed only so a
    # log taken with -s or -rP shows it.
    for name, stats in (("cold", cold), ("warm", warm)):
        warmup = stats["startup_phases"]["compile_warmup"]
        print(f"{name} start {stats['startup_s']:.1f} s, compile_warmup {warmup:.1f} s")


def test_a_read_only_cache_serves_a_warm_start(cold_warm: dict[str, Any], tiny_model: Path) -> None:
    # The same cache on read-only media (an NFS export, say): served as a hit, untouched.
    cache: Path = cold_warm["cache"]
    if not can_mount_read_only(cache.parent):
        pytest.skip("needs root and `unshare -m` to mount the cache read-only")
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    argv = ["env", "OMP_NUM_THREADS=1", "PYTHONUNBUFFERED=1", sys.executable, str(SCRIPT)]
    proc = run_read_only(cache, [*argv, str(tiny_model), str(cache)], timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("AOT-RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("AOT-RESULT ") :])
    assert result["stats"]["cache"]["status"] == "hit", result["stats"]["cache"]
    assert result["tokens"] == cold_warm["cold"]["tokens"]
    assert not any("sealed" in w for w in result["warnings"]), result["warnings"]
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before
    # It ran from a verified scratch copy (Inductor locks files even to load), now gone.
    scratch = Path(os.environ["AOT_CACHE_DIR"]) / "scratch"
    assert scratch.is_dir() and not any(scratch.iterdir())


def test_a_damaged_cache_entry_is_refused_and_rebuilt_once_moved_away(
    cold_warm: dict[str, Any], tiny_model: Path, tmp_path: Path
) -> None:
    # aot deletes or replaces only bytes its manifest vouches for: a compiled file whose
    # bytes changed might be anyone's, so the start refuses the entry and changes nothing
    # (before, it moved the entry aside and compiled again).
    entry = Path(cold_warm["warm"]["stats"]["cache"]["path"])
    # Inductor's cache, or vLLM's AOT artifact (the CPU default for one rank) in its own.
    compiled = sorted(
        p
        for p in (entry / "files").rglob("*")
        if p.is_file() and {"inductor", "torch_compile_cache"} & set(p.relative_to(entry).parts)
    )
    assert compiled, "the cold start should have written compiled files"
    victim = next((p for p in compiled if p.suffix == ".so"), compiled[0])
    victim.write_bytes(b"\x00" * 64)  # corrupt one compiled file
    before = sorted((p, p.read_bytes()) for p in entry.rglob("*") if p.is_file())
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_model), str(cold_warm["cache"])],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=900,
        check=False,
    )
    assert proc.returncode != 0
    assert "NotOwnedError" in proc.stderr and victim.name in proc.stderr, proc.stderr[-3000:]
    assert "move it away yourself" in proc.stderr
    assert sorted((p, p.read_bytes()) for p in entry.rglob("*") if p.is_file()) == before
    # The user looks, moves it away; the next start compiles a fresh entry in its place.
    entry.rename(tmp_path / "damaged-entry")
    again = start_fresh(tiny_model, cold_warm["cache"])
    assert again["stats"]["cache"]["status"] == "miss", again["stats"]["cache"]
    assert again["stats"]["cache"]["path"] == str(entry)
    assert again["tokens"] == cold_warm["cold"]["tokens"]
