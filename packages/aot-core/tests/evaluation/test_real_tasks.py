"""The shipped real-model tasks (``aot_core.evaluation.REAL_TASKS_DIR``) load in lm-eval as
documented: local data only, the document counts and few-shot settings their YAMLs state.
No model runs here; their scores on SmolLM2-135M-Instruct are in aot-core's README."""

from __future__ import annotations

import json

import pytest
from aot_core.evaluation import REAL_TASKS_DIR

TASKS = {
    "smol_addition_mc": ("multiple_choice", 40, 5),
    "smol_addition_gen": ("generate_until", 40, 5),
    "smol_prose_ppl": ("loglikelihood_rolling", 24, 0),
    "smol_capitals_chat": ("generate_until", 32, 0),
}


def test_the_shipped_tasks_load_from_local_data(monkeypatch: pytest.MonkeyPatch) -> None:
    from lm_eval.tasks import TaskManager, get_task_dict

    monkeypatch.chdir(REAL_TASKS_DIR)  # lm-eval resolves data_files from here
    tasks = get_task_dict(list(TASKS), TaskManager(include_path=str(REAL_TASKS_DIR)))
    assert set(tasks) == set(TASKS)
    for name, (output_type, docs, shots) in TASKS.items():
        task = tasks[name]
        assert task.config.output_type == output_type, name
        assert len(list(task.test_docs())) == docs, name
        assert (task.config.num_fewshot or 0) == shots, name


def test_every_multiple_choice_label_names_the_right_sum() -> None:
    for line in (REAL_TASKS_DIR / "addition_mc.jsonl").read_text().splitlines():
        doc = json.loads(line)
        a, b = (int(w) for w in doc["question"].removeprefix("What is ").rstrip("?").split("+"))
        assert doc["choices"][doc["label"]] == str(a + b)
        assert len(set(doc["choices"])) == 4
