"""Tensor and pipeline parallel engines: real multi-rank starts through vLLM's multiprocessing
executor, cold and warm on every rank, from an exported artifact, and what is refused.

Every start runs in a fresh process (``start_parallel.py``). Engine tests are gated
(conftest): ``multi_rank`` ones run in the default suite on one release, ``parallel_extra``
ones in ``nox -s vllm_parallel``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from aot_core.artifacts import ArtifactStore, import_artifact, read_manifest
from aot_vllm.cache import CacheEntry
from aot_vllm.start_setup import aot_vllm_version
from fresh_start import run_fresh
from start_parallel import spec_for

SCRIPT = Path(__file__).with_name("start_parallel.py")

pytestmark = pytest.mark.slow


def _start(model: Path, cache: Path, *extra: str) -> dict[str, Any]:
    # aot-vllm decides VLLM_CPU_OMP_THREADS_BIND (checked below), so none is inherited
    return run_fresh(
        SCRIPT, model, cache, *extra, timeout=1800, unset=("VLLM_CPU_OMP_THREADS_BIND",)
    )


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in result, result["error"]
    return result


@pytest.fixture(scope="module")
def tp2(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """TP=1 eager (the reference), TP=2 compiled cold into store A and exported, the
    artifact imported into store B as on another machine, TP=2 warm from B."""
    root = tmp_path_factory.mktemp("tp2")
    archive = root / "tp2.tar"
    eager1 = _ok(_start(tiny_model, root / "eager1", "--tp", "1", "--mode", "none"))
    cold = _ok(_start(tiny_model, root / "a", "--tp", "2", "--export", str(archive)))
    entry, manifest, placed = import_artifact(archive, ArtifactStore(root / "b"))
    assert placed
    warm = _ok(_start(tiny_model, root / "b", "--tp", "2"))
    return {"eager1": eager1, "cold": cold, "warm": warm, "imported": entry, "manifest": manifest}


@pytest.mark.multi_rank
def test_tp2_compiled_tokens_equal_tp1_eager(tp2: dict[str, Any]) -> None:
    reference = tp2["eager1"]["tokens"]
    assert tp2["cold"]["tokens"] == reference
    assert tp2["warm"]["tokens"] == reference


@pytest.mark.parallel_extra
def test_tp2_eager_tokens_equal_tp1_eager(
    tp2: dict[str, Any], tiny_model: Path, tmp_path: Path
) -> None:
    eager2 = _ok(_start(tiny_model, tmp_path / "eager2", "--tp", "2", "--mode", "none"))
    assert eager2["tokens"] == tp2["eager1"]["tokens"]
    assert eager2["stats"]["cache"]["status"] == "disabled"
    assert eager2["alive_after_close"] == []


@pytest.mark.multi_rank
def test_tp2_cold_compiles_and_warm_hits_on_every_rank(tp2: dict[str, Any]) -> None:
    cold, warm = tp2["cold"]["stats"], tp2["warm"]["stats"]
    assert cold["cache"]["status"] == "miss", cold["cache"]
    assert warm["cache"]["status"] == "hit", warm["cache"]
    assert "every rank (2)" in warm["cache"]["reason"]
    for stats, status in ((cold, "miss"), (warm, "hit")):
        ranks = stats["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        assert [r["tensor_parallel_rank"] for r in ranks] == [0, 1]
        assert len({r["pid"] for r in ranks}) == 2  # two worker processes
        for rank in ranks:
            assert rank["cache"]["status"] == status, rank
            assert rank["compile_time_s"] is not None and rank["compile_time_s"] > 0
            assert rank["peak_memory_bytes"] > 0
    # Loading compiled code is cheaper than compiling it, on each rank.
    for c, w in zip(cold["ranks"], warm["ranks"], strict=True):
        assert w["compile_time_s"] < c["compile_time_s"]


@pytest.mark.multi_rank
def test_the_artifact_records_the_world_and_each_ranks_files(tp2: dict[str, Any]) -> None:
    manifest = read_manifest(tp2["imported"])
    assert manifest.world_size == (2, 1)
    listed = {f.path for f in manifest.files}
    assert [r.rank for r in manifest.ranks] == [0, 1]
    for rank in manifest.ranks:
        assert rank.files and set(rank.files) <= listed
        assert any("/fxgraph/" in f for f in rank.files)  # its own Inductor graph
    # The warm start from the imported copy kept the same record.
    warm_entry = Path(tp2["warm"]["entry"])
    assert warm_entry == tp2["imported"]


@pytest.mark.multi_rank
def test_cpu_thread_binding_is_chosen_and_noted(tp2: dict[str, Any]) -> None:
    stats = tp2["cold"]["stats"]
    config = stats["resolved_config"]
    assert config["tensor_parallel_size"] == 2
    assert config["distributed_executor_backend"] == "mp"
    if len(os.sched_getaffinity(0)) == 2:
        assert config["cpu_threads_bind"] == "0|1"
        assert config["cpu_threads_bind_chosen_by"] == "aot-vllm"
    assert any("CPU thread binding" in n for n in stats["notes"])


@pytest.mark.multi_rank
def test_no_rank_process_is_left_after_close(tp2: dict[str, Any]) -> None:
    for name in ("cold", "warm"):
        result = tp2[name]
        assert len(result["engine_pids_seen"]) >= 3, name  # engine core + two workers
        assert result["alive_after_close"] == [], name


@pytest.mark.multi_rank
def test_a_rank_killed_mid_start_is_named_and_the_others_are_stopped(
    tiny_model: Path, tmp_path: Path
) -> None:
    result = _start(tiny_model, tmp_path / "kill", "--tp", "2", "--kill-rank", "1")
    assert result["killed"], "the worker of rank 1 was never seen"
    error = result.get("error", "")
    assert error.startswith("CompilationError: rank 1 (tensor-parallel rank 1"), error
    assert f"pid {result['killed']['pid']}" in error
    assert result["alive_after_close"] == []


@pytest.mark.parallel_extra
def test_pp2_compiled_tokens_equal_tp1_eager(
    tp2: dict[str, Any], tiny_model: Path, tmp_path: Path
) -> None:
    result = _ok(_start(tiny_model, tmp_path / "pp2", "--pp", "2"))
    assert result["tokens"] == tp2["eager1"]["tokens"]
    ranks = result["stats"]["ranks"]
    assert [r["pipeline_parallel_rank"] for r in ranks] == [0, 1]
    assert result["alive_after_close"] == []


@pytest.mark.multi_rank
def test_an_artifact_for_tp2_is_refused_for_tp1(
    tp2: dict[str, Any], tiny_model: Path, tmp_path: Path
) -> None:
    # The TP=2 artifact placed where a TP=1 start of the same model looks for its own
    # entry: refused before any engine starts, with the numbers, and left in place.
    store = tmp_path / "probe"
    entry = CacheEntry(
        spec=spec_for(str(store), tp=1), model=str(tiny_model), backend_version=aot_vllm_version()
    )
    shutil.copytree(tp2["imported"], entry.path)
    refused = _start(tiny_model, store, "--tp", "1")
    assert refused["error"].startswith("ArtifactIncompatibleWorld"), refused["error"]
    assert "built for tensor_parallel_size=2 x pipeline_parallel_size=1" in refused["error"]
    assert "asks for tensor_parallel_size=1" in refused["error"]
    assert (entry.path / "manifest.json").is_file()  # refused, not moved aside
    assert refused["engine_pids_seen"] == []
