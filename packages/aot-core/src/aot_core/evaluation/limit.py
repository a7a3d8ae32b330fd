"""``--limit``: documents per task, as a whole count or as a share of each task's documents.

lm-eval takes any float and only fails later, inside the evaluation, after the engine has
started; here the value is checked when the command line is read.
"""

from __future__ import annotations

import argparse
import math

_WANTED = "give a whole number >= 1 (documents per task) or a fraction in (0, 1) (a share of each"
_WANTED += " task's documents)"


def check_limit(value: float) -> int | float:
    """``value`` as lm-eval's limit: an ``int`` count >= 1 or a ``float`` fraction in (0, 1);
    ``ValueError`` saying what to give otherwise."""
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{value:g} is not a document count or share; {_WANTED}")
    if value < 1:
        return value
    if value != int(value):
        raise ValueError(f"{value:g} is neither a whole count nor a fraction below 1; {_WANTED}")
    return int(value)


def limit_argument(text: str) -> int | float:
    """argparse ``type`` for ``--limit``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; {_WANTED}") from None
    try:
        return check_limit(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
