"""The root README's "API in one screen" runs as written, on this backend, in a fresh
process: a cold start compiles (a miss), the same script again starts warm (a hit) with
the same tokens."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"


def _snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## API in one screen") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README's 'API in one screen' lost its python block"
    return match.group(1)


def _run(script: Path, cache: Path) -> tuple[tuple[int, ...], str]:
    env = dict(os.environ, AOT_BACKEND="legacy", AOT_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    tokens, stats = done.stdout.strip().splitlines()[-2:]
    return tuple(ast.literal_eval(tokens)), stats


def test_the_readme_api_runs_as_written_cold_then_warm(tmp_path: Path) -> None:
    script = tmp_path / "api.py"
    script.write_text(_snippet(), encoding="utf-8")
    cold_tokens, cold = _run(script, tmp_path / "cache")
    warm_tokens, warm = _run(script, tmp_path / "cache")
    assert len(cold_tokens) == 8 and all(isinstance(t, int) for t in cold_tokens)
    assert cold.startswith("miss"), cold
    assert warm.startswith("hit"), warm
    assert warm_tokens == cold_tokens
