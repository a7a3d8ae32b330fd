"""``aot bench`` plumbing: medians, the report, the plot, and worker failures.

The numbers here are made-up inputs to pure functions; real measurements come from
``aot bench`` itself (see test_cli_e2e.py for the end-to-end runs).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from aot_core.bench import run as bench
from aot_core.bench.run import Failure
from aot_core.spec import CompileSpec
from bench_support import bench_result, record


def test_median_stats_takes_medians_and_skips_failures() -> None:
    runs = [
        record("warm", startup=10.0, tps=100.0, mem=1000),
        record("warm", startup=30.0, tps=300.0, mem=3001),
        record("warm", startup=20.0, tps=200.0, mem=2000),
        record("warm", startup=0, tps=0, mem=0, ok=False),
    ]
    med = bench.median_stats(runs)
    assert med is not None
    assert med.startup_s == 20.0
    assert med.output_tokens_per_s == 200.0
    assert med.peak_host_memory_bytes == 2000
    assert med.startup_phases["compile"] == 10.0
    assert med.cache.status == "hit" and med.cache.load_time_s == 0.5
    assert bench.median_stats([record("warm", startup=0, tps=0, mem=0, ok=False)]) is None


def test_report_has_before_after_tables_with_directions() -> None:
    runs = [
        record("eager", startup=10.0, tps=100.0, mem=2 << 20),
        record("cold", startup=40.0, tps=180.0, mem=3 << 20),
        record("warm", startup=8.0, tps=200.0, mem=3 << 20),
    ]
    text = bench.format_report(bench_result(runs))
    assert "eager vs AOT warm start" in text and "AOT cold compile vs warm start" in text
    assert "skipped other: needs a GPU" in text
    assert "greedy tokens, compiled vs eager: identical" in text
    assert "warm-start cache: hit (r)" in text
    startup = next(line for line in text.splitlines() if line.startswith("startup (s)"))
    assert "-20.0% better" in startup  # eager 10 s -> warm 8 s
    tps = next(line for line in text.splitlines() if line.startswith("output tokens/s"))
    assert "+100.0% better" in tps
    assert "torch 2.13.0, vllm -, python 3.11" in text  # the versions the backends pin
    data = json.loads(json.dumps(bench_result(runs).to_dict()))  # the --json payload is plain JSON
    b = data["backends"]["b"]
    assert b["tokens_match_eager"] is True and b["warm_cache"] == ["hit (r)"]
    assert b["median"]["warm"]["startup_s"] == 8.0
    assert [r["phase"] for r in b["runs"]] == ["eager", "cold", "warm"]
    assert set(b["comparisons"]) == {"eager_vs_warm", "eager_vs_cold", "cold_vs_warm"}
    assert b["comparisons"]["eager_vs_warm"]["after_label"] == "AOT warm"


def test_report_flags_different_tokens_and_failures() -> None:
    runs = [
        record("eager", startup=10.0, tps=100.0, mem=1, tokens=[[1, 2, 3]]),
        record("cold", startup=40.0, tps=180.0, mem=1, tokens=[[1, 2, 4]]),
        record("warm", startup=0, tps=0, mem=0, ok=False),
    ]
    failure = Failure(backend="b", phase="warm", repeat=1, error="worker exited with status 1")
    result = bench_result(runs, (failure,))
    text = bench.format_report(result)
    assert "compiled vs eager: DIFFERENT (0/1 prompts identical; prompt 0 departs at" in text
    assert "generated token 2" in text
    assert "1 run(s) FAILED" in text and "b warm repeat 1" in text


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = [
        record("eager", startup=10.0, tps=100.0, mem=1),
        record("cold", startup=40.0, tps=180.0, mem=1),
        record("warm", startup=8.0, tps=200.0, mem=1),
    ]
    out = tmp_path / "bench.png"
    bench.plot(bench_result(runs), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_worker_failure_is_reported_with_its_log(tmp_path: Path) -> None:
    rec = bench.run_worker(
        backend="no-such-backend",
        phase="eager",
        model=tmp_path,
        artifact=tmp_path / "a",
        spec=CompileSpec(),
        prompts=[[1, 2]],
        max_new_tokens=2,
        timeout_s=120,
        log=tmp_path / "w.log",
    )
    assert rec.ok is False
    assert "worker exited with status 1" in rec.error
    assert "no-such-backend" in rec.error or "no aot backend" in rec.error
    assert rec.log is not None and Path(rec.log).is_file()
    assert rec.to_dict()["ok"] is False and "result" not in rec.to_dict()


def test_prompts_are_fixed_byte_tokens() -> None:
    prompts = bench.bench_prompts()
    assert prompts == bench.bench_prompts()
    assert len(prompts) == 4 and all(0 <= t < 256 for p in prompts for t in p)


def test_worker_module_has_no_heavy_imports() -> None:
    import subprocess

    code = (
        "import sys, aot_core.bench.worker, aot_core.cli.app, aot_core.bench.run,"
        " aot_core.artifacts, aot_core.cli.workflow, aot_core.bench.fresh_process,"
        " aot_core.bench.results;"
        "print([m for m in ('torch', 'vllm', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_results_record_whether_bytecode_was_precompiled(tmp_path: Path) -> None:
    import importlib.util
    import py_compile

    pkg = tmp_path / "withpyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (tmp_path / "nopyc").mkdir()
    (tmp_path / "nopyc" / "__init__.py").write_text("")
    py_compile.compile(
        str(pkg / "__init__.py"), cfile=importlib.util.cache_from_source(str(pkg / "__init__.py"))
    )
    sys.path.insert(0, str(tmp_path))
    try:
        found = bench.bytecode_precompiled(("withpyc", "nopyc", "no_such_package_here"))
    finally:
        sys.path.remove(str(tmp_path))
    assert found == {"withpyc": True, "nopyc": False, "no_such_package_here": None}
    runs = [record("eager", startup=1.0, tps=1.0, mem=1)]
    result = bench_result(runs)
    text = bench.format_report(
        dataclasses.replace(
            result, machine={**result.machine, "bytecode_precompiled": {"vllm": False}}
        )
    )
    assert "bytecode precompiled (.pyc present): vllm NO" in text


def test_decode_limit_is_bandwidth_over_weight_bytes_times_batch() -> None:
    from aot_core.bench.machine_limits import DecodeLimit, measure_copy_bandwidth

    limit = DecodeLimit(bandwidth_bytes_per_s=8e9, weight_bytes=2 * 10**9, batch=4)
    assert limit.tokens_per_s == pytest.approx(16.0)
    assert "16 tokens/s" in limit.describe() and "batch 4" in limit.describe()
    assert measure_copy_bandwidth(1 << 20, repeats=2) > 0
    runs = [
        record("eager", startup=1.0, tps=8.0, mem=1),
        record("cold", startup=1.0, tps=12.0, mem=1),
        record("warm", startup=1.0, tps=12.0, mem=1),
    ]
    result = bench_result(runs)
    settings = {**result.settings, "decode_limit_tokens_per_s": 16.0}
    text = bench.format_report(dataclasses.replace(result, settings=settings))
    assert (
        "output tokens/s vs the bandwidth limit of 16: eager 8 (50%), AOT warm start 12 (75%)"
        in text
    )
