"""``aot eval`` where lm-eval is not installed (the core session): a clear install hint and
its documented exit code, and ``import aot_core`` stays free of lm-eval."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from aot_core.cli import app as cli
from aot_core.models.tiny import write_tiny_llama


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
    codes = ("TASK_NOT_FOUND", "DATASET_NOT_LOCAL", "NO_TOKENIZER", "PARITY_EXCEEDED")
    for code in (*codes, "TASK_INVALID", "TASK_DATA_INVALID"):
        assert f"{int(cli.ExitCode[code]):>3}  {cli.EXIT_CODE_HELP[cli.ExitCode[code]]}" in out


def test_parsing_the_command_line_imports_no_lm_eval() -> None:
    code = (
        "import sys; from aot_core.cli import app; app.build_parser(); import aot_core.evaluation;"
        "heavy = ('lm_eval', 'torch', 'transformers');"
        "assert not any(m.split('.')[0] in heavy for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("limit", ["-1", "0", "0.0", "1.5", "nan", "inf", "ten", ""])
def test_a_bad_limit_is_refused_before_the_job_starts(
    limit: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aot_core.evaluation import command

    def started(*args: object) -> int:
        raise AssertionError("the job started with a bad --limit")

    monkeypatch.setattr(command, "_run", started)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["eval", "model", "--tasks", "t", f"--limit={limit}"])
    assert exit_info.value.code == cli.ExitCode.USAGE
    err = capsys.readouterr().err
    assert "--limit" in err and "fraction in (0, 1)" in err and "Traceback" not in err


@pytest.mark.parametrize(("limit", "value"), [("8", 8), ("1.0", 1), ("0.25", 0.25), ("1e2", 100)])
def test_a_limit_is_a_whole_count_or_a_fraction(limit: str, value: float) -> None:
    from aot_core.evaluation.lm_eval_args import lm_eval_argv

    args = cli.build_parser().parse_args(["eval", "model", "--tasks", "t", "--limit", limit])
    assert args.limit == value and type(args.limit) is type(value)
    assert lm_eval_argv(args, [])[-2:] == ["--limit", str(value)]
