"""``aot tune`` on the real legacy backend: a small sweep (eager, compiled cold and warm, each
a fresh process running real torch), its report and best spec, and its resume after an
interruption without redoing the finished trials.

Kept short: the tiny model, two prompts of 8 new tokens, the torch.compile tier only
(``aoti = false``: AOTInductor packages would add minutes of compiling)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aot_core.cli.command import load_spec

pytestmark = pytest.mark.slow


def _tune(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AOT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("AOT_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-m", "aot_core", "tune", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


def _ran(stderr: str) -> list[str]:
    """The trials a run started (its progress lines ending in "...")."""
    return [
        line.split("] ", 1)[1].split(" ", 1)[1]
        for line in stderr.splitlines()
        if line.startswith("aot: [") and line.endswith(" ...")
    ]


def test_a_legacy_sweep_reports_writes_the_best_spec_and_resumes(
    tiny_dir: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.toml"
    base.write_text("max_model_len = 64\n\n[backend_options]\naoti = false\n")
    out, work = tmp_path / "best.toml", tmp_path / "work"
    args = [str(tiny_dir), "--knob", "backend=legacy", "--knob", "dtype=float32"]
    args += ["--prompts", "2", "--new-tokens", "8", "--spec", str(base), "--jobs", "2"]
    args += ["--out", str(out), "--work-dir", str(work)]
    first = _tune(args, tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-3000:]
    trials = ["legacy float32 seqs 2 eager", "legacy float32 seqs 2 cold"]
    assert _ran(first.stderr) == [f"{t} ..." for t in [*trials, "legacy float32 seqs 2 warm"]]
    for column in ("start", "job", "tokens/s", "memory", "parity"):
        assert column in first.stdout
    assert "reference (float32)" in first.stdout
    assert first.stdout.count("identical") == 2, first.stdout  # compiled == eager tokens
    assert "per setup, 2 job(s)" in first.stdout and "best for 2 job(s): legacy" in first.stdout
    assert "compiling" in first.stdout  # pays, pays only from job N, or does not pay

    spec = load_spec(str(out))  # the file aot compile | bench | eval --spec read
    assert spec.max_model_len == 64 and spec.dtype == "float32" and spec.max_num_seqs == 2
    assert dict(spec.backend_options) == {"aoti": False}
    records = [json.loads(x) for x in (work / "trials.jsonl").read_text().splitlines()]
    assert [r["trial"]["phase"] for r in records] == ["eager", "cold", "warm"]
    assert records[2]["started"] == "warm" and records[2]["cache"] == "hit", records[2]

    # Interrupted before the warm trial's record was written: only it runs again, from the
    # cold trial's compiled files.
    (work / "trials.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records[:2]) + '{"key": "torn'
    )
    again = _tune(args, tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _ran(again.stderr) == ["legacy float32 seqs 2 warm ..."]
    assert "2 already finished" in again.stderr
    assert [f"{t}: kept" in again.stderr for t in trials] == [True, True]
    assert "started cold" not in again.stdout
