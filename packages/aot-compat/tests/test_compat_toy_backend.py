"""The old API runs on a backend it was never written for: the test-only toy backend
(packages/aot-core/tests/plugins/aot-toybackend, installed in `compat(combo='legacy')`).

Nothing in aot-compat names it; it is chosen through aot-core's registry like any other.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
from aot_compat import BackendFallbackWarning
from broken_import import choose_with_broken
from engines.shared import create_enhanced_compiler
from session_expectations import skip_or_fail

if importlib.util.find_spec("aot_toybackend") is None:
    skip_or_fail("toy", "the test-only toy backend is not installed")


def test_named_by_aot_backend_it_runs_the_old_calls(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AOT_BACKEND", "toy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendFallbackWarning)
        compiler = create_enhanced_compiler(enable_cuda_graphs=True, cache_dir=str(tmp_path))
    assert compiler.backend_id == "toy" and "AOT_BACKEND" in compiler.choice.reason
    model = compiler.compile_model_aot(str(tiny_model_dir), [[72, 105]], {"max_seq_len": 64})
    (out,) = model.generate([list(b"Hello")], max_tokens=4)
    assert len(out.token_ids) == 4 and out.prompt_token_ids == tuple(b"Hello")
    stats = compiler.get_optimization_stats()
    assert stats["backend"] == "toy" and stats["vllm_available"] is False
    assert stats["compilation_system"] == compiler.choice.compiler.description
    assert stats.optimization_stats is not None and stats["output_tokens_per_s"] > 0
    compiler.close()


def test_chosen_as_the_fallback_when_the_old_backends_cannot_run(tmp_path: Path) -> None:
    # A torch that fails on import, found first: the legacy backend's engine check fails,
    # vLLM is not installed, so the old API falls back to the one backend that can run.
    out = choose_with_broken("torch", "simulated broken torch build", tmp_path)
    assert "CHOSE toy" in out.stdout, out.stdout + out.stderr
    assert "falling back to the toy backend" in out.stdout
