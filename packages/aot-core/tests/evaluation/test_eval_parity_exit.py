"""``aot eval --parity`` exits 23 on a real difference beyond the tolerance (no stub).

In bfloat16 the legacy backend's compiled kernels round differently from eager (the
``eval_slow`` session reports by how much), so a zero tolerance is exceeded by a real
pair of runs. One task, one document: the cost is the two starts and one compile.
"""

from __future__ import annotations

import json
from pathlib import Path

from aot_core.cli.command import ExitCode
from conftest import TASKS, aot_eval


def test_a_real_difference_beyond_the_tolerance_is_parity_exceeded(
    tiny: Path, tmp_path: Path
) -> None:
    run = aot_eval(
        *(str(tiny), "--tasks", "aot_ppl", "--include-path", str(TASKS), "--limit", "1"),
        *("--backend", "legacy", "--model-args", "dtype=bfloat16,max_model_len=512"),
        *("--parity", "--parity-tolerance", "0", "--output", str(tmp_path)),
    )
    assert run.rc == ExitCode.PARITY_EXCEEDED, run.stderr[-3000:]
    (task,) = json.loads((tmp_path / "parity.json").read_text())
    assert task["max_abs_delta"] > 0
    assert f"aot_ppl: |Δ log-likelihood| {task['max_abs_delta']:.3g} > 0" in run.stderr
    assert "Traceback" not in run.stderr
