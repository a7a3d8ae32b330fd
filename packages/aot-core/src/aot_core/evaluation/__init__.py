"""Evaluation jobs on aot's engines: an lm-evaluation-harness model backed by any aot
backend (``AotLM``), the ``aot eval`` command, its eager-vs-compiled parity report, and an
independent transformers reference for log-likelihoods.

lm-eval is an optional dependency (``pip install 'aot-core[eval]'``): nothing here imports
it, torch or transformers at import time; ``aot_core.evaluation.lm`` needs lm-eval.
"""

from __future__ import annotations

MODEL_NAME = "aot"
"""The name ``AotLM`` is registered under in lm-eval (``--model aot``)."""

__all__ = ["MODEL_NAME"]
