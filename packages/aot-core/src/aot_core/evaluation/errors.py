"""Failures of an evaluation job that the user can fix, each with its own exit code."""

from __future__ import annotations

from aot_core.errors import AOTError


class EvalError(AOTError):
    """Base class for evaluation-job failures."""


class LMEvalMissingError(EvalError):
    """lm-evaluation-harness is not installed."""


class TaskNotFoundError(EvalError):
    """A task name matched no task lm-eval knows (built-in or under --include-path)."""


class DatasetNotLocalError(EvalError):
    """A task needs a dataset that is not on this machine, and aot eval does not download."""


class NoTokenizerError(EvalError):
    """The model directory has no tokenizer, and lm-eval tasks are text."""


class ParityExceededError(EvalError):
    """Eager and compiled runs differ by more than the tolerance the user allowed."""


class EvalUsageError(EvalError):
    """Options that do not go together."""


class LMEvalOptionsError(EvalUsageError):
    """lm-eval refused its options (e.g. --log_samples without an output directory)."""


class TaskInvalidError(EvalError):
    """A task YAML that does not parse, includes what is not there, or that lm-eval refuses."""


class TaskDataError(EvalError):
    """A task's data file is unreadable as its declared format, or a split it uses is empty."""


class ServerUnreachableError(EvalError):
    """``aot eval --server``: nothing answers at the URL, or it is not a server aot can use."""
