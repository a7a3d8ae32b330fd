"""How `nox -s vllm_translations` runs and judges one vLLM release's translation check.

A pytest exit status alone cannot tell "this release's tests ran and passed" from "the
release-only tests were skipped": a release whose ``vllm.config`` does not import used to
give the same exit status, and nearly the same summary, as the no-vLLM baseline. So each
run names the release it expects (``AOT_EXPECT_VLLM``, which test_translate_release.py
checks), and its summary line is judged against what that release must run. Standard
library only: the noxfile imports this module from nox's own interpreter, and
test_release_check.py imports it to prove that a broken release fails.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

TRANSLATION_TESTS = (
    "packages/aot-vllm/tests/test_translate_logic.py",
    "packages/aot-vllm/tests/test_translate_release.py",
)
"""The files every release runs, relative to the repository root."""

IMPORT_ONLY_ARGS = ("-m", "not slow")
"""Deselect (rather than skip) the one test that needs a full install, so that a real
release's run has nothing skipped at all."""

NO_VLLM = "none"
"""The baseline "release": no vLLM installed, so the release module skips as a whole."""

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?)\b")
# "==== 221 passed, 1 skipped in 10.22s ====" (no "=" under -q; "(0:02:03)" past a minute)
_SUMMARY = re.compile(r"^[= ]*(\d+ \w+.*?) in [\d.]+s( \([\d:]+\))?[= ]*$")


@dataclass(frozen=True, kw_only=True)
class Counts:
    """One pytest run's final summary line, as numbers."""

    passed: int = 0
    """Tests that passed."""

    failed: int = 0
    """Tests that failed (xpassed strict tests included by pytest)."""

    skipped: int = 0
    """Tests skipped, a module skipped as a whole counting as one."""

    errors: int = 0
    """Collection or fixture errors."""

    deselected: int = 0
    """Tests left out by ``-m``."""


def parse_summary(output: str) -> Counts | None:
    """The counts from pytest's last ``==== ... in 1.23s ====`` line (None: no such line)."""
    for line in reversed(output.strip().splitlines()):
        found = _SUMMARY.match(line.strip())
        if found is None:
            continue
        counts: dict[str, int] = {}
        for number, word in _COUNT.findall(found.group(1)):
            key = "errors" if word.startswith("error") else word
            if key in {"xfailed", "xpassed"}:
                continue  # none here; they would not change what is judged
            counts[key] = counts.get(key, 0) + int(number)
        return Counts(**counts)
    return None


@dataclass(frozen=True, kw_only=True)
class CheckRun:
    """One release's translation check: what pytest printed and what it exited with."""

    release: str
    """The release's name in VLLM_TRANSLATION_RELEASES ("none": no vLLM)."""

    returncode: int
    """pytest's exit status."""

    output: str
    """pytest's stdout and stderr together."""

    @property
    def counts(self) -> Counts | None:
        """The summary line's counts (None: pytest printed none)."""
        return parse_summary(self.output)

    @property
    def last_line(self) -> str:
        """What a session log shows for this run."""
        lines = self.output.strip().splitlines()
        return lines[-1] if lines else "(no output)"


def run_check(
    release: str,
    site: Path | None,
    *,
    pytest: Sequence[str],
    env: Mapping[str, str],
    basetemp: Path,
) -> CheckRun:
    """Run TRANSLATION_TESTS with ``site`` (a ``--target`` directory holding one vLLM
    release, or None for the no-vLLM baseline) first on the path."""
    run_env = {**env, "AOT_EXPECT_VLLM": release, "AOT_TRANSLATION_IMPORT_ONLY": "1"}
    if site is not None:
        run_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(site), env.get("PYTHONPATH", "")) if p
        )
    done = subprocess.run(
        [*pytest, "--basetemp", str(basetemp), *IMPORT_ONLY_ARGS, *TRANSLATION_TESTS],
        cwd=ROOT,
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    return CheckRun(release=release, returncode=done.returncode, output=done.stdout)


def judge(runs: Sequence[CheckRun]) -> dict[str, str]:
    """What is wrong with each run that failed, by release (empty: every release passed).

    The baseline (``none``) must pass with the release module skipped as its one skip.
    A real release must pass with nothing skipped and more passed than the baseline (its
    release-only tests ran), and every real release must pass the same number: the tests'
    ids do not depend on the release (each spec and branch is collected everywhere), so a
    release short of the others lost tests. The count is derived, not written down, so
    adding a test changes nothing here.
    """
    problems: dict[str, str] = {}
    counts = {run.release: run.counts for run in runs}
    for run in runs:
        found = counts[run.release]
        if run.returncode != 0 or found is None or found.failed or found.errors:
            problems[run.release] = f"pytest exited {run.returncode}: {run.last_line}"
        elif run.release == NO_VLLM and (found.skipped != 1 or not found.passed):
            problems[run.release] = (
                f"expected the release module as the only skip, got {run.last_line}"
            )
        elif run.release != NO_VLLM and found.skipped:
            problems[run.release] = f"a real release must skip nothing: {run.last_line}"
    baseline = counts.get(NO_VLLM)
    released = {r: c.passed for r, c in counts.items() if r != NO_VLLM and c and r not in problems}
    expected = max(released.values(), default=0)
    for release, passed in released.items():
        if baseline is not None and passed <= baseline.passed:
            problems[release] = (
                f"{passed} passed, no more than the {baseline.passed} of the no-vLLM "
                "baseline: the release-only tests did not run"
            )
        elif passed != expected:
            problems[release] = f"{passed} passed where other releases pass {expected}"
    return problems
