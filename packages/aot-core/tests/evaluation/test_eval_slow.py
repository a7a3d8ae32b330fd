"""Slow ``aot eval`` checks (the ``eval_slow`` session): bfloat16 parity, reported as measured."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import aot_eval, task_args

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["vllm", "legacy"])
def test_bfloat16_parity_is_reported_not_hidden(backend: str, tiny: Path, tmp_path: Path) -> None:
    run = aot_eval(
        *task_args(tiny, "--backend", backend, "--model-args", "dtype=bfloat16,max_model_len=512"),
        "--parity",
        "--output",
        str(tmp_path),
    )
    assert run.rc == 0, run.stderr[-3000:]
    print(run.stdout)  # the measured differences, in the session log
    assert "bfloat16" in run.stdout
    for task in json.loads((tmp_path / "parity.json").read_text()):
        assert math.isfinite(task["max_abs_delta"])
        assert f"decisions flipped: {task['flipped']} of" in run.stdout or not task["decisions"]
