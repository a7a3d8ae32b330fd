"""aot-toybackend: a test-only aot backend (see its README)."""

from aot_toybackend.backend import ToyCompiler

__all__ = ["ToyCompiler"]
