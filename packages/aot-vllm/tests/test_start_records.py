"""What a start records and reads back, without an engine: cache verdicts from its
evidence, start-up phases, the log capture, cache entries and stats."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from aot_core.artifacts import ownership_problem
from aot_core.spec import CompileSpec
from aot_vllm.cache import CacheEntry, CacheWarning, FileState
from aot_vllm.evidence import StartEvidence, decide_cache_outcome, startup_phases
from aot_vllm.vllm_logs import LogRecordLine, logging_config, read_records


def _rec(t: float, message: str) -> LogRecordLine:
    return LogRecordLine(time=t, pid=1, level="INFO", logger="vllm.x", message=message)


def _ev(**kw: object) -> StartEvidence:
    base: dict[str, object] = {
        "compiles": True,
        "cache_disabled": False,
        "entry_state": "intact",
        "entry_problem": "",
        "path": "/c",
        "before": {},
        "after": {},
        "records": [],
        "counters_before": None,
        "counters_after": None,
    }
    base.update(kw)
    return StartEvidence(**base)  # type: ignore[arg-type]


def test_outcome_aot_load_failure_is_a_miss_with_vllms_reason() -> None:
    line = (
        "[backbone] Compiling model again due to a load failure from /c/torch_aot_compile/abc/"
        "rank_0_0/model, reason: 'function' object has no attribute 'finalize_loading'"
    )
    out = decide_cache_outcome(_ev(records=[_rec(1, line)]), load_time_s=1.0)
    assert out.status == "miss"
    assert "finalize_loading" in out.reason and "failed to load" in out.reason


def test_outcome_hits_and_misses_from_each_kind_of_evidence() -> None:
    aot = decide_cache_outcome(
        _ev(records=[_rec(1, "Directly load AOT compilation from path /c/x/model")]),
        load_time_s=0.5,
    )
    assert aot.status == "hit" and aot.load_time_s == 0.5
    # The outcome names the entry (as every other outcome does); vLLM's file is in the reason.
    assert aot.path == _ev().path and "/c/x/model" in aot.reason
    code = {"inductor/ab/x.so": FileState(size=10, mtime_ns=1)}
    first = decide_cache_outcome(_ev(before={}, after=code, entry_state="absent"), load_time_s=1)
    assert first.status == "miss" and "first compile" in first.reason
    reused = decide_cache_outcome(_ev(before=code, after=dict(code)), load_time_s=1)
    assert reused.status == "hit"
    from aot_vllm.evidence import Counters

    counted = decide_cache_outcome(
        _ev(counters_before=Counters(), counters_after=Counters(inductor={"fxgraph_cache_hit": 2})),
        load_time_s=1,
    )
    assert counted.status == "hit" and "FX-graph" in counted.reason
    assert decide_cache_outcome(_ev(compiles=False), load_time_s=None).status == "disabled"
    assert decide_cache_outcome(_ev(cache_disabled=True), load_time_s=None).status == "disabled"
    assert decide_cache_outcome(_ev(), load_time_s=None).status == "unknown"


def test_startup_phases_split_at_log_markers() -> None:
    records = [
        _rec(12.0, "Starting to load model /m..."),
        _rec(13.0, "Warming up model for the compilation..."),
        _rec(20.0, "Warming up done."),
        _rec(20.5, "init engine (profile, create kv cache, warmup model) took 8.50 s"),
    ]
    phases = startup_phases(records, t_start=0.0, t_imported=10.0, t_ready=21.0)
    assert phases == {
        "import": 10.0,
        "engine_setup": 2.0,
        "model_load": 1.0,
        "compile_warmup": 7.0,
        "kv_cache": 0.5,
        "frontend": 0.5,
    }


def test_logging_config_keeps_user_handlers_and_adds_capture(tmp_path: Path) -> None:
    user = {
        "version": 1,
        "handlers": {"mine": {"class": "logging.NullHandler"}},
        "loggers": {"vllm": {"handlers": ["mine"], "level": "WARNING"}},
    }
    config = logging_config(tmp_path / "x.log", base=user)
    assert config["loggers"]["vllm"]["handlers"] == ["mine", "aot_capture"]
    assert config["loggers"]["vllm"]["level"] == "INFO"
    import logging
    import logging.config

    logging.config.dictConfig(logging_config(tmp_path / "y.log"))
    logging.getLogger("vllm.compilation").info("saved AOT compiled function to %s", "/p")
    for h in logging.getLogger("vllm").handlers:
        h.flush()
    (record,) = read_records(tmp_path / "y.log")
    assert record.message == "saved AOT compiled function to /p" and record.time <= time.time()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"vllm": {"handlers": [], "level": "INFO"}},
        }
    )


def _sealed_entry(tmp_path: Path) -> CacheEntry:
    spec = CompileSpec(cache_dir=str(tmp_path / "store"))
    entry = CacheEntry(spec=spec, model="org/model", backend_version="0.1.0")
    with entry.locked():
        assert entry.open().state == "absent"
        (entry.inductor_dir / "ab").mkdir(parents=True)
        (entry.inductor_dir / "ab" / "kernel.so").write_bytes(b"\x7fELF compiled code")
        entry.seal(device="cpu", extra={"cache_path": "inductor"})
    return entry


def test_cache_entry_round_trip(tmp_path: Path) -> None:
    entry = _sealed_entry(tmp_path)
    with entry.locked():
        opened = entry.open()
    assert opened.state == "intact"
    assert opened.extra["cache_path"] == "inductor"


def test_damaged_cache_entry_is_refused_with_a_warning(tmp_path: Path) -> None:
    # A missing file: replacing the entry loses nothing. (A file whose bytes differ is not
    # provably aot's and is refused with NotOwnedError: test_cache_ownership.py.)
    entry = _sealed_entry(tmp_path)
    kernel = entry.inductor_dir / "ab" / "kernel.so"
    kernel.unlink()
    with entry.locked(), pytest.warns(CacheWarning, match="compiled again"):
        opened = entry.open()
    assert opened.state == "refused" and opened.problem
    # The damaged files are gone; the fresh entry starts empty, and provably aot's.
    assert not kernel.exists() and entry.inductor_dir.is_dir()
    assert ownership_problem(entry.path) is None


def test_stats_json_round_trip_of_a_recorded_start(tmp_path: Path) -> None:
    # Stats from a real start (test_engine writes one) must survive JSON; here the shape.
    from aot_core.stats import OptimizationStats

    stats = OptimizationStats(
        backend="vllm", startup_phases={"import": 1.0}, resolved_config={"counters": {"a": 1}}
    )
    assert OptimizationStats.from_json(stats.to_json()) == stats
    assert json.loads(stats.to_json())["resolved_config"]["counters"] == {"a": 1}


def test_model_inspection_results_are_shared_between_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "aot-home"))
    first = _sealed_entry(tmp_path)
    info = first.vllm_root / "modelinfos" / "llama.json"
    info.parent.mkdir(parents=True)
    info.write_text('{"hash": "h", "modelinfo": {}}')
    first.share_modelinfos()
    other = CacheEntry(
        spec=CompileSpec(cache_dir=str(tmp_path / "store"), max_num_seqs=4),
        model="org/model",
        backend_version="0.1.0",
    )
    assert other.key != first.key
    with other.locked():
        other.open()
        assert other.seed_modelinfos() == 1
    assert (other.vllm_root / "modelinfos" / "llama.json").read_text() == info.read_text()
    # Machine-wide: an entry in another cache directory finds them too.
    elsewhere = CacheEntry(
        spec=CompileSpec(cache_dir=str(tmp_path / "other-store")),
        model="org/model",
        backend_version="0.1.0",
    )
    with elsewhere.locked():
        elsewhere.open()
        assert elsewhere.seed_modelinfos() == 1
    assert (tmp_path / "aot-home" / "shared" / "vllm-modelinfos" / "llama.json").is_file()


def test_compile_warmup_split_from_torch_timers() -> None:
    from aot_vllm.evidence import BACKEND_COMPILE, DYNAMO_TOTAL, Counters, compile_warmup_split

    before = Counters(compile_seconds={DYNAMO_TOTAL: 1.0, BACKEND_COMPILE: 0.5})
    after = Counters(compile_seconds={DYNAMO_TOTAL: 5.0, BACKEND_COMPILE: 3.5})
    split = compile_warmup_split(before, after, 6.5)
    # Dynamo took 4 s of which the backend (Inductor) 3 s; the other 2.5 s ran the model.
    assert split == {
        "dynamo_trace_s": 1.0,
        "inductor_compile_or_load_s": 3.0,
        "warmup_runs_s": 2.5,
    }
    assert compile_warmup_split(None, after, 6.5) == {}  # engine in another process
    assert compile_warmup_split(before, after, None) == {}
