"""Every documented exit code is produced by some test, and the backend-failure codes here.

Codes 1, 7 and 13 come from a backend that fails, through the real ``aot`` command: the
test-only toy backend raises a plain RuntimeError where ``backend_options.fail`` asks
(its README), as a buggy backend would. The last test reads every package's tests and
fails if a code of ``ExitCode`` is produced by none of them.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from aot_core import artifacts
from aot_core.cli.command import EXIT_CODE_HELP, ExitCode
from aot_core.models.tiny import write_tiny_llama
from toy_command import aot, toy_env

PACKAGES = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return toy_env(tmp_path, monkeypatch)


def _failing_spec(tmp_path: Path, where: str) -> Path:
    spec = tmp_path / f"fail-{where}.toml"
    spec.write_text(f'[backend_options]\nfail = "{where}"\n')
    return spec


def test_a_backend_crash_while_compiling_is_compilation_failed(
    env: dict[str, str], tmp_path: Path
) -> None:
    model = write_tiny_llama(tmp_path / "tiny-llama")
    spec = _failing_spec(tmp_path, "compile")
    proc = aot(["compile", str(model), "--backend", "toy", "--spec", str(spec)], env)
    assert proc.returncode == ExitCode.COMPILATION_FAILED, proc.stderr
    assert "backend 'toy' failed to compile" in proc.stderr
    assert "RuntimeError: toy backend: compile failure asked for" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert artifacts.ArtifactStore(tmp_path / "cache").entry_keys() == []


def test_a_backend_crash_outside_compiling_is_an_unexpected_error(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A RuntimeError from the backend after compiling (closing the model) is nothing aot
    knows how to name: exit 1 with the error's message, and nothing is published."""
    model = write_tiny_llama(tmp_path / "tiny-llama")
    spec = _failing_spec(tmp_path, "close")
    proc = aot(["compile", str(model), "--backend", "toy", "--spec", str(spec)], env)
    assert proc.returncode == ExitCode.FAILURE, proc.stderr
    assert "unexpected RuntimeError: toy backend: close failure asked for" in proc.stderr
    assert artifacts.ArtifactStore(tmp_path / "cache").entry_keys() == []


def test_a_bench_whose_compiled_runs_fail_is_bench_failed(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    spec = _failing_spec(tmp_path, "compile")
    args = ["bench", "--backend", "toy", "--spec", str(spec), "--repeats", "1"]
    proc = aot([*args, "--max-new-tokens", "4", "--json", str(out)], env)
    assert proc.returncode == ExitCode.BENCH_FAILED, proc.stderr
    result = json.loads(out.read_text())
    runs = {r["phase"]: r for r in result["backends"]["toy"]["runs"]}
    assert runs["eager"]["ok"] is True  # the runs that worked are reported
    assert runs["cold"]["ok"] is False and runs["warm"]["ok"] is False
    failed = {f["phase"] for f in result["failures"]}
    assert failed == {"cold", "warm"}
    assert any("compile failure asked for" in f["error"] for f in result["failures"])


def _exit_code_uses() -> dict[str, set[str]]:
    """``ExitCode.NAME`` -> the tests ("path::function") whose code names it."""
    uses: dict[str, set[str]] = {}
    for path in sorted(PACKAGES.glob("*/tests/**/test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                base = node.value if isinstance(node, ast.Attribute) else None
                named = getattr(base, "id", None) or getattr(base, "attr", None)
                if isinstance(node, ast.Attribute) and named == "ExitCode":
                    where = f"{path.relative_to(PACKAGES)}::{func.name}"
                    uses.setdefault(node.attr, set()).add(where)
    return uses


def test_every_documented_exit_code_is_produced_by_a_test() -> None:
    """Each code a user may script against has a test that expects it (the tests named in
    the failure message or, with -rP, printed here)."""
    assert set(EXIT_CODE_HELP) == set(ExitCode)
    uses = _exit_code_uses()
    for code in ExitCode:
        print(f"{code.value:3d} {code.name}: {', '.join(sorted(uses.get(code.name, ())))}")
    missing = [f"{c.value} {c.name}" for c in ExitCode if c.name not in uses]
    assert not missing, f"exit codes no test expects: {', '.join(missing)}"
