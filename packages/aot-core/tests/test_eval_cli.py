"""``aot eval`` where lm-eval is not installed (the core session): a clear install hint and
its documented exit code, and ``import aot_core`` stays free of lm-eval."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from aot_core import cli
from aot_core.tiny import write_tiny_llama


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is not None, reason="lm-eval installed")
def test_eval_without_lm_eval_says_how_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_tiny_llama(tmp_path / "tiny")
    assert cli.run(["eval", str(model), "--tasks", "hellaswag"]) == cli.ExitCode.MISSING_DEPENDENCY
    assert "pip install 'aot-core[eval]'" in capsys.readouterr().err


def test_eval_is_listed_and_its_exit_codes_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.run(["--help"])
    out = capsys.readouterr().out
    assert "eval" in out
    for code in ("TASK_NOT_FOUND", "DATASET_NOT_LOCAL", "NO_TOKENIZER", "PARITY_EXCEEDED"):
        assert f"{int(cli.ExitCode[code]):>3}  {cli.EXIT_CODE_HELP[cli.ExitCode[code]]}" in out


def test_parsing_the_command_line_imports_no_lm_eval() -> None:
    code = (
        "import sys; from aot_core import cli; cli.build_parser(); import aot_core.evaluation;"
        "heavy = ('lm_eval', 'torch', 'transformers');"
        "assert not any(m.split('.')[0] in heavy for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
