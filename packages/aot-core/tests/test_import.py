"""`import aot_core` stays light: no torch, no vLLM (benchmarks/import_time.py times it)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_leaves_heavy_modules_out() -> None:
    code = (
        "import sys, json; import aot_core, aot_core.registry, aot_core.models.tiny; "
        "print(json.dumps({'heavy': sorted(m for m in ('torch', 'vllm', 'transformers', 'numpy') "
        "if m in sys.modules)}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["heavy"] == []
