"""The walk of one spec field (dtype) from the command line to the engine, counted.

    .nox/vllm-release-0-32-0/bin/python benchmarks/spec_walk.py [--model DIR]

Runs ``aot compile MODEL --backend vllm`` (default MODEL: the built-in tiny Llama, written
to a temporary directory with the cache) in this process, traced, and stops it where the
spec leaves aot: ``vllm.LLM``'s constructor records the dtype it was given and raises, so
no engine starts and nothing is published. Prints, as JSON:

- ``modules``: the aot modules whose functions were called with a ``CompileSpec`` among
  their locals, in the order first seen (the modules the field passes through);
- ``specs_built``: ``CompileSpec`` instances built before the engine, by the function
  that built each (every one a rebuild of the spec but the first);
- ``dtype_decisions``: the calls of ``aot_core.dtype_choice.resolve_dtype`` given "auto"
  (where "auto" is decided), by caller; ``resolve_dtype_calls``: every call;
- ``engine_dtype``: the dtype ``vllm.LLM`` got.

vLLM is imported before tracing starts, so only aot's own calls are walked. The exit code
is aot's for the stopped start (7); the script exits 0 when the walk reached the engine.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

SPEC_FILES = ("/aot_core/spec.py", "dataclasses.py", "<string>")
WALKED = ("aot_core", "aot_vllm")


class _Stop(Exception):
    """Raised by the stand-in ``vllm.LLM`` constructor: the walk ends at the engine."""


class Walk:
    """What the trace saw."""

    def __init__(self) -> None:
        from aot_core.spec import CompileSpec

        self.spec_class = CompileSpec
        self.modules: list[str] = []
        self.built: collections.Counter[str] = collections.Counter()
        self.calls: list[dict[str, Any]] = []
        self.engine: dict[str, Any] = {}

    def trace(self, frame: FrameType, event: str, _arg: Any) -> None:
        """``sys.settrace`` hook: note spec-holding aot functions and dtype decisions."""
        name = frame.f_globals.get("__name__", "")
        if event != "call" or not name.startswith(WALKED):
            return
        if frame.f_code.co_name == "resolve_dtype" and name == "aot_core.dtype_choice":
            self.calls.append(
                {"spec_dtype": frame.f_locals.get("spec_dtype"), "caller": _where(frame.f_back)}
            )
        if name not in self.modules and any(
            isinstance(v, self.spec_class) for v in frame.f_locals.values()
        ):
            self.modules.append(name)

    def report(self, rc: object) -> dict[str, Any]:
        """The counts, as JSON-compatible data."""
        built = self.engine.get("built", {})
        decisions = self.engine.get("calls", [])
        auto = [c["caller"] for c in decisions if c["spec_dtype"] == "auto"]
        return {
            "exit_code": rc,
            "engine_dtype": self.engine.get("dtype"),
            "modules": self.modules,
            "module_count": len(self.modules),
            "specs_built": built,
            "specs_built_count": sum(built.values()),
            "dtype_decisions": auto,
            "dtype_decision_count": len(auto),
            "resolve_dtype_calls": decisions,
        }


def _where(frame: FrameType | None) -> str:
    if frame is None:
        return "?"
    return f"{frame.f_globals.get('__name__')}.{frame.f_code.co_name}"


def _count_builds(walk: Walk) -> None:
    """Count every ``CompileSpec`` built, by the first caller outside spec.py/dataclasses."""
    from aot_core.spec import CompileSpec

    original = CompileSpec.__post_init__

    def post_init(self: CompileSpec) -> None:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.endswith(SPEC_FILES):
            frame = frame.f_back  # type: ignore[assignment]
        walk.built[_where(frame)] += 1
        original(self)

    CompileSpec.__post_init__ = post_init  # type: ignore[method-assign]


def _stop_at_engine(walk: Walk) -> None:
    import vllm

    def llm_init(_self: Any, model: str, **kwargs: Any) -> None:
        walk.engine.update(dtype=kwargs.get("dtype"), built=dict(walk.built))
        walk.engine["calls"] = list(walk.calls)
        raise _Stop(f"the walk stops before the engine ({model})")

    vllm.LLM.__init__ = llm_init  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: the tiny Llama)")
    args = parser.parse_args()
    from aot_core.cli import main as aot
    from aot_core.models.tiny import write_tiny_llama

    walk = Walk()
    _stop_at_engine(walk)
    _count_builds(walk)
    with tempfile.TemporaryDirectory(prefix="spec-walk-") as tmp:
        model = args.model or write_tiny_llama(Path(tmp) / "tiny")
        argv = ["--cache-dir", str(Path(tmp) / "cache"), "compile", str(model)]
        sys.settrace(walk.trace)  # type: ignore[arg-type]
        try:
            rc: object = aot([*argv, "--backend", "vllm"])
        except SystemExit as exc:
            rc = exc.code
        finally:
            sys.settrace(None)
    print(json.dumps(walk.report(rc), indent=1))
    return 0 if walk.engine else 1


if __name__ == "__main__":
    sys.exit(main())
