"""What ``aot serve`` asks of a backend that can serve a model over HTTP.

aot-core decides everything that is not the engine's: the spec and its cache entry (the
one ``aot compile`` writes), the lock held on it while serving, the bound socket. The
backend (``Compiler.serve``) starts its engine's own OpenAI-compatible server on that
socket from the verified entry and returns when the server has stopped. Nothing here
imports torch or an engine.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.spec import CompileSpec
from aot_core.stats import OptimizationStats

DEFAULT_HOST = "127.0.0.1"
"""Loopback: a server is reachable from other machines only when the user says so."""

DEFAULT_PORT = 8000
"""vLLM's own default port."""

DEFAULT_DRAIN_TIMEOUT_S = 30
"""Seconds in-flight requests may take to finish after SIGTERM/SIGINT before they are
aborted and the engine stops."""


@dataclass(frozen=True, kw_only=True)
class ServeRequest:
    """One server start, decided by ``aot serve`` before the backend is called."""

    model: Path
    """The local model directory."""

    spec: CompileSpec
    """The spec the engine runs; compiled, its ``cache_dir`` is the verified artifact's
    files (the caller holds the artifact's lock until ``serve`` returns)."""

    sock: socket.socket
    """The socket bound to ``host``:``port`` (bound before the engine starts, so a busy
    port fails in a second, not after the engine's start)."""

    host: str
    """The address bound, for the URL printed and vLLM's own records."""

    port: int
    """The port bound (the real one when 0 was asked for)."""

    api_key: str | None = None
    """Requests must carry ``Authorization: Bearer <api_key>`` (None: no key)."""

    served_model_name: str | None = None
    """The ``model`` name requests use; None: the model directory as given."""

    chat_template: str | None = None
    """A Jinja chat template file (or the template itself) for models whose tokenizer has
    none; None: the tokenizer's own."""

    drain_timeout_s: int = DEFAULT_DRAIN_TIMEOUT_S
    """On SIGTERM/SIGINT, seconds in-flight requests may run on before they are aborted."""

    on_ready: Callable[[OptimizationStats], Mapping[str, Any]]
    """Called once the engine is ready with its start stats; returns the JSON record the
    server serves at ``GET /aot/stats``."""

    progress: Callable[[str], None]
    """Progress lines for the user (stderr)."""


STATS_PATH = "/aot/stats"
"""Where a running server serves aot's start record (``ServeRequest.on_ready``'s result)."""
