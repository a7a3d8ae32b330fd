"""Evaluation jobs on aot's engines: an lm-evaluation-harness model backed by any aot
backend (``AotLM``), the ``aot eval`` command, its eager-vs-compiled parity report, and an
independent transformers reference for log-likelihoods.

lm-eval is an optional dependency (``pip install 'aot-core[eval]'``): nothing here imports
it, torch or transformers at import time; ``aot_core.evaluation.lm`` needs lm-eval.
"""

from __future__ import annotations

from pathlib import Path

MODEL_NAME = "aot"
"""The name ``AotLM`` is registered under in lm-eval (``--model aot``)."""

REAL_TASKS_DIR = Path(__file__).parent / "real_tasks"
"""Shipped task YAMLs and their local data for a small real instruct model (``aot eval
smollm2-135m-instruct``): run ``aot eval`` from this directory with ``--include-path .``,
since lm-eval resolves data files from the working directory."""

__all__ = ["MODEL_NAME", "REAL_TASKS_DIR"]
