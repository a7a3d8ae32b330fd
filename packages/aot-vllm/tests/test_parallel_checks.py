"""Several ranks without an engine: what is refused before a start, how ranks are bound to
cores, how each rank's evidence is read, and a cache entry built for another world size."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aot_core import artifacts
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec
from aot_core.stats import CacheOutcome, RankStats
from aot_vllm import engine_env, process_tree, ranks
from aot_vllm.cache import ArtifactIncompatibleWorld, CacheEntry
from aot_vllm.kv_sizing import bytes_per_token, cpu_kv_cache_size
from aot_vllm.parallel import (
    World,
    check_model_split,
    check_resources,
    layer_split,
    model_split_problems,
)
from aot_vllm.vllm_logs import LogRecordLine

TINY = {  # the built-in tiny Llama's shape
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "hidden_size": 128,
    "vocab_size": 260,
    "max_position_embeddings": 512,
}


def _world(tp: int = 1, pp: int = 1) -> World:
    return World(tensor_parallel_size=tp, pipeline_parallel_size=pp)


def test_the_tiny_llama_splits_in_two_both_ways() -> None:
    assert model_split_problems(TINY, _world(tp=2)) == []
    assert model_split_problems(TINY, _world(pp=2)) == []
    assert model_split_problems(TINY, _world(tp=4)) == []  # 2 KV heads replicate over 4


def test_a_model_that_does_not_split_is_refused_with_the_numbers(tmp_path: Path) -> None:
    problems = model_split_problems(TINY, _world(tp=3))
    assert "its 4 attention heads do not divide into 3 ranks" in problems
    assert any("2 KV heads" in p for p in problems)
    assert any("intermediate_size 256" in p for p in problems)
    assert any("vocabulary (260, padded to 320" in p for p in problems)
    assert model_split_problems(TINY, _world(pp=3)) == [
        "its 2 layer(s) cannot fill 3 pipeline stages"
    ]
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(SpecError, match=r"cannot be split into tensor_parallel_size=3") as err:
        check_model_split(CompileSpec(tensor_parallel_size=3), tmp_path)
    assert err.value.field == "tensor_parallel_size"


def test_an_uneven_pipeline_split_is_noted_as_vllm_makes_it(tmp_path: Path) -> None:
    assert layer_split(7, 3) == [2, 3, 2] and layer_split(8, 3) == [3, 3, 2]
    assert layer_split(4, 2) == [2, 2]
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "num_hidden_layers": 5}))
    note = check_model_split(CompileSpec(pipeline_parallel_size=2), tmp_path)
    assert note == "pipeline stages hold [3, 2] of the 5 layers (vLLM's uneven split)"


def test_more_ranks_than_cores_or_devices_is_refused() -> None:
    check_resources(_world(tp=2), is_cpu=True, cores=2, devices=None)
    with pytest.raises(SpecError, match=r"needs one CPU core per rank, and this process may use 2"):
        check_resources(_world(tp=2, pp=2), is_cpu=True, cores=2, devices=None)
    with pytest.raises(SpecError, match=r"needs one device per rank, and 1 are visible"):
        check_resources(_world(tp=2), is_cpu=False, cores=64, devices=1)
    check_resources(_world(tp=8), is_cpu=False, cores=64, devices=None)  # a Ray cluster


def test_thread_binding_splits_the_allowed_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    two = engine_env.cpu_threads_bind(ranks=2, cores=[0, 1], numa_nodes=1)
    assert (two.value, two.chosen_by) == ("0|1", "aot-vllm")
    assert two.env == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    wide = engine_env.cpu_threads_bind(ranks=2, cores=[0, 1, 2, 3, 4, 6, 7, 8, 9], numa_nodes=1)
    assert wide.value == "0-3|4,6-8"
    numa = engine_env.cpu_threads_bind(ranks=2, cores=list(range(8)), numa_nodes=2)
    assert (numa.value, numa.chosen_by, dict(numa.env)) == ("auto", "vllm", {})


def test_the_users_thread_binding_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1|0")
    bind = engine_env.cpu_threads_bind(ranks=2, cores=[0, 1], numa_nodes=1)
    assert (bind.value, bind.chosen_by, dict(bind.env)) == ("1|0", "user", {})
    assert "the user's VLLM_CPU_OMP_THREADS_BIND='1|0' is kept" in bind.note


def test_the_binding_is_part_of_the_engine_environment(tmp_path: Path) -> None:
    bind = engine_env.ThreadBinding(value="0|1", chosen_by="aot-vllm", env={"X": "1"}, note="")
    choice = engine_env.CompileCacheChoice(cache=engine_env.CompileCache.INDUCTOR, env={})
    env = engine_env.engine_environment(
        translated={}, compile_cache=choice, inductor_dir=tmp_path, inline=False, threads_bind=bind
    )
    assert env["X"] == "1" and env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"


def test_each_rank_sizes_its_kv_cache_for_its_share(tmp_path: Path) -> None:
    one = bytes_per_token(TINY, "float32", None)
    assert bytes_per_token(TINY, "float32", None, tensor_parallel_size=2) == one // 2
    assert bytes_per_token(TINY, "float32", None, pipeline_parallel_size=2) == one // 2
    # More ranks than KV heads: vLLM replicates one head per rank.
    assert bytes_per_token(TINY, "float32", None, tensor_parallel_size=4) == one // 2
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    spec = CompileSpec(dtype="float32", max_model_len=256, max_num_seqs=8, tensor_parallel_size=2)
    size = cpu_kv_cache_size(spec, tmp_path, total_memory=64 << 30)
    assert not isinstance(size, str)
    assert size.nbytes == 9 * 256 * (one // 2)
    assert "per rank (x 2 ranks)" in size.reason


def _record(pid: int, message: str, t: float = 100.0) -> LogRecordLine:
    return LogRecordLine(time=t, pid=pid, level="INFO", logger="vllm", message=message)


WARM = [
    _record(11, "world_size=2 rank=0 local_rank=0 distributed_init_method=file:///x backend=gloo"),
    _record(12, "world_size=2 rank=1 local_rank=1 distributed_init_method=file:///x backend=gloo"),
    _record(11, "Warming up model for the compilation...", 100.0),
    _record(12, "Warming up model for the compilation...", 100.5),
    _record(11, "fx graph cache hit for key fab12cd", 101.0),
    _record(12, "fx graph cache hit for key fcd34ef", 101.0),
    _record(11, "AOTAutograd cache hit for key aaa111", 101.0),
    _record(11, "Warming up done.", 108.0),
    _record(12, "Warming up done.", 109.5),
]


def test_each_ranks_verdict_time_and_files_come_from_its_own_process() -> None:
    present = [
        "inductor/fxgraph/ab/fab12cd/entry",
        "inductor/fxgraph/cd/fcd34ef/entry",
        "inductor/aotautograd/aaa111/entry",
        "inductor/kernels/shared.so",
        "vllm/torch_compile_cache/h/rank_1_0/backbone/graph.py",
    ]
    read = ranks.read_ranks(WARM, _world(tp=2), peaks={11: 700, 12: 800}, present=present)
    assert [r.stats.pid for r in read] == [11, 12]
    assert [r.stats.cache.status for r in read] == ["hit", "hit"]
    assert [r.stats.compile_time_s for r in read] == [8.0, 9.0]
    assert [r.stats.peak_memory_bytes for r in read] == [700, 800]
    assert read[0].files == (
        "inductor/aotautograd/aaa111/entry",
        "inductor/fxgraph/ab/fab12cd/entry",
    )
    assert read[1].files == (
        "inductor/fxgraph/cd/fcd34ef/entry",
        "vllm/torch_compile_cache/h/rank_1_0/backbone/graph.py",
    )


def test_a_start_is_a_hit_only_when_every_rank_hits() -> None:
    entry = CacheOutcome(status="hit", reason="no compiled file written", path="/e")
    hit = RankStats(rank=0, cache=CacheOutcome(status="hit", reason="loaded"))
    miss = RankStats(rank=1, cache=CacheOutcome(status="miss", reason="compiled 1 graph"))
    unknown = RankStats(rank=1, cache=CacheOutcome(status="unknown", reason="no line"))
    both = ranks.combined_outcome([hit, hit.__class__(rank=1, cache=hit.cache)], entry)
    assert both.status == "hit" and both.reason.startswith("every rank (2) loaded")
    one_missed = ranks.combined_outcome([hit, miss], entry)
    assert one_missed.status == "miss" and "rank(s) 1 compiled" in one_missed.reason
    unsure = ranks.combined_outcome([hit, unknown], entry)
    assert unsure.status == "hit" and "rank 1: unknown" in unsure.reason  # the entry's verdict


def test_a_rank_that_compiled_is_a_miss_and_a_silent_one_unknown() -> None:
    compiled = [_record(5, "fx graph cache miss for key fzz")]
    assert ranks.rank_cache(compiled, load_time_s=None).status == "miss"
    assert ranks.rank_cache([], load_time_s=None).status == "unknown"
    failed = [_record(5, "Compiling model again due to a load failure from /p, reason: boom")]
    assert ranks.rank_cache(failed, load_time_s=None).reason.endswith("boom")


def test_the_rank_whose_process_died_first_is_named() -> None:
    pids = ranks.rank_pids(WARM)
    assert pids == {11: 0, 12: 1}
    died = ranks.describe_death({12: 130.0, 11: 131.0, 99: 120.0}, pids, _world(tp=2), t_start=100)
    assert died.startswith(
        "rank 1 (tensor-parallel rank 1, pipeline stage 0, pid 12) exited 30.0 s"
    )
    assert ranks.describe_death({}, pids, _world(tp=2), t_start=100) == ""


def test_an_entry_built_for_another_world_is_refused_and_kept(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))
    tp1 = CompileSpec(cache_dir=str(tmp_path / "store"))
    entry = CacheEntry(spec=tp1, model=str(model), backend_version="0.1.0")
    # An entry compiled for two ranks, found where this one-rank start looks.
    (entry.path / "files" / "inductor").mkdir(parents=True)
    (entry.path / "files" / "inductor" / "k.so").write_bytes(b"\x7fELF")
    tp2 = tp1.replace(tensor_parallel_size=2)
    key2 = artifacts.entry_key(backend="vllm", backend_version="0.1.0", model=model, spec=tp2)
    artifacts.write_manifest(
        entry.path, key=key2, backend="vllm", backend_version="0.1.0", spec=tp2, model=model
    )
    with entry.locked(), pytest.raises(ArtifactIncompatibleWorld) as err:
        entry.open()
    assert "built for tensor_parallel_size=2" in str(err.value)
    assert (entry.path / "manifest.json").is_file()


def test_ranks_are_found_by_vllms_process_titles_too() -> None:
    titles = {
        21: "VLLM::Worker_PP1_TP0",
        22: "VLLM::Worker_PP0_TP1",
        23: "VLLM::EngineCore",
        24: "/usr/bin/python -c spawn",
    }
    assert ranks.rank_pids_from_titles(titles, _world(tp=2, pp=2)) == {21: 2, 22: 1}
    assert ranks.rank_pids_from_titles({5: "VLLM::Worker_TP1"}, _world(tp=2)) == {5: 1}


def test_a_start_whose_worker_died_is_not_left_waiting_forever() -> None:
    """A worker gone for the grace period while the engine starts: the engine core is killed,
    so vLLM's start fails (on 0.27.1 it waited for the dead worker forever)."""
    core = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        memory = process_tree.PeakMemory(dead_worker_grace_s=30.0)
        memory.titles = {core.pid: "VLLM::EngineCore", 999_999: "VLLM::Worker_TP1"}
        memory.gone = {999_999: time.time() - 5.0}
        memory._stop_a_stalled_engine()
        assert memory.stopped_stalled == [] and core.poll() is None  # still within the grace
        memory.gone = {999_999: time.time() - 31.0}
        memory._stop_a_stalled_engine()
        assert memory.stopped_stalled == [core.pid]
        assert core.wait(timeout=10) != 0
    finally:
        core.kill()
        core.wait()
