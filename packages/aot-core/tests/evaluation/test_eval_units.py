"""The parts of ``aot eval`` that need lm-eval but no engine: rolling windows equal to
lm-eval's, model arguments, registration, and the parity comparison."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from aot_core.errors import SpecError
from aot_core.evaluation.errors import ParityExceededError
from aot_core.evaluation.model_args import parse_model_args
from aot_core.evaluation.parity import compare_runs, exceeded, format_report
from aot_core.scoring import rolling_requests
from conftest import TASKS


@pytest.mark.parametrize("limit", [2, 3, 5, 16])
def test_rolling_windows_are_lm_evals(limit: int) -> None:
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    prefix = 999
    for length in range(1, 40):
        tokens = list(range(length))
        theirs = [
            make_disjoint_window(w)
            for w in get_rolling_token_windows(
                token_list=tokens, prefix_token=prefix, max_seq_len=limit - 1, context_len=1
            )
        ]
        ours = rolling_requests([prefix, *tokens], limit)
        assert [(list(c), list(x)) for c, x in ours] == [(list(c), list(x)) for c, x in theirs]


def test_model_args_override_the_spec_and_refuse_unknown_keys(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text('compile_mode = "default"\nmax_model_len = 128\n')
    config = parse_model_args(
        {"pretrained": "/m", "spec": str(spec_file), "dtype": "float32", "batch_size": 1}
    )
    assert config.spec.max_model_len == 128 and config.spec.dtype == "float32"
    assert not config.eager and config.ignored == {"batch_size": 1}
    assert parse_model_args({"pretrained": "/m", "eager": "true"}).eager
    sizes = parse_model_args({"pretrained": "/m", "cuda_graph_sizes": "1:2:4"})
    assert sizes.spec.cuda_graph_sizes == (1, 2, 4)
    with pytest.raises(SpecError, match="did you mean 'max_model_len'"):
        parse_model_args({"pretrained": "/m", "max_model_lenn": 5})
    with pytest.raises(SpecError, match="pretrained=DIR"):
        parse_model_args({"dtype": "float32"})
    with pytest.raises(SpecError, match="dtype"):
        parse_model_args({"pretrained": "/m", "dtype": "float64"})


def test_registered_with_lm_eval_and_declared_as_entry_point() -> None:
    from aot_core.evaluation.lm import AotLM
    from aot_core.evaluation.plugin import register
    from lm_eval.api.registry import get_model

    register()
    register()  # twice is harmless
    assert get_model("aot") is AotLM
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own models are still there
    (ep,) = [e for e in entry_points(group="lm_eval.models") if e.name == "aot"]
    assert ep.load() is AotLM


def _write_run(directory: Path, mc: list[list[float]], texts: list[str], ppl: list[float]) -> None:
    directory.mkdir(parents=True)
    results = {
        "results": {
            "t_mc": {"acc,none": 0.5, "acc_stderr,none": 0.1},
            "t_gen": {"exact_match,none": 0.0},
            "t_ppl": {"bits_per_byte,none": 2.0},
        }
    }
    (directory / "results.json").write_text(json.dumps(results))
    rows = {
        "t_mc": [{"doc_id": i, "resps": [[[lp, False]] for lp in doc]} for i, doc in enumerate(mc)],
        "t_gen": [{"doc_id": i, "resps": [[t]]} for i, t in enumerate(texts)],
        "t_ppl": [{"doc_id": i, "resps": [[lp]]} for i, lp in enumerate(ppl)],
    }
    for task, lines in rows.items():
        (directory / f"samples_{task}.jsonl").write_text("\n".join(json.dumps(r) for r in lines))


def test_parity_counts_deltas_flips_and_differing_generations(tmp_path: Path) -> None:
    _write_run(tmp_path / "eager", [[-1.0, -2.0], [-3.0, -2.5]], ["a", "b"], [-10.0, -20.0])
    _write_run(tmp_path / "compiled", [[-1.0, -2.0], [-2.0, -2.5]], ["a", "c"], [-10.5, -20.0])
    report = {t.task: t for t in compare_runs(tmp_path / "eager", tmp_path / "compiled")}
    assert report["t_mc"].flipped == 1 and report["t_mc"].decisions == 2
    assert report["t_mc"].max_abs_delta == pytest.approx(1.0)
    assert report["t_mc"].mean_abs_delta == pytest.approx(0.25)
    assert report["t_gen"].differing == 1 and report["t_gen"].first_difference == {
        "doc_id": 1,
        "eager": "b",
        "compiled": "c",
    }
    assert report["t_ppl"].max_abs_delta == pytest.approx(0.5)
    text = format_report(list(report.values()), [])
    assert "decisions flipped: 1 of 2" in text and "greedy generations differing: 1 of 2" in text
    assert exceeded(list(report.values()), 2.0) == [
        "t_gen: 1 generation(s) differ",
        "t_mc: 1 decision(s) flipped",
    ]
    assert "|Δ log-likelihood| 0.5 > 0.1" in " ".join(exceeded([report["t_ppl"]], 0.1))


def test_parity_exit_code_is_documented(monkeypatch: pytest.MonkeyPatch, tiny: Path) -> None:
    from aot_core.cli import app as cli
    from aot_core.evaluation import parity

    def fail(*args: object) -> int:
        raise ParityExceededError("parity tolerance exceeded: t: 1 decision(s) flipped")

    monkeypatch.setattr(parity, "run_parity", fail)
    assert cli.run(["eval", str(tiny), "--tasks", "t", "--parity"]) == cli.ExitCode.PARITY_EXCEEDED
    assert "parity tolerance exceeded" in cli.epilog() or "beyond the tolerance" in cli.epilog()


def test_lm_eval_builds_the_model_from_model_args(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--model aot --model_args ...`` as lm-eval itself constructs it (legacy, eager)."""
    from aot_core.evaluation.plugin import register
    from conftest import TASKS
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(TASKS)  # the fixtures' data_files are relative
    register()
    results = simple_evaluate(
        model="aot",
        model_args=f"pretrained={tiny},backend=legacy,eager=true,dtype=float32",
        tasks=["aot_mc", "aot_ppl"],
        limit=2,
        task_manager=TaskManager(include_path=str(TASKS)),
    )
    assert results is not None
    assert results["config"]["aot_backend"] == "legacy"
    assert 0.0 <= results["results"]["aot_mc"]["acc,none"] <= 1.0
    assert results["results"]["aot_ppl"]["bits_per_byte,none"] > 0


def test_parity_passes_eager_to_aot_not_to_lm_eval(tmp_path: Path) -> None:
    """``--parity ... --lm-eval OPTIONS``: the eager run's --eager stays aot's (it went after
    --lm-eval, and lm-eval refused it with exit 2)."""
    import argparse

    from aot_core.evaluation.parity import _child_argv

    args = argparse.Namespace(
        cache_dir=None,
        tasks="t",
        include_path=None,
        backend="legacy",
        spec=None,
        model_args="",
        limit=None,
    )
    passthrough = ["--apply_chat_template"]
    eager = _child_argv(args, tmp_path, passthrough, tmp_path / "eager", eager=True)
    compiled = _child_argv(args, tmp_path, passthrough, tmp_path / "compiled", eager=False)
    assert eager.index("--eager") < eager.index("--lm-eval")
    assert eager[eager.index("--lm-eval") + 1 :] == passthrough
    assert "--eager" not in compiled and compiled[compiled.index("--lm-eval") + 1 :] == passthrough


def test_local_tasks_are_resolved_from_the_include_path_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every named task under --include-path: lm-eval's index of its ~15,000 built-in tasks
    (seconds per job) is not built; a built-in name among them still gets the whole index."""
    from aot_core.evaluation.job import check_inputs, prepare_tasks
    from aot_core.evaluation.tasks import resolve_tasks

    monkeypatch.chdir(TASKS)
    local = ["--tasks", "aot_mc,aot_gen", "--include_path", str(TASKS), "--limit", "2"]
    prepared = prepare_tasks(local, lambda _: None)
    assert {"aot_mc", "aot_gen"} <= set(prepared.manager.all_tasks)
    assert len(prepared.manager.all_tasks) < 10, "lm-eval's built-in tasks were indexed"
    assert [t.task_name for t in prepared.tasks] == ["aot_mc", "aot_gen"]
    # What sizes the job's KV cache: 2 documents x 4 choices, and 2 generations.
    assert prepared.requests is not None
    assert (prepared.requests.total, prepared.requests.generations) == (2 * 4 + 2, 2)

    cfg, yamls = check_inputs(["--tasks", "aot_mc,arc_easy", "--include_path", str(TASKS)])
    manager = resolve_tasks(cfg, yamls)
    assert {"aot_mc", "arc_easy"} <= set(manager.all_tasks)
