"""Starting the model of an evaluation job: eager, or compiled from aot's verified cache.

A compiled job looks up the artifact store entry for (backend, its version, model, spec),
the same entry ``aot compile`` writes. A verified entry is loaded (warm); a missing or
refused one is compiled and published while the job runs on the freshly compiled model
(cold), so the next job with the same model and spec starts warm.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aot_core import artifacts
from aot_core.compiler import CompiledModel
from aot_core.errors import ArtifactError
from aot_core.evaluation.model_args import EvalModelConfig
from aot_core.spec import CompileSpec
from aot_core.start_config import StartConfig

if TYPE_CHECKING:
    from aot_core.evaluation.workload import JobRequests

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class StartRecord:
    """How the job's model was started."""

    path: str
    """"eager", "warm" (verified artifact loaded) or "cold" (compiled and published)."""

    artifact: str | None = None
    """The artifact directory a compiled job used or wrote."""

    key: str | None = None
    """The artifact store key (shared with ``aot compile`` for the same model and spec)."""

    note: str = ""
    """Why a cached artifact was not used, when it was not."""

    start: dict[str, Any] = field(default_factory=dict)
    """The job's start configuration (``StartConfig.to_dict``): each value and its source."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible fields."""
        return {
            "path": self.path,
            "artifact": self.artifact,
            "key": self.key,
            "note": self.note,
            "resolved": self.start,
        }


def run_with_model(
    config: EvalModelConfig,
    body: Callable[[CompiledModel], T],
    *,
    cache_dir: str | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    requests: JobRequests | None = None,
) -> tuple[T, StartRecord]:
    """Start the model ``config`` describes, run ``body`` on it, close it. ``requests``:
    what the job sends (sizes the KV cache; never the artifact key).

    ``body``'s exceptions propagate after the model is closed; a compiled artifact is
    still published (cold) or re-sealed (warm), because a failed evaluation says nothing
    against the compiled code.
    """
    from aot_core.registry import get_backend

    cls = get_backend(config.backend)
    spec, start = job_spec(config, cache_dir, requests=requests)
    if not spec.compiles:
        progress(f"starting {config.model} eagerly with {cls.name}")
        compiled = cls(spec).compile_model(str(config.model), spec)
        try:
            return body(compiled), StartRecord(path="eager", start=start.to_dict())
        finally:
            compiled.close()
    key = artifacts.entry_key(
        backend=cls.name, backend_version=cls.version(), model=config.model, spec=spec
    )
    dest = artifacts.ArtifactStore(cache_dir).path(key)
    note = ""
    run = dataclasses.replace(config, spec=spec)
    files = {"value": str(dest / artifacts.FILES_DIR), "source": "aot artifact of the job's key"}
    entry = _Entry(
        cls=cls, config=run, dest=dest, key=key, start={**start.to_dict(), "cache_dir": files}
    )
    if (dest / artifacts.MANIFEST_NAME).exists():
        try:
            return _warm(entry, body, progress)
        except ArtifactError as exc:
            note = f"cached artifact refused, compiled afresh: {exc}"
            progress(note)
    return _cold(entry, body, progress, force=bool(note), note=note)


def job_spec(
    config: EvalModelConfig, cache_dir: str | None = None, *, requests: JobRequests | None = None
) -> tuple[CompileSpec, StartConfig]:
    """The spec the job's backend gets, and its start configuration, decided once for eager
    and compiled runs alike: the fields the spec leaves open resolved as ``aot compile``
    resolves them (the same example prompts), so ``--eager``, the compiled job and
    ``aot compile``'s entry run one engine configuration. A compiled job's ``cache_dir``
    becomes its artifact's files when it starts. ``requests`` sizes the KV cache
    (``kv_cache_seqs``), which the artifact key ignores, so a job of any size shares
    ``aot compile``'s entry."""
    from aot_core.bench.prompts import default_prompts
    from aot_core.start_config import resolve_start

    start = resolve_start(
        config.spec,
        config.model,
        examples=default_prompts(),
        cache_root=artifacts.ArtifactStore(cache_dir).root,
        requests=requests,
    )
    return start.apply(config.spec), start


@dataclass(frozen=True, kw_only=True)
class _Entry:
    """The artifact store entry a compiled job uses."""

    cls: Any
    """The backend class."""

    config: EvalModelConfig
    """The job's model and spec."""

    dest: Path
    """The entry's directory."""

    key: str
    """The entry's key."""

    start: dict[str, Any]
    """The job's start configuration, for its record."""


class _Outcome:
    """The body's result or exception, carried past the artifact's publish or re-seal."""

    def __init__(self) -> None:
        self.value: Any = None
        self.error: Exception | None = None
        self.ran = False

    def run(self, body: Callable[[CompiledModel], Any], compiled: CompiledModel) -> None:
        self.ran = True
        try:
            self.value = body(compiled)
        except Exception as exc:
            self.error = exc

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def _warm(
    entry: _Entry, body: Callable[[CompiledModel], T], progress: Callable[[str], None]
) -> tuple[T, StartRecord]:
    from aot_core.bench.prompts import default_prompts

    cls, config, dest, key = entry.cls, entry.config, entry.dest, entry.key
    outcome = _Outcome()
    with contextlib.ExitStack() as stack:
        # Verifies every checksum before anything loads; raises ArtifactError if refused.
        stack.enter_context(artifacts.using_artifact(dest, backend=cls.name, on_wait=progress))
        progress(f"starting {config.model} with {cls.name} from verified artifact {dest}")
        run_spec = config.spec.replace(cache_dir=str(dest / artifacts.FILES_DIR))
        compiled = cls(run_spec).compile_model_aot(str(config.model), default_prompts(), run_spec)
        try:
            outcome.run(body, compiled)
        finally:
            compiled.close()
    record = StartRecord(path="warm", artifact=str(dest), key=key, start=entry.start)
    return outcome.result(), record


def _cold(
    entry: _Entry,
    body: Callable[[CompiledModel], T],
    progress: Callable[[str], None],
    *,
    force: bool,
    note: str,
) -> tuple[T, StartRecord]:
    from aot_core.bench.prompts import default_prompts
    from aot_core.cli.workflow import compile_into

    cls, config, dest, key = entry.cls, entry.config, entry.dest, entry.key
    artifacts.ensure_writable(dest.parent)
    progress(f"compiling {config.model} with {cls.name} into {dest} (the next job starts warm)")
    outcome = _Outcome()
    _, compiled_now = compile_into(
        dest=dest,
        key=key,
        backend=cls.name,
        model=config.model,
        spec=config.spec,
        example_inputs=default_prompts(),
        force=force,
        progress=progress,
        after_compile=lambda compiled: outcome.run(body, compiled),
        resolved=entry.start,
    )
    if not outcome.ran:
        # Another job published the entry while this one waited for its lock.
        return _warm(entry, body, progress)
    path = "cold" if compiled_now else "warm"
    record = StartRecord(path=path, artifact=str(dest), key=key, note=note, start=entry.start)
    return outcome.result(), record
