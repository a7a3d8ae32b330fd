"""``aot compile`` and ``aot bench`` end to end with the real backends (slow).

Each test runs the installed ``aot`` command in a subprocess on the built-in tiny Llama and
skips when the backend is not installed or cannot run here, except in a session that
installed it (``AOT_REQUIRE_BACKENDS``), where that fails. They assert behaviour (exit
codes, a verified artifact, reuse, refusal of a tampered one, identical greedy tokens);
the numbers are what ``aot bench`` prints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aot_core import artifacts
from aot_core.cli.app import ExitCode
from aot_core.models.tiny import write_tiny_llama
from aot_core.usage import log as usage_log
from backend_requirements import require_usable
from cli_support import AOT, aot

pytestmark = pytest.mark.slow


@pytest.fixture(params=["vllm", "legacy"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    require_usable(name)
    return name


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AOT_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_llama(tmp_path / "tiny-llama")


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.toml"
    # No KV-cache size for vLLM: aot-vllm sizes it from max_num_seqs x max_model_len on CPU.
    path.write_text('compile_mode = "default"\nmax_model_len = 256\nmax_num_seqs = 4\n')
    return path


def test_compile_reuse_and_tamper_recovery(
    backend: str, tiny: Path, spec_file: Path, env: dict[str, str]
) -> None:
    args = ["compile", str(tiny), "--backend", backend, "--spec", str(spec_file)]
    first = aot(args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    # engines log to stdout too, so ask the cache where the entry is
    listed = json.loads(aot(["cache", "ls", "--json"], env).stdout)
    assert len(listed) == 1 and listed[0]["loadable_here"]
    entry = Path(listed[0]["path"])
    assert first.stdout.splitlines()[0] == str(entry)  # engine logs went to stderr
    report = artifacts.verify(entry)
    assert report.ok and report.manifest is not None
    assert report.manifest.backend == backend and report.manifest.files
    assert aot(["cache", "verify"], env).returncode == 0

    again = aot(args, env)
    assert again.returncode == 0
    assert "already exists" in again.stderr

    victim = max(report.manifest.files, key=lambda f: f.size)
    path = entry / victim.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    bad = aot(["cache", "verify"], env)
    assert bad.returncode == ExitCode.ARTIFACT_CORRUPT and victim.path in bad.stdout

    # Bytes that differ from the manifest are not provably aot's (issue 23: a copied
    # manifest must not make a directory deletable), so the entry is neither loaded nor
    # rebuilt over (until 2026-12 it was rebuilt); verify says to move it away, not clear it.
    refused = aot(args, env)
    assert refused.returncode == ExitCode.CACHE_NOT_WRITABLE, refused.stderr[-3000:]
    assert victim.path in refused.stderr and path.read_bytes() == bytes(data)
    assert "move it away yourself" in bad.stdout
    assert aot(["cache", "clear", entry.name], env).returncode == ExitCode.CACHE_NOT_WRITABLE
    path.unlink()  # the user's decision; an entry missing a file is aot's again
    recovered = aot(args, env)
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    assert "existing artifact not used, compiling afresh" in recovered.stderr
    assert artifacts.verify(entry).ok


def test_sigint_during_compile_leaves_no_loadable_entry(
    backend: str, tiny: Path, spec_file: Path, env: dict[str, str], tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [*AOT, "compile", str(tiny), "--backend", backend, "--spec", str(spec_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    entries = tmp_path / "cache" / "entries"
    deadline = time.monotonic() + 300
    while not (entries.is_dir() and any(".staging-" in p.name for p in entries.iterdir())):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(15)  # well into the compile
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.INTERRUPTED, err[-3000:]
    store = artifacts.ArtifactStore(tmp_path / "cache")
    assert store.entry_keys() == []  # nothing half-written was published
    assert "interrupted" in err


def test_bench_end_to_end(backend: str, env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = aot(
        ["bench", "--backend", backend, "--repeats", "1", "--max-new-tokens", "8",
         "--json", str(out)],
        env,
        timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eager vs AOT warm start" in proc.stdout
    assert "[3/3]" in proc.stderr  # progress was shown
    result = json.loads(out.read_text())
    assert result["failures"] == [] and result["skipped"] == {}
    _assert_warm_hit_and_same_tokens(result["backends"][backend])
    _assert_usage_logged(tmp_path / "cache", backend)


def _assert_usage_logged(cache: Path, backend: str) -> None:
    """Each of the bench's three starts is a job in aot's usage log (`aot usage`)."""
    usage = usage_log.read(cache)
    assert usage.corrupt_lines == 0
    assert sorted(r["start"] for r in usage.records) == ["cold", "eager", "warm"]
    assert {(r["command"], r["backend"]) for r in usage.records} == {("bench", backend)}


def _assert_warm_hit_and_same_tokens(b: dict[str, Any]) -> None:
    """One backend's summary: every start ran, every warm start was a verified hit, and
    compiled starts generated eager's tokens."""
    for phase in ("eager", "cold", "warm"):
        assert b["median"][phase] is not None, phase
        assert b["median"][phase]["output_tokens_per_s"] > 0
    runs = {phase: [r for r in b["runs"] if r["phase"] == phase] for phase in PHASES}
    assert all(len(rs) == 1 and rs[0]["ok"] for rs in runs.values()), b["runs"]
    # Every warm start a hit by the backend's own evidence ("miss (...)" is an outcome too).
    for run in runs["warm"]:
        assert run["result"]["stats"]["cache"]["status"] == "hit", run["result"]["stats"]
    assert [c.split(" (")[0] for c in b["warm_cache"]] == ["hit"] * len(runs["warm"])
    eager_tokens = runs["eager"][0]["result"]["tokens"]
    assert eager_tokens and all(eager_tokens)
    for phase in ("cold", "warm"):
        assert runs[phase][0]["result"]["tokens"] == eager_tokens, phase
    assert b["tokens_match_eager"] is True


PHASES = ("eager", "cold", "warm")


def test_bench_end_to_end_on_the_real_model(
    backend: str, env: dict[str, str], tmp_path: Path
) -> None:
    """`aot bench smollm2-135m-instruct`: the GGUF converted into a fresh cache, one chat
    question in float32, a verified warm hit, compiled == eager tokens, and the answer,
    shown as text eager beside compiled, names Paris. A legacy cold compile of the real
    model takes minutes on 2 cores, hence the timeouts."""
    out = tmp_path / "bench.json"
    proc = aot(
        ["bench", "smollm2-135m-instruct", "--backend", backend, "--repeats", "1",
         "--prompt-mix", "chat", "--prompts", "1", "--new-tokens", "12",
         "--show-generations", "1", "--timeout", "1500", "--json", str(out)],
        env,
        timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failures"] == [] and result["skipped"] == {}
    assert result["settings"]["spec"]["dtype"] == "float32"
    ready = result["settings"]["model_ready"]
    assert ready["converted"] is True and ready["reused_s"] is not None  # a fresh cache
    assert "model ready from GGUF SmolLM2-135M-Instruct.Q4_1.gguf" in proc.stdout
    assert "[3/3]" in proc.stderr  # progress was shown
    _assert_warm_hit_and_same_tokens(result["backends"][backend])
    _assert_usage_logged(tmp_path / "cache", backend)
    (shown,) = result["generations"]
    assert shown["prompt"] == "What is the capital of France?"
    assert "Paris" in shown["eager"], shown
    assert shown["compiled"] == shown["eager"] and shown["identical"] is True
    assert f"  compiled: {shown['compiled']}  [identical tokens]" in proc.stdout


def test_bench_writes_only_under_the_cache_dir(tmp_path: Path) -> None:
    """`aot --cache-dir X bench` with $HOME unwritable, on the real legacy backend.

    $HOME lies below a regular file, so nothing can be created there, not even by root; the
    run must still finish, with the built-in model and everything else under X.
    """
    require_usable("legacy")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("no home here")
    env = {k: v for k, v in os.environ.items() if k not in ("AOT_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(blocker / "home"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cache = tmp_path / "x"
    out = tmp_path / "bench.json"
    proc = aot(
        ["--cache-dir", str(cache), "bench", "--backend", "legacy", "--repeats", "1",
         "--max-new-tokens", "4", "--json", str(out), "--timeout", "900"],
        env,
        timeout=2400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failures"] == []
    assert result["backends"]["legacy"]["tokens_match_eager"] is True
    (model,) = (cache / "models").iterdir()
    assert Path(result["model_path"]) == model
    assert list((cache / "tmp").iterdir()) == []  # the temporary work directory is gone
    assert not (blocker / "home").exists()
