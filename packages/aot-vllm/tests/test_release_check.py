"""The translation check fails a release that does not import, or that runs fewer tests.

`nox -s vllm_translations` runs this file before it checks the releases: the check it
then trusts (release_check.py) is shown here to fail deliberately broken releases. No
engine starts; each case is one short pytest run against a fake ``vllm`` package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from release_check import CheckRun, Counts, judge, parse_summary, run_check


def _fake_vllm(site: Path, *, version: str, config: str) -> Path:
    """A ``vllm`` package holding only ``__version__``, ``config`` and ``engine.arg_utils``."""
    package = site / "vllm"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (package / "config.py").write_text(config)
    (package / "engine" / "__init__.py").write_text("")
    (package / "engine" / "arg_utils.py").write_text("")
    return site


def _check(release: str, site: Path, tmp_path: Path) -> CheckRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOT_EXPECT")}
    return run_check(
        release,
        site,
        pytest=(sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider"),
        env=env,
        basetemp=tmp_path / "t",
    )


def test_release_whose_config_does_not_import_fails(tmp_path: Path) -> None:
    # What a --no-deps install missing one of vLLM's dependencies looks like.
    missing = "import aot_test_missing_dependency\n"
    site = _fake_vllm(tmp_path / "site", version="0.33.0", config=missing)
    run = _check("0.33.0", site, tmp_path)
    assert run.returncode != 0, run.output
    assert "vLLM is installed but does not import" in run.output
    assert "aot_test_missing_dependency" in run.output
    assert "0.33.0" in judge([run])


def test_release_other_than_the_expected_one_fails(tmp_path: Path) -> None:
    site = _fake_vllm(tmp_path / "site", version="0.32.0", config="")
    run = _check("0.33.0", site, tmp_path)
    assert run.returncode != 0, run.output
    assert "AOT_EXPECT_VLLM=0.33.0, but vLLM 0.32.0 is installed" in run.output
    assert "0.33.0" in judge([run])


def _run(release: str, summary: str, returncode: int = 0) -> CheckRun:
    return CheckRun(release=release, returncode=returncode, output=f"...\n{summary}\n")


BASELINE = _run("none", "======== 174 passed, 1 skipped in 0.48s ========")


def test_judge_passes_releases_that_ran_everything() -> None:
    runs = [
        BASELINE,
        _run("0.10.2", "======= 221 passed, 1 deselected in 12.85s ======="),
        _run("0.33.0", "======= 221 passed, 1 deselected in 10.02s ======="),
    ]
    assert judge(runs) == {}


@pytest.mark.parametrize(
    ("summary", "why"),
    [
        # The old release check's blind spot: exit 0 and the baseline's own summary.
        ("======== 174 passed, 1 skipped in 0.48s ========", "must skip nothing"),
        ("======== 174 passed in 0.48s ========", "no more than the 174"),
        ("======== 220 passed in 9.00s ========", "where other releases pass 221"),
    ],
)
def test_judge_fails_a_release_that_ran_fewer_tests(summary: str, why: str) -> None:
    runs = [BASELINE, _run("0.32.0", "=== 221 passed in 9.00s ==="), _run("0.33.0", summary)]
    problems = judge(runs)
    assert list(problems) == ["0.33.0"]
    assert why in problems["0.33.0"]


def test_judge_fails_a_baseline_that_did_not_skip_the_release_module() -> None:
    assert "none" in judge([_run("none", "=== 221 passed in 9.00s ===")])
    assert "none" in judge([_run("none", "=== 1 error in 2.00s ===", returncode=2)])


def test_summary_lines_are_read_with_or_without_padding() -> None:
    assert parse_summary("x\n== 3 passed, 2 skipped, 1 warning in 1.20s ==\n") == Counts(
        passed=3, skipped=2
    )
    assert parse_summary("1 failed, 2 errors in 61.00s (0:01:01)") == Counts(failed=1, errors=2)
    assert parse_summary("no summary here") is None
