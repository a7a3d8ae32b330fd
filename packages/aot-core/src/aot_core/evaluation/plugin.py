"""Making ``--model aot`` known to lm-eval.

lm-eval 0.4.13 reads no plugin entry point for models, so ``aot eval`` calls ``register``
before it runs lm-eval. Newer lm-eval releases discover the ``lm_eval.models`` entry point
that aot-core declares (``aot = "aot_core.evaluation.lm:AotLM"``) by themselves.
"""

from __future__ import annotations

import contextlib
import importlib.util

from aot_core.evaluation import MODEL_NAME
from aot_core.evaluation.errors import LMEvalMissingError

TARGET = "aot_core.evaluation.lm:AotLM"
"""Where ``AotLM`` lives, as lm-eval's registry and the entry point spell it."""

LM_EVAL_HINT = "pip install 'aot-core[eval]' (lm-eval 0.4.13 and transformers)"


def require_lm_eval() -> None:
    """Fail with an install hint when lm-eval is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise LMEvalMissingError(
            f"aot eval needs lm-evaluation-harness, which is not installed: {LM_EVAL_HINT}"
        )


def register() -> None:
    """Register ``AotLM`` as lm-eval's ``aot`` model (lazily: nothing heavy is imported)."""
    require_lm_eval()
    # lm-eval fills its registry from lm_eval.models only while the registry is empty, so
    # its own models go in first.
    import lm_eval.models  # noqa: F401
    from lm_eval.api import registry

    # Already there means an earlier call, or lm-eval found the entry point itself.
    with contextlib.suppress(ValueError):
        registry.model_registry.register(MODEL_NAME, target=TARGET)
