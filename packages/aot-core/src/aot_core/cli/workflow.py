"""The compile-and-publish workflow behind ``aot compile`` and ``aot bench``'s cold starts.

``compile_into`` compiles a model with one backend into a staging directory beside the
destination, writes the manifest and publishes the artifact with one rename, all under
the destination's lock. The backend's ``spec.cache_dir`` is the staging artifact's
``files/`` directory (see ``CompileSpec.cache_dir``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aot_core import artifacts
from aot_core.errors import BackendUnavailableError, CompilationError, SpecError
from aot_core.spec import CompileSpec

if TYPE_CHECKING:
    from aot_core.start_config import StartConfig

INTERRUPTED = threading.Event()
"""Set by the ``aot`` command's SIGINT/SIGTERM handler; checked before anything is
published, in case a library swallowed the KeyboardInterrupt the signal raised."""


def manifest_record(start: StartConfig, dest: Path) -> dict[str, Any]:
    """The start configuration an entry's manifest records (``compile_into``'s
    ``resolved``): the command's, with the entry's own files as its cache."""
    files = {"value": str(dest / artifacts.FILES_DIR), "source": "aot artifact of the key"}
    return {**start.to_dict(), "cache_dir": files}


def compile_into(
    *,
    dest: Path,
    key: str,
    backend: str,
    model: Path,
    spec: CompileSpec,
    example_inputs: Any,
    force: bool,
    progress: Callable[[str], None],
    after_compile: Callable[[Any], None] | None = None,
    resolved: Mapping[str, Any] | None = None,
) -> tuple[artifacts.Manifest, bool]:
    """Compile into a staging directory beside ``dest``, write the manifest, publish atomically.

    Holds ``dest``'s lock throughout, so a concurrent compile of the same entry waits and
    then reuses the result. Returns (manifest, compiled); compiled is False when a valid
    entry was already there. ``after_compile`` gets the compiled model before it is closed
    (the benchmark generates with it). The backend's options are validated first, so a bad
    one fails before anything is staged. ``resolved``, the command's start configuration
    (``StartConfig.to_dict()``), goes into the manifest's ``extra``.
    """
    from aot_core.registry import get_backend

    cls = get_backend(backend)
    # Validated once, here, and handed to the backend: where its files go (cache_dir)
    # changes nothing its options are checked against.
    options = cls.options_class.validate(spec)

    def build(files: Path) -> dict[str, Any]:
        compiler = cls(spec.replace(cache_dir=str(files)), options=options)
        try:
            compiled = compiler.compile_model_aot(str(model), example_inputs)
        except (CompilationError, SpecError, BackendUnavailableError, OSError):
            raise
        except Exception as exc:  # a backend crash is reported, not a traceback
            raise CompilationError(
                f"backend {backend!r} failed to compile {model}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            if after_compile is not None:
                after_compile(compiled)
            stats = compiled.stats
        finally:
            compiled.close()
        if INTERRUPTED.is_set():
            # Some compilers swallow KeyboardInterrupt and finish anyway; never publish then.
            raise KeyboardInterrupt
        return {
            "device": stats.device or "cpu",
            "extra": {
                "compile_stats": stats.to_dict(),
                **({"resolved": dict(resolved)} if resolved is not None else {}),
            },
            "ranks": artifacts.rank_records(stats.ranks),
        }

    return artifacts.build_and_publish(
        dest,
        key=key,
        build=build,
        backend=backend,
        backend_version=cls.version(),
        spec=spec,
        model=str(model),
        force=force,
        on_wait=progress,
        on_refused=lambda exc: progress(f"existing artifact not used, compiling afresh: {exc}"),
    )
