"""The exception hierarchy: one base class, one subclass per kind of failure.

Every error message says what went wrong and what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping


class AOTError(Exception):
    """Base class of every error raised by aot packages."""


class SpecError(AOTError, ValueError):
    """A compile spec (or a spec file) holds an invalid value.

    ``field`` names the offending field; ``line`` is set when the value came from a
    file and its line is known.
    """

    def __init__(self, message: str, *, field: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.line = line


class ModelFilesError(SpecError):
    """A model directory's files (its weights) cannot be read.

    A ``SpecError`` (field ``model``) for callers that catch that; the ``aot`` command
    exits 4, as for an unreadable config.json, whichever backend found it.
    """


class BackendUnavailableError(AOTError, ImportError):
    """A backend was asked for but cannot run here (not installed, or unusable).

    ``reasons`` maps each backend that was considered to why it could not be used.
    """

    def __init__(self, message: str, *, reasons: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.reasons: Mapping[str, str] = dict(reasons or {})


class NoBackendInstalledError(BackendUnavailableError):
    """No package registers a backend in the ``aot.backends`` entry-point group."""


class NoUsableBackendError(BackendUnavailableError):
    """Backends are installed, but none of them can run on this machine."""


class CompilationError(AOTError, RuntimeError):
    """Compiling a model failed in a way that no fallback could recover from."""


class EnvironmentVariableError(AOTError, ValueError):
    """An environment variable aot reads holds a value it refuses; ``variable`` names it.

    The ``aot`` command exits 2 (bad command line), as for the same value given as an option.
    """

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable


class EmptyPathVariableError(EnvironmentVariableError):
    """An environment variable aot reads a path from is set but empty (or blank).

    Refused rather than skipped: ``AOT_CACHE_DIR=$UNSET aot cache clear`` must not fall
    back to the real cache.
    """

    def __init__(self, variable: str) -> None:
        super().__init__(
            variable,
            f"${variable} is set but empty; an empty path would silently mean another "
            f"directory (the default cache). Set it to a directory, or unset it "
            f"(`unset {variable}`) to use the default",
        )


class ArtifactError(AOTError):
    """A compiled artifact is missing, tampered with, truncated or built for another system."""


class ArtifactIncompatibleError(ArtifactError):
    """An artifact was built for another backend, torch, vLLM or device; it is never loaded."""


class ArtifactCorruptError(ArtifactError):
    """An artifact's files do not match the checksums in its manifest."""


class NotOwnedError(ArtifactError):
    """aot was asked to delete or replace something it cannot prove it wrote; nothing changed.

    Only a directory holding an intact aot manifest proves that aot wrote it; anything
    else (another tool's ``manifest.json``, a malformed one, a plain directory, a file) is
    left exactly as it was.
    """


class GGUFError(ModelFilesError):
    """A GGUF file cannot become a model directory: it is truncated or not GGUF, or its
    architecture is one transformers cannot dequantize (named in the message).

    A ``ModelFilesError``, so the ``aot`` command exits 4 as for any unreadable weights;
    nothing is left in the model cache.
    """


class OptionalDependencyError(AOTError, ImportError):
    """An optional package aot needs for what was asked is not installed; the message
    gives the ``pip install`` command. The ``aot`` command exits 12."""
