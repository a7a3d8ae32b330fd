"""Slow tests: torch.compile with persistent caches, AOTInductor packages, fall-backs.

Every compiled artifact comes from the session fixtures; fresh-process tests reuse the
same cache root, which is exactly what a second job start does. The compiled code holds
no weights: the torch.compile cache is built from ``alt_dir`` and the packages from a
config-only directory, and ``tiny_dir`` (same config, other weights) starts from both as
a cache hit with its own eager tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from aot_core import GenerationParams, SpecError
from aot_legacy import LegacyBackend
from aot_legacy.compiled_model import LegacyCompiledModel
from aot_legacy.packages import PackagedStep
from conftest import GREEDY, MAX_LEN, MAX_SEQS, PROMPTS, run_child, spec

pytestmark = pytest.mark.slow


def _tokens(m: LegacyCompiledModel, prompts: list = PROMPTS) -> list[tuple[int, ...]]:
    return [g.token_ids for g in m.generate(prompts, GREEDY)]


def _package_dir(m: LegacyCompiledModel) -> Path:
    return Path(m.stats.cache.path or "")


# ---------------------------------------------------------------- torch.compile tier


def test_compiled_matches_eager(compiled: LegacyCompiledModel, alt_eager_tokens: list) -> None:
    assert compiled.stats.resolved_config["tier"] == "compile"
    assert str(compiled.stats.resolved_config["weights"]).startswith("inputs")
    assert _tokens(compiled) == alt_eager_tokens
    # Batches of every bucket and a new prompt length reuse the dynamic graphs.
    assert [g.token_ids for g in compiled.generate(PROMPTS * 2, GREEDY)] == alt_eager_tokens * 2


def test_cold_compile_reports_a_miss(compiled: LegacyCompiledModel) -> None:
    s = compiled.stats
    assert s.cache.status == "miss" and "first compile" in s.cache.reason
    assert s.compile_time_s and s.compile_time_s > 1
    cache_dir = Path(str(s.resolved_config["cache_dir"]))
    assert any((cache_dir / "inductor").iterdir())


def test_warm_start_with_other_weights_in_a_fresh_process(
    compiled: LegacyCompiledModel,
    tiny_dir: Path,
    cache_root: Path,
    eager_tokens: list,
    alt_eager_tokens: list,
) -> None:
    # The cache was compiled from alt_dir's weights; tiny_dir has the same config.json.
    assert eager_tokens != alt_eager_tokens
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


def test_config_only_compile_builds_weight_free_packages(packaged: LegacyCompiledModel) -> None:
    s = packaged.stats
    assert s.resolved_config["tier"] == "package" and s.compile_mode == "aot-inductor"
    assert s.cache.status == "miss" and "built weight-free AOTInductor packages" in s.cache.reason
    assert s.resolved_config["placeholder_weights"] is True
    assert any(n.startswith("weights are placeholders") for n in s.notes)
    pkg = _package_dir(packaged)
    assert {"prefill.pt2", "decode.pt2", "manifest.json"} <= {p.name for p in pkg.iterdir()}
    manifest = json.loads((pkg / "manifest.json").read_text())
    # The build proved the packages load and run, in a child process, before recording them.
    assert manifest["probe"] == {"ok": True, "detail": ""}
    assert manifest["weights"]["binding"] == "inputs"
    assert "model.embed_tokens.weight" in manifest["weights"]["names"]
    for name in ("prefill.pt2", "decode.pt2"):
        loader = torch._C._aoti.AOTIModelPackageLoader(str(pkg / name), "model", False, 1, -1)
        assert loader.get_constant_fqns() == []  # no weight (no tensor at all) inside


def test_real_weights_start_from_config_only_packages(
    from_packages: LegacyCompiledModel, eager_tokens: list
) -> None:
    s = from_packages.stats
    assert s.resolved_config["tier"] == "package" and s.cache.status == "hit"
    assert s.resolved_config["placeholder_weights"] is False
    assert "no transformers" in str(s.resolved_config["model_loader"])
    assert _tokens(from_packages) == eager_tokens
    assert [g.token_ids for g in from_packages.generate(PROMPTS * 3, GREEDY)] == eager_tokens * 3


def test_other_weights_get_their_own_tokens_from_the_same_packages(
    from_packages: LegacyCompiledModel, alt_dir: Path, cache_root: Path, alt_eager_tokens: list
) -> None:
    with LegacyBackend().compile_model(alt_dir, spec(cache_dir=str(cache_root))) as m:
        assert m.stats.cache.status == "hit" and m.stats.resolved_config["tier"] == "package"
        assert _tokens(m) == alt_eager_tokens


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
    # Nothing was compiled: Inductor never looked anything up, and a start that sees only
    # token ids never imports transformers.
    assert not any(
        out["inductor_counters"].get(k) for k in ("fxgraph_cache_miss", "fxgraph_cache_hit")
    )
    assert out["transformers_imported_when_ready"] is False


def test_packaged_out_of_range_is_refused(from_packages: LegacyCompiledModel) -> None:
    with pytest.raises(SpecError, match="max_model_len"):
        from_packages.generate([[1] * MAX_LEN], GREEDY)
    (g,) = from_packages.generate([[1] * (MAX_LEN - 2)], GenerationParams(max_new_tokens=5))
    assert len(g.token_ids) <= 2 and g.finish_reason in ("length", "stop")


def test_packaged_step_checks_shapes_and_strides() -> None:
    from aot_legacy.options import StepPlan

    seen = []

    def fake(flat: list[torch.Tensor]) -> list[torch.Tensor]:
        seen.append(all(a.is_contiguous() for a in flat))
        return [torch.zeros(flat[0].shape[0], 3)]

    plan = StepPlan(
        max_batch=4, max_seq=16, buckets=(2, 4), compile_mode="default", dtype="float32"
    )
    kv = [torch.zeros(4, 16, 1, 2)]
    weights = [torch.ones(3, 2)]
    decode = PackagedStep(fake, kind="decode", plan=plan, kv=kv, weights=weights)
    prefill = PackagedStep(fake, kind="prefill", plan=plan, kv=kv, weights=weights)
    z = torch.zeros
    with pytest.raises(ValueError, match=r"batch 5 is outside the exported range \[2, 4\]"):
        decode(z(5, 1, dtype=torch.long), z(5, 1, dtype=torch.long), z(5, dtype=torch.long))
    with pytest.raises(ValueError, match="batch 1"):
        decode(z(1, 1, dtype=torch.long), z(1, 1, dtype=torch.long), z(1, dtype=torch.long))
    with pytest.raises(ValueError, match="prompt length 17"):
        prefill(z(2, 17, dtype=torch.long), z(2, 17, dtype=torch.long), z(2, 2, dtype=torch.long))
    # Prefill reads logits at [batch, K] positions, K in the exported range [2, max_seq].
    for picks in ((2,), (2, 1), (2, 17)):
        with pytest.raises(ValueError, match=r"last_index must be \[batch, K\]"):
            prefill(z(2, 8, dtype=torch.long), z(2, 8, dtype=torch.long), z(*picks).long())
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
    with LegacyBackend().compile_model(tiny_dir, s) as m:
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
    with LegacyBackend().compile_model(tiny_dir, s) as m:
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
