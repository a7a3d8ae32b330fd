"""A third backend, installed from a test-only distribution, works everywhere aot-core
chooses, pins, verifies and benchmarks (packages/aot-core/tests/plugins/aot-toybackend).

The nox ``core`` session installs it; nothing in aot-core names it. Each test drives the
installed ``aot`` command in a fresh process, as a user would.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest
from aot_core import artifacts, get_backend, registry
from aot_core.cli.app import ExitCode
from aot_core.errors import ArtifactIncompatibleError
from aot_core.models.tiny import write_tiny_llama
from aot_core.spec import CompileSpec
from artifact_support import rewrite_manifest
from backend_requirements import skip_or_fail
from toy_command import aot, toy_env

if importlib.util.find_spec("aot_toybackend") is None:  # `core` installs it: a failure there
    skip_or_fail("toy", "the test-only toy backend is not installed")
toy = importlib.import_module("aot_toybackend")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return toy_env(tmp_path, monkeypatch)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_tiny_llama(tmp_path / "tiny-llama")


def test_listed_by_aot_backends_and_chosen_by_get_backend(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = {b["name"]: b for b in json.loads(aot(["backends", "--check", "--json"], env).stdout)}
    assert listed["toy"]["usable"] is True
    assert listed["toy"]["distribution"] == "aot-toybackend"
    assert listed["toy"]["description"] == toy.ToyCompiler.description
    assert get_backend("toy") is toy.ToyCompiler
    monkeypatch.setenv("AOT_BACKEND", "toy")
    assert get_backend() is toy.ToyCompiler
    monkeypatch.delenv("AOT_BACKEND")
    if list(registry.installed_backends()) == ["toy"]:
        assert get_backend() is toy.ToyCompiler  # the only backend: chosen by priority


def test_compiled_artifact_is_pinned_verified_and_refused_on_a_pin_mismatch(
    env: dict[str, str], model: Path
) -> None:
    first = aot(["compile", str(model), "--backend", "toy"], env)
    assert first.returncode == ExitCode.OK, first.stderr
    entry = Path(first.stdout.splitlines()[0])
    manifest = artifacts.read_manifest(entry)
    assert manifest.backend == "toy" and dict(manifest.pins) == toy.ToyCompiler.pins()
    assert any(f.path.startswith("files/toy-bigram/") for f in manifest.files)
    assert aot(["cache", "verify"], env).returncode == ExitCode.OK
    # The command's one resolution, each value with its source, beside the backend's stats.
    resolved = manifest.extra["resolved"]
    assert resolved["dtype"]["value"] == manifest.spec["dtype"] == "float32"
    assert resolved["dtype"]["source"] in ("machine", "model config")
    assert resolved["max_model_len"]["source"].startswith("examples")
    assert resolved["cache_dir"]["value"] == str(entry / artifacts.FILES_DIR)

    # The artifact loads (a cache hit) only through verification.
    spec = CompileSpec(cache_dir=str(entry / artifacts.FILES_DIR))
    with toy.ToyCompiler(spec).compile_model(model, spec) as loaded:
        assert loaded.stats.cache.status == "hit"

    # As built by a toy whose table format was 0: a consistent manifest, another pin.
    rewrite_manifest(entry, lambda d: d["pins"].update({"aot-toybackend-table": "0"}))
    bad = aot(["cache", "verify"], env)
    assert bad.returncode == ExitCode.ARTIFACT_INCOMPATIBLE
    assert "built for aot-toybackend-table 0" in bad.stdout
    with pytest.raises(ArtifactIncompatibleError, match="aot-toybackend-table"):
        toy.ToyCompiler(spec).compile_model(model, spec)

    again = aot(["compile", str(model), "--backend", "toy"], env)
    assert again.returncode == ExitCode.OK
    assert "existing artifact not used, compiling afresh" in again.stderr
    assert aot(["cache", "verify"], env).returncode == ExitCode.OK


def test_runs_in_aot_bench(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--backend", "toy", "--repeats", "1", "--max-new-tokens", "8"]
    proc = aot([*args, "--json", str(out)], env)
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    assert "== toy " in proc.stdout and "eager vs AOT warm start" in proc.stdout
    result = json.loads(out.read_text())
    summary = result["backends"]["toy"]
    assert summary["tokens_match_eager"] is True
    assert summary["warm_cache"] == ["hit (verified artifact)"]
    assert result["machine"]["aot-toybackend-table"] == "1"  # the pins it declares


def test_without_a_cache_dir_it_keeps_its_table_in_the_aot_store(
    env: dict[str, str], model: Path
) -> None:
    compiler = toy.ToyCompiler(CompileSpec())
    with compiler.compile_model_aot(model, [[72, 105]]) as cold:
        assert cold.stats.cache.status == "hit"  # loaded back from the published entry
        tokens = cold.generate([[72, 105]])[0].token_ids
    (key,) = artifacts.ArtifactStore().entry_keys()
    assert artifacts.verify(artifacts.ArtifactStore().path(key)).ok
    eager = toy.ToyCompiler(CompileSpec(compile_mode="none")).compile_model(model)
    assert eager.generate([[72, 105]])[0].token_ids == tokens


def test_bench_workload_options_and_latency(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--backend", "toy", "--repeats", "1", "--new-tokens", "6", "--prompts", "6"]
    proc = aot([*args, "--prompt-mix", "mixed", "--json", str(out)], env)
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    settings = json.loads(out.read_text())["settings"]
    lengths = settings["prompt_lengths"]
    assert settings["prompts"] == 6 and settings["max_new_tokens"] == 6
    # every second prompt fills the context beside the new tokens: 256 - 6
    assert lengths[1::2] == [250, 250, 250] and max(lengths[0::2]) < 64
    assert settings["workload"].startswith("mixed")
    assert settings["spec"]["max_num_batched_tokens"] == 64  # so chunked prefill splits them
    assert settings["spec"]["max_num_seqs"] == 6
    # The one resolution every run got, each value with its source.
    resolved = settings["resolved"]
    assert resolved["max_num_seqs"] == {"value": 6, "source": "command default"}
    assert resolved["max_model_len"] == {"value": 256, "source": "command default"}
    assert resolved["dtype"]["value"] == settings["spec"]["dtype"] == "float32"
    assert resolved["dtype"]["source"] in ("machine", "model config")
    latency = json.loads(out.read_text())["backends"]["toy"]["latency"]
    assert set(latency) == {"cold", "warm", "eager"}
    for lat in latency.values():
        assert 0 < lat["ttft_p50_s"] <= lat["ttft_p95_s"]
        # a bigram lookup per token: below the noise of the one-token call, so possibly 0
        assert 0 <= lat["token_p50_s"] <= lat["token_p95_s"]
        assert lat["probed_prompts"] == 6
    assert "time to first token p50" in proc.stdout and "(mixed: short prompts" in proc.stdout
    # the tiny Llama's weights over this machine's measured bandwidth, batch 6
    assert settings["decode_limit_tokens_per_s"] > 0
    assert "decode limit from memory bandwidth" in proc.stdout
