"""The usage log and ``aot usage``: concurrent writers (real processes), the bound, corrupt
lines, the saved/lost arithmetic (measured and estimated), bad input with its exit codes, and
``aot bench`` recording its runs (toy backend: the real command in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from aot_core.cli.command import ExitCode
from aot_core.usage import log as usage_log
from aot_core.usage import report as usage_report
from aot_core.usage.records import UsageRecord
from toy_command import aot, toy_env

WRITERS = 8
PER_WRITER = 200


def _record(**changes: Any) -> dict[str, Any]:
    base = UsageRecord(
        command="eval",
        model="smollm2-135m-instruct",
        model_path="/models/smollm2",
        backend="vllm",
        backend_version="0.32.0",
        spec_fingerprint="a" * 64,
        config_fingerprint="c" * 64,
        start="eager",
        dtype="float32",
        workload="eval smol_addition_mc, limit 20",
        workload_id="w1",
        start_s=10.0,
        job_s=100.0,
        compile_s=None,
        tokens_generated=400,
        tokens_scored=5000,
        timestamp="2026-12-07T08:00:00+00:00",
        aot_version="0.1.0",
    ).to_dict()
    return {**base, **changes}


_WRITER = """
import sys
import time
from pathlib import Path
from aot_core.usage import log as usage_log

root = Path(sys.argv[1])
writer, count, max_bytes = (int(a) for a in sys.argv[2:5])
record = {record!r}
(root / f"ready-{writer}").touch()
while not (root / "go").exists():  # all writers start together, so their appends interleave
    time.sleep(0.001)
largest = 0
for seq in range(count):
    path = usage_log.append(
        [dict(record, writer=writer, seq=seq)], cache_root=root, max_bytes=max_bytes
    )
    largest = max(largest, path.stat().st_size)
print(largest)
"""


def _run_writers(root: Path, max_bytes: int) -> list[int]:
    """WRITERS processes, each appending PER_WRITER records one at a time, all at once;
    returns the largest log size each saw after its appends."""
    script = textwrap.dedent(_WRITER).replace("{record!r}", repr(_record()))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(root), str(w), str(PER_WRITER), str(max_bytes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WRITERS)
    ]
    deadline = time.monotonic() + 120
    while len(list(root.glob("ready-*"))) < WRITERS and time.monotonic() < deadline:
        time.sleep(0.01)
    (root / "go").touch()
    sizes = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        sizes.append(int(out))
    return sizes


def _lines(root: Path) -> list[bytes]:
    return usage_log.log_path(root).read_bytes().split(b"\n")


def test_concurrent_writers_lose_and_tear_nothing(tmp_path: Path) -> None:
    _run_writers(tmp_path, max_bytes=usage_log.MAX_BYTES)
    lines = _lines(tmp_path)
    assert lines[-1] == b""  # every line complete
    assert json.loads(lines[0])[usage_log.HEADER_KEY] == usage_log.LOG_FORMAT
    records = [json.loads(line) for line in lines[1:-1]]  # any torn line fails here
    seen = sorted((r["writer"], r["seq"]) for r in records)
    assert seen == [(w, s) for w in range(WRITERS) for s in range(PER_WRITER)]
    contents = usage_log.read(tmp_path)
    assert contents.corrupt_lines == 0 and len(contents.records) == WRITERS * PER_WRITER
    parsed, bad = usage_report.parse_records(contents.records)
    assert bad == 0 and len(parsed) == WRITERS * PER_WRITER


def test_concurrent_writers_within_the_bound_keep_the_newest(tmp_path: Path) -> None:
    bound = 64 << 10  # the 1,600 records are about 1 MiB: trimmed many times over
    sizes = _run_writers(tmp_path, max_bytes=bound)
    assert max(sizes) <= bound
    data = usage_log.log_path(tmp_path).read_bytes()
    assert len(data) <= bound and data.endswith(b"\n")
    header, *lines = data.rstrip(b"\n").split(b"\n")
    assert json.loads(header)[usage_log.HEADER_KEY] == usage_log.LOG_FORMAT
    records = [json.loads(line) for line in lines]
    assert len(records) >= (bound // 2) // (len(lines[0]) + 1) // 2  # a trim keeps half
    by_writer: dict[int, list[int]] = {}
    for r in records:
        by_writer.setdefault(r["writer"], []).append(r["seq"])
    # A trim drops only the oldest lines: each writer keeps its newest, in order, none missing.
    for seqs in by_writer.values():
        assert seqs == list(range(seqs[0], PER_WRITER))
    assert records[-1]["seq"] == PER_WRITER - 1  # the last append of all is there


def test_corrupt_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    usage_log.append([_record()], cache_root=tmp_path)
    path = usage_log.log_path(tmp_path)
    with path.open("ab") as fh:
        fh.write(b"not json\n[1, 2]\n\xff\xfe binary\n")
        fh.write(json.dumps(_record(job_s="slow")).encode() + b"\n")  # wrong type
        fh.write(json.dumps({"start": "warm"}).encode() + b"\n")  # fields missing
        fh.write(b'{"torn": ')  # a writer that died mid-line
    usage_log.append([_record(start="warm", job_s=60.0, compile_s=2.0)], cache_root=tmp_path)
    assert path.read_bytes().splitlines()[-1].startswith(b'{"aot_version"')  # on its own line
    contents = usage_log.read(tmp_path)
    assert contents.corrupt_lines == 4  # not json, [1, 2], binary, torn
    records, invalid = usage_report.parse_records(contents.records)
    assert invalid == 2 and [r.start for r in records] == ["eager", "warm"]
    proc = aot(["--cache-dir", str(tmp_path), "usage"], dict(os.environ))
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "2 job(s); 6 corrupt line(s) skipped" in proc.stdout
    assert "+40.0 s" in proc.stdout  # 100 s eager, 60 s warm: measured


def _groups(*records: dict[str, Any]) -> list[usage_report.GroupUsage]:
    parsed, bad = usage_report.parse_records(records)
    assert bad == 0
    return usage_report.group_usage(parsed)


def test_measured_saving_and_loss_against_eager() -> None:
    (group,) = _groups(
        _record(job_s=100.0),
        _record(job_s=110.0),  # eager median 105
        _record(start="cold", job_s=150.0, compile_s=60.0),
        _record(start="warm", job_s=80.0, compile_s=3.0),
        _record(start="warm", job_s=90.0, compile_s=3.0),
    )
    assert group.basis == "measured" and group.eager_baseline_s == 105.0
    assert group.saved_s == pytest.approx(-45.0 + 25.0 + 15.0)
    assert group.jobs == {"eager": 2, "cold": 1, "warm": 2}
    assert group.time_spent_s == pytest.approx(530.0)
    assert "`aot tune smollm2-135m-instruct`" in usage_report.suggestion(group)
    (paying,) = _groups(_record(job_s=100.0), _record(start="warm", job_s=70.0, compile_s=1.0))
    assert paying.saved_s == pytest.approx(30.0) and usage_report.suggestion(paying) == ""


def test_estimated_without_eager_and_workloads_kept_apart() -> None:
    groups = _groups(
        _record(workload_id="other", workload="eval other_task"),  # eager, another workload
        _record(start="cold", job_s=150.0, compile_s=40.0),
        _record(start="warm", job_s=70.0, compile_s=5.0),
    )
    eager_only, compiled = groups
    assert eager_only.basis == "eager only" and eager_only.saved_s is None
    assert eager_only.eager_baseline_s == 100.0
    assert compiled.basis == "estimated"
    assert compiled.saved_s == pytest.approx(-45.0)  # compile/load time counted as lost
    assert compiled.eager_baseline_s == pytest.approx((110.0 + 65.0) / 2)
    assert "estimated" in usage_report.suggestion(compiled)
    text = usage_report.format_report(groups, path=Path("log"), jobs=3, corrupt=0, recording=True)
    assert "-45.0 s (est.)" in text and usage_report.ESTIMATE_NOTE in text
    assert compiled.to_dict()["basis"] == "estimated"
    # The same configuration in another dtype, or on another backend, is another group.
    assert len(_groups(_record(), _record(config_fingerprint="d" * 64), _record(backend="x"))) == 3


def _write_log(root: Path, *records: dict[str, Any]) -> None:
    usage_log.append(list(records), cache_root=root)


def _usage(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return aot(["--cache-dir", str(root), "usage", *args], {**os.environ, **env})


def test_model_filter_and_json(tmp_path: Path) -> None:
    _write_log(
        tmp_path,
        _record(),
        _record(start="warm", job_s=90.0, compile_s=1.0),
        _record(model="./other", model_path="/models/other"),
    )
    proc = _usage(tmp_path, "--model", "smollm2", "--json")  # the directory's name
    assert proc.returncode == ExitCode.OK, proc.stderr
    out = json.loads(proc.stdout)
    assert out["jobs"] == 2 and len(out["groups"]) == 1
    assert out["groups"][0]["saved_s"] == 10.0 and out["groups"][0]["basis"] == "measured"
    proc = _usage(tmp_path, "--model", "no-such-model")
    assert proc.returncode == ExitCode.USAGE
    assert "no job of that model" in proc.stderr
    assert "./other, smollm2-135m-instruct" in proc.stderr  # what it does have


def test_bad_input_has_documented_codes(tmp_path: Path) -> None:
    proc = _usage(tmp_path, AOT_USAGE_LOG="maybe")
    assert proc.returncode == ExitCode.USAGE and "AOT_USAGE_LOG" in proc.stderr
    empty = _usage(tmp_path)
    assert empty.returncode == ExitCode.OK and "no jobs in the usage log" in empty.stdout
    # A file at the log's path that aot did not write: refused, left byte for byte.
    path = usage_log.log_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("my own notes\n")
    proc = _usage(tmp_path)
    assert proc.returncode == ExitCode.CACHE_NOT_WRITABLE and "did not write it" in proc.stderr
    with pytest.raises(usage_log.UsageLogNotOwnedError):
        usage_log.append([_record()], cache_root=tmp_path)
    assert path.read_text() == "my own notes\n"
    path.unlink()
    path.mkdir()  # unreadable as a log
    proc = _usage(tmp_path)
    assert proc.returncode == ExitCode.CACHE_NOT_WRITABLE and "not a regular file" in proc.stderr
    path.rmdir()
    # --plot without matplotlib (hidden here): exit 12 before anything is read.
    hide = tmp_path / "no-mpl" / "matplotlib"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    proc = _usage(tmp_path, "--plot", str(tmp_path / "u.png"), PYTHONPATH=str(hide.parent))
    assert proc.returncode == ExitCode.MISSING_DEPENDENCY and "matplotlib" in proc.stderr


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return toy_env(tmp_path, monkeypatch)


BENCH = ["bench", "--backend", "toy", "--repeats", "1", "--max-new-tokens", "8"]


def test_aot_bench_records_its_runs_and_the_opt_out(env: dict[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = aot(BENCH, env)
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    records, bad = usage_report.parse_records(usage_log.read(cache).records)
    assert bad == 0 and sorted(r.start for r in records) == ["cold", "eager", "warm"]
    assert {(r.command, r.backend, r.dtype) for r in records} == {("bench", "toy", "float32")}
    assert len({r.config_fingerprint for r in records}) == 1  # eager pairs with compiled
    assert all(r.job_s > 0 and r.tokens_generated > 0 for r in records)
    report = aot(["usage", "--json"], env)
    (group,) = json.loads(report.stdout)["groups"]
    assert group["basis"] == "measured" and group["jobs"] == {"eager": 1, "cold": 1, "warm": 1}
    off = aot(BENCH, {**env, "AOT_USAGE_LOG": "0"})
    assert off.returncode == ExitCode.OK
    assert len(usage_log.read(cache).records) == 3  # nothing added


def test_an_unwritable_usage_log_never_fails_the_bench(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / usage_log.USAGE_DIR).write_text("a file where the directory goes")
    proc = aot(BENCH, env)
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    assert proc.stderr.count("not recorded in the usage log") == 1
    assert "eager vs AOT warm start" in proc.stdout
