"""``aot tune``: its sweep parsing, break-even, parity and choice (pure logic), its results
file, and the real command on the test-only toy backend: a sweep, its resume after an
interruption, the spec it writes, and bad input with documented exit codes.

The real engines' sweep is in aot-legacy's tests (``test_tune_legacy.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aot_core.cli.command import ExitCode, load_spec
from aot_core.errors import SpecError
from aot_core.tune.report import (
    Parity,
    Setup,
    advice,
    break_even,
    choose,
    token_parity,
    total_s,
)
from aot_core.tune.results import TrialResults
from aot_core.tune.sweep import KnobError, TrialConfig, expand, load_sweep_file, parse_knob
from toy_command import aot, toy_env

# ------------------------------------------------------------------ sweep definition


def test_knobs_parse_into_canonical_values() -> None:
    assert parse_knob("dtype=fp32,bf16") == ("dtype", ("float32", "bfloat16"))
    assert parse_knob("max_num_seqs=4, 16,4") == ("max_num_seqs", (4, 16))
    assert parse_knob("max_num_batched_tokens=default,256") == (
        "max_num_batched_tokens",
        (None, 256),
    )
    assert parse_knob("mode=eager") == ("mode", ("eager",))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("batch=4", "unknown knob 'batch'"),
        ("max_num_seq=4", "did you mean 'max_num_seqs'"),
        ("mode=", "has no values"),
        ("mode=fast", "'fast' is not one of eager, compiled"),
        ("dtype=auto", "is not float32, bfloat16 or float16"),
        ("max_num_seqs=0", "not a whole number >= 1"),
        ("dtype", "write name=value"),
    ],
)
def test_bad_knobs_say_what_is_accepted(text: str, says: str) -> None:
    with pytest.raises(KnobError, match=says):
        parse_knob(text)


def test_a_sweep_file_names_the_bad_key_and_its_line(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[sweep]\nbackend = ["vllm"]\nmax_num_seqs = [4, 8]\ndtype = "float32"\n')
    assert load_sweep_file(good) == {
        "backend": ("vllm",),
        "max_num_seqs": (4, 8),
        "dtype": ("float32",),
    }
    bad = tmp_path / "bad.toml"
    bad.write_text('mode = ["eager"]\nbatch_size = [4]\n')
    with pytest.raises(SpecError, match="unknown knob 'batch_size'") as info:
        load_sweep_file(bad)
    assert (info.value.field, info.value.line) == ("batch_size", 2)
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing\n")
    with pytest.raises(SpecError, match="names no knob"):
        load_sweep_file(empty)


def test_a_backend_sweeps_only_the_fields_it_acts_on() -> None:
    defaults = {
        "backend": ("vllm", "legacy"),
        "mode": ("eager", "compiled"),
        "dtype": ("float32",),
        "max_num_seqs": (4,),
        "max_num_batched_tokens": (None,),
    }
    tunable = {
        "vllm": ("dtype", "max_num_seqs", "max_num_batched_tokens"),
        "legacy": ("dtype", "max_num_seqs"),
    }
    trials, notes = expand(
        {"max_num_batched_tokens": (128, 256)}, defaults=defaults, tunable=tunable
    )
    vllm = [t for t in trials if t.config.backend == "vllm"]
    legacy = [t for t in trials if t.config.backend == "legacy"]
    assert len(vllm) == 2 * 3  # two budgets x (eager, cold, warm)
    assert len(legacy) == 3 and {t.config.max_num_batched_tokens for t in legacy} == {None}
    assert [t.phase for t in legacy] == ["eager", "cold", "warm"]
    assert notes == [
        "max_num_batched_tokens is not swept for legacy: that backend does not act on it"
    ]


def test_a_trial_key_changes_with_config_model_workload_and_versions() -> None:
    trials, _ = expand(
        {},
        defaults={
            "backend": ("toy",),
            "mode": ("compiled",),
            "dtype": ("float32",),
            "max_num_seqs": (4,),
            "max_num_batched_tokens": (None,),
        },
        tunable={"toy": ("dtype", "max_num_seqs")},
    )
    cold, warm = trials
    context = {"model": "m", "workload": {"prompts": [[1]]}, "versions": {"torch": "2.13"}}
    assert cold.key(context) == cold.key(dict(context))
    assert cold.key(context) != warm.key(context)
    assert cold.key(context) != cold.key({**context, "versions": {"torch": "2.14"}})
    assert cold.key(context) != cold.key({**context, "model": "other"})
    # only the trial's own backend's versions count
    toy = {"toy": {"version": "1"}}
    assert cold.key({**context, "backends": toy}) == cold.key(
        {**context, "backends": {**toy, "vllm": {"version": "0.32"}}}
    )
    assert cold.key({**context, "backends": toy}) != cold.key(
        {**context, "backends": {"toy": {"version": "2"}}}
    )


# ------------------------------------------------------------------ report logic


def test_break_even_is_the_first_job_where_compiling_is_ahead() -> None:
    # n = 3: 100 + 2 * 10 = 120, a tie with 3 * 40; n = 4: 130 < 160
    assert break_even(eager_s=40, cold_s=100, warm_s=10) == 4
    assert total_s("compiled", 4, eager_s=40, cold_s=100, warm_s=10) == 130
    assert total_s("eager", 4, eager_s=40, cold_s=100, warm_s=10) == 160
    assert break_even(eager_s=40, cold_s=30, warm_s=10) == 1  # even the first job wins
    assert break_even(eager_s=40, cold_s=100, warm_s=40) is None
    assert break_even(eager_s=40, cold_s=100, warm_s=55) is None


def _setup(dtype: str, eager: float, cold: float, warm: float, exact: bool) -> Setup:
    config = TrialConfig(backend="b", mode="eager", dtype=dtype, max_num_seqs=4)
    return Setup(
        config=config,
        job_s={"eager": eager, "cold": cold, "warm": warm},
        parity=Parity(exact=exact, text=""),
    )


def test_the_choice_keeps_float32_parity_unless_outputs_match() -> None:
    fp32 = _setup("float32", eager=40, cold=100, warm=30, exact=True)
    bf16 = _setup("bfloat16", eager=20, cold=60, warm=10, exact=False)
    best, notes = choose([fp32, bf16], jobs=3)
    assert best is not None
    assert (best.config.dtype, best.config.mode, best.total_s) == ("float32", "eager", 120)
    assert "bfloat16" in notes[0] and "differ from float32" in notes[0]
    bf16_same = _setup("bfloat16", eager=20, cold=60, warm=10, exact=True)
    best, notes = choose([fp32, bf16_same], jobs=10)
    assert best is not None and notes == []
    assert (best.config.dtype, best.config.mode, best.total_s) == ("bfloat16", "compiled", 150)


def test_only_float32_or_identical_outputs_are_eligible() -> None:
    from aot_core.tune.report import eligible

    assert eligible(_setup("float32", eager=1, cold=1, warm=1, exact=False))
    assert eligible(_setup("bfloat16", eager=1, cold=1, warm=1, exact=True))
    assert not eligible(_setup("bfloat16", eager=1, cold=1, warm=1, exact=False))


def test_advice_says_when_compiling_does_not_pay() -> None:
    never = _setup("float32", eager=40, cold=100, warm=45, exact=True)
    late = _setup("float32", eager=40, cold=100, warm=30, exact=True)
    assert "compiling does not pay" in advice([never], jobs=10)[0]
    assert "run it eager" in advice([never], jobs=10)[0]
    assert "pays only from job 8" in advice([late], jobs=3)[0]  # 7: 280 s both ways
    assert "pays from job 8" in advice([late], jobs=10)[0]


def test_token_parity_counts_identical_sequences() -> None:
    assert token_parity([[1, 2], [3, 4]], [[1, 2], [3, 4]]).exact is True
    differs = token_parity([[1, 2, 3], [3, 4]], [[1, 2, 9], [3, 4]])
    assert differs.exact is False
    assert differs.text == "1/2 identical (first diff at token 2)"


# ------------------------------------------------------------------ results file


def test_results_survive_a_torn_line_and_failed_trials_run_again(tmp_path: Path) -> None:
    results = TrialResults(path=tmp_path / "trials.jsonl")
    results.append({"key": "a", "ok": True, "job_s": 1.0})
    results.append({"key": "b", "ok": False, "error": "boom"})
    with results.path.open("a") as fh:
        fh.write('{"key": "c", "ok": tr')  # a kill in the middle of a write
    results.append({"key": "d", "ok": True, "job_s": 2.0})
    assert set(results.load()) == {"a", "d"}
    results.append({"key": "a", "ok": False, "error": "rerun failed"})
    assert set(results.load()) == {"d"}


# ------------------------------------------------------------------ the command (toy backend)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return toy_env(tmp_path, monkeypatch)


TOY_SWEEP = ["tune", "--knob", "backend=toy", "--knob", "dtype=float32", "--new-tokens", "4"]


def _ran(stderr: str) -> list[str]:
    """The trials a run started (its progress lines ending in "...")."""
    return [
        line.split("] ", 1)[1].split(" ", 1)[1]
        for line in stderr.splitlines()
        if line.endswith(" ...")
    ]


def test_a_toy_sweep_reports_writes_a_loadable_spec_and_resumes(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "best.toml"
    work = tmp_path / "work"
    args = [*TOY_SWEEP, "--jobs", "3", "--out", str(out), "--work-dir", str(work)]
    proc = aot(args, env)
    assert proc.returncode == 0, proc.stderr
    assert _ran(proc.stderr) == [
        "toy float32 seqs 4 eager ...",
        "toy float32 seqs 4 cold ...",
        "toy float32 seqs 4 warm ...",
    ]
    assert "[####################] 3/3" in proc.stderr
    for column in ("start", "job", "tokens/s", "memory", "parity"):
        assert column in proc.stdout
    assert "reference (float32)" in proc.stdout and "identical" in proc.stdout
    assert "best for 3 job(s): toy float32 seqs 4" in proc.stdout
    spec = load_spec(str(out))
    assert spec.max_num_seqs == 4 and spec.dtype == "float32"
    assert out.read_text().startswith("# aot tune:")
    # aot compile takes the spec as written
    compiled = aot(["compile", "--backend", "toy", "--spec", str(out), _tiny(tmp_path)], env)
    assert compiled.returncode == 0, compiled.stderr

    # Interrupted after the cold trial: the warm trial's record never reached the file.
    lines = (work / "trials.jsonl").read_text().splitlines()
    (work / "trials.jsonl").write_text("\n".join(lines[:2]) + "\n")
    again = aot(args, env)
    assert again.returncode == 0, again.stderr
    assert _ran(again.stderr) == ["toy float32 seqs 4 warm ..."]
    assert again.stderr.count(": kept (") == 2
    assert "2 already finished" in again.stderr
    # and nothing at all the third time; the spec it wrote is replaced (aot tune wrote it)
    third = aot(args, env)
    assert third.returncode == 0 and _ran(third.stderr) == []


def _tiny(tmp_path: Path) -> str:
    from aot_core.models.tiny import write_tiny_llama

    return str(write_tiny_llama(tmp_path / "tiny-llama"))


def test_a_cleared_cold_artifact_is_compiled_again_before_the_warm_trial(
    env: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    args = [*TOY_SWEEP, "--knob", "mode=compiled", "--work-dir", str(work)]
    assert aot(args, env).returncode == 0
    records = [json.loads(x) for x in (work / "trials.jsonl").read_text().splitlines()]
    cold = next(r for r in records if r["trial"]["phase"] == "cold")
    import shutil

    shutil.rmtree(cold["location"])
    lines = (work / "trials.jsonl").read_text().splitlines()
    (work / "trials.jsonl").write_text(lines[0] + "\n")  # the warm one never finished
    again = aot(args, env)
    assert again.returncode == 0, again.stderr
    assert "its cold trial's files are gone; running it again" in again.stderr
    assert "started cold" not in again.stdout  # the warm trial started warm


@pytest.mark.parametrize(
    ("extra", "code", "says"),
    [
        (["--knob", "batch=4"], ExitCode.USAGE, "unknown knob 'batch'"),
        (["--knob", "mode="], ExitCode.USAGE, "the sweep would be empty"),
        (["--tasks", "x", "--prompts", "2"], ExitCode.USAGE, "give one or the other"),
        (["--out", "best.json"], ExitCode.USAGE, "name a .toml file"),
        (["--knob", "backend=nope"], ExitCode.BACKEND_UNAVAILABLE, "nope"),
    ],
)
def test_bad_command_lines_exit_before_any_trial(
    env: dict[str, str], tmp_path: Path, extra: list[str], code: int, says: str
) -> None:
    proc = aot([*TOY_SWEEP, "--work-dir", str(tmp_path / "w"), *extra], env)
    assert proc.returncode == code, proc.stderr
    assert says in proc.stderr
    assert _ran(proc.stderr) == []


def test_an_empty_or_unknown_sweep_file_is_an_invalid_spec(
    env: dict[str, str], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text("dtype = []\n")
    proc = aot(["tune", "--sweep", str(sweep)], env)
    assert proc.returncode == ExitCode.SPEC_ERROR, proc.stderr
    assert "the sweep would be empty" in proc.stderr and "line 1" in proc.stderr
    sweep.write_text('backend = ["toy"]\nknob_x = [1]\n')
    proc = aot(["tune", "--sweep", str(sweep)], env)
    assert proc.returncode == ExitCode.SPEC_ERROR, proc.stderr
    assert "unknown knob 'knob_x'" in proc.stderr and "line 2" in proc.stderr


def test_an_unwritable_output_exits_10_before_any_trial(
    env: dict[str, str], tmp_path: Path
) -> None:
    theirs = tmp_path / "theirs.toml"
    theirs.write_text("compile_mode = 'none'\n")
    for out, says in (
        (tmp_path / "missing" / "best.toml", "does not exist"),
        (theirs, "was not written by aot tune"),
    ):
        proc = aot([*TOY_SWEEP, "--out", str(out)], env)
        assert proc.returncode == ExitCode.CACHE_NOT_WRITABLE, proc.stderr
        assert says in proc.stderr and _ran(proc.stderr) == []
    assert theirs.read_text() == "compile_mode = 'none'\n"  # left exactly as it was
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    proc = aot([*TOY_SWEEP, "--out", str(directory)], env)
    assert proc.returncode == ExitCode.CACHE_NOT_WRITABLE, proc.stderr
