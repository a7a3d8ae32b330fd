"""Slow tests: torch.compile with persistent caches, AOTInductor packages, fall-backs.

Every compiled artifact comes from the session fixtures; fresh-process tests reuse the
same cache root, which is exactly what a second job start does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from aot_core import GenerationParams, SpecError
from aot_legacy import IntegratedAOTCompiler
from aot_legacy.compiled_model import LegacyCompiledModel
from aot_legacy.packages import PackagedStep
from conftest import GREEDY, MAX_LEN, MAX_SEQS, PROMPTS, run_child, spec

pytestmark = pytest.mark.slow


def _tokens(m: LegacyCompiledModel, prompts: list = PROMPTS) -> list[tuple[int, ...]]:
    return [g.token_ids for g in m.generate(prompts, GREEDY)]


def _package_dir(m: LegacyCompiledModel) -> Path:
    return Path(m.stats.cache.path or "")


# ---------------------------------------------------------------- torch.compile tier


def test_compiled_matches_eager(compiled: LegacyCompiledModel, eager_tokens: list) -> None:
    assert compiled.stats.resolved_config["tier"] == "compile"
    assert _tokens(compiled) == eager_tokens
    # Batches of every bucket and a new prompt length reuse the dynamic graphs.
    assert [g.token_ids for g in compiled.generate(PROMPTS * 2, GREEDY)] == eager_tokens * 2


def test_cold_compile_reports_a_miss(compiled: LegacyCompiledModel) -> None:
    s = compiled.stats
    assert s.cache.status == "miss" and "first compile" in s.cache.reason
    assert s.compile_time_s and s.compile_time_s > 1
    cache_dir = Path(str(s.resolved_config["cache_dir"]))
    assert any((cache_dir / "inductor").iterdir())


def test_warm_start_in_a_fresh_process(
    compiled: LegacyCompiledModel, tiny_dir: Path, cache_root: Path, eager_tokens: list
) -> None:
    child_spec = json.dumps(
        {"max_model_len": MAX_LEN, "max_num_seqs": MAX_SEQS, "backend_options": {"aoti": False}}
    )
    out = run_child(str(tiny_dir), str(cache_root), child_spec)
    assert [tuple(t) for t in out["tokens"]] == eager_tokens
    stats = out["stats"]
    assert stats["resolved_config"]["tier"] == "compile"
    assert stats["cache"]["status"] == "hit", stats["cache"]
    assert out["inductor_counters"].get("fxgraph_cache_miss", 0) == 0
    assert stats["compile_time_s"] < compiled.stats.compile_time_s


# ---------------------------------------------------------------- AOTInductor packages


def test_packaged_matches_eager(packaged: LegacyCompiledModel, eager_tokens: list) -> None:
    s = packaged.stats
    assert s.resolved_config["tier"] == "package" and s.compile_mode == "aot-inductor"
    assert s.cache.status == "miss" and "built AOTInductor packages" in s.cache.reason
    names = {p.name for p in _package_dir(packaged).iterdir()}
    assert {"prefill.pt2", "decode.pt2", "manifest.json"} <= names
    # The build proved the packages load, in a child process, and remembered it.
    (probe,) = (p for p in _package_dir(packaged).iterdir() if p.name.startswith("probe-"))
    assert json.loads(probe.read_text())["ok"] is True
    assert _tokens(packaged) == eager_tokens
    assert [g.token_ids for g in packaged.generate(PROMPTS * 3, GREEDY)] == eager_tokens * 3


def test_pt2_round_trip_in_a_fresh_process(
    packaged: LegacyCompiledModel, tiny_dir: Path, cache_root: Path, eager_tokens: list
) -> None:
    child_spec = json.dumps({"max_model_len": MAX_LEN, "max_num_seqs": MAX_SEQS})
    out = run_child(str(tiny_dir), str(cache_root), child_spec)
    assert [tuple(t) for t in out["tokens"]] == eager_tokens
    stats = out["stats"]
    assert stats["resolved_config"]["tier"] == "package"
    assert stats["cache"]["status"] == "hit" and stats["cache"]["load_time_s"] > 0
    assert "package_load" in stats["startup_phases"]
    # Nothing was compiled: Inductor never looked anything up.
    assert not any(
        out["inductor_counters"].get(k) for k in ("fxgraph_cache_miss", "fxgraph_cache_hit")
    )


def test_packaged_out_of_range_is_refused(packaged: LegacyCompiledModel) -> None:
    with pytest.raises(SpecError, match="max_model_len"):
        packaged.generate([[1] * MAX_LEN], GREEDY)
    (g,) = packaged.generate([[1] * (MAX_LEN - 2)], GenerationParams(max_new_tokens=5))
    assert len(g.token_ids) <= 2 and g.finish_reason in ("length", "stop")


def test_packaged_step_checks_shapes_and_strides() -> None:
    from aot_legacy.options import StepPlan

    seen = []

    def fake(*args: torch.Tensor) -> torch.Tensor:
        seen.append(all(a.is_contiguous() for a in args))
        return torch.zeros(args[0].shape[0], 3)

    plan = StepPlan(
        max_batch=4, max_seq=16, buckets=(2, 4), compile_mode="default", dtype="float32"
    )
    kv = [torch.zeros(4, 16, 1, 2)]
    decode = PackagedStep(fake, kind="decode", plan=plan, kv=kv)
    prefill = PackagedStep(fake, kind="prefill", plan=plan, kv=kv)
    z = torch.zeros
    with pytest.raises(ValueError, match=r"batch 5 is outside the exported range \[2, 4\]"):
        decode(z(5, 1, dtype=torch.long), z(5, 1, dtype=torch.long), z(5, dtype=torch.long))
    with pytest.raises(ValueError, match="batch 1"):
        decode(z(1, 1, dtype=torch.long), z(1, 1, dtype=torch.long), z(1, dtype=torch.long))
    with pytest.raises(ValueError, match="prompt length 17"):
        prefill(z(2, 17, dtype=torch.long), z(2, 17, dtype=torch.long), z(2, dtype=torch.long))
    strided = z(2, 8, dtype=torch.long)[:, :1]  # the stride layout that crashed packaged code
    assert not strided.is_contiguous()
    decode(strided, strided, z(2, dtype=torch.long))
    assert seen == [True]


def _copy_package(packaged: LegacyCompiledModel, dest: Path) -> Path:
    shutil.copytree(_package_dir(packaged), dest)
    return dest


def test_incompatible_package_falls_back_to_compile(  # noqa: PLR0917
    packaged: LegacyCompiledModel,
    compiled: LegacyCompiledModel,
    tiny_dir: Path,
    cache_root: Path,
    tmp_path: Path,
    eager_tokens: list,
) -> None:
    pkg = _copy_package(packaged, tmp_path / "pkg")
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["environment"]["torch"] = "2.5.0"
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    s = spec(cache_dir=str(cache_root), backend_options={"package_dir": str(pkg)})
    with IntegratedAOTCompiler().compile_model(tiny_dir, s) as m:
        assert m.stats.resolved_config["tier"] == "compile"
        assert "torch: built for '2.5.0'" in m.stats.cache.reason
        assert any("AOTInductor package refused" in n for n in m.stats.notes)
        assert _tokens(m) == eager_tokens  # the warm compile cache serves the fall-back


def test_corrupt_package_falls_back_to_compile(  # noqa: PLR0917
    packaged: LegacyCompiledModel,
    compiled: LegacyCompiledModel,
    tiny_dir: Path,
    cache_root: Path,
    tmp_path: Path,
    eager_tokens: list,
) -> None:
    pkg = _copy_package(packaged, tmp_path / "pkg")
    data = (pkg / "decode.pt2").read_bytes()
    (pkg / "decode.pt2").write_bytes(data[: len(data) // 2])
    s = spec(cache_dir=str(cache_root), backend_options={"package_dir": str(pkg)})
    with IntegratedAOTCompiler().compile_model(tiny_dir, s) as m:
        assert m.stats.resolved_config["tier"] == "compile"
        assert "does not match its checksum" in m.stats.cache.reason
        assert _tokens(m) == eager_tokens


def test_no_cxx_compiler_falls_back_to_eager(
    tiny_dir: Path, tmp_path: Path, eager_tokens: list
) -> None:
    # CPU kernels need a C++ compiler; a CUDA build would not, so pin the CPU.
    child_spec = json.dumps(
        {"max_model_len": MAX_LEN, "max_num_seqs": MAX_SEQS, "backend_options": {"device": "cpu"}}
    )
    out = run_child(str(tiny_dir), str(tmp_path), child_spec, env={"CXX": "/nonexistent/g++"})
    assert [tuple(t) for t in out["tokens"]] == eager_tokens
    stats = out["stats"]
    assert stats["resolved_config"]["tier"] == "eager"
    assert stats["cache"]["status"] == "disabled"
    assert "torch.compile failed" in stats["cache"]["reason"]
