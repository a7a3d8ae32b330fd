"""The ``aot serve`` command: the engine's own OpenAI-compatible server, started from aot's
verified cache entry.

The entry is the one ``aot compile MODEL --backend B --spec S`` writes (same spec
resolution, same key). A missing entry is compiled and published first, exactly as
``aot compile`` does; a present one is verified and its lock held for as long as the server
runs, so a second server (or a job that would rewrite it) cannot use it meanwhile. The
port is bound before any engine starts. ``add_parser`` puts the command into ``aot``'s
parser; nothing heavy is imported until it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aot_core import artifacts
from aot_core.cli.arguments import name_arg, non_negative_int, path_arg, positive_int, text_arg
from aot_core.cli.command import (
    CLIError,
    ExitCode,
    check_model,
    load_spec,
    progress,
    stdout_to_stderr,
)
from aot_core.errors import ArtifactCorruptError
from aot_core.serving import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_HOST,
    DEFAULT_PORT,
    STATS_PATH,
    ServeRequest,
)
from aot_core.spec import CompileSpec
from aot_core.stats import OptimizationStats

if TYPE_CHECKING:
    from aot_core.start_config import StartConfig

EXAMPLES = f"""examples:
  aot serve ./my-llama --spec spec.toml --port 8000
  aot serve ./my-llama --spec spec.toml --api-key "$KEY" --host 0.0.0.0
  aot serve ./my-llama --spec spec.toml --replicas 2 --ray-address 10.0.0.1:6379
  lm_eval --model local-completions --tasks my_task --include_path ./tasks \\
      --model_args model=./my-llama,base_url=http://127.0.0.1:8000/v1/completions,\\
tokenizer_backend=huggingface,tokenizer=./my-llama

The server is vLLM's own (/v1/completions with echo and logprobs, /v1/chat/completions,
/health, /metrics), started warm from the verified entry `aot compile MODEL --backend vllm
--spec S` writes; the first start compiles and publishes it. aot's start record is served
at {STATS_PATH}. SIGTERM or Ctrl-C lets in-flight requests finish (--drain-timeout), then
stops every engine process. The context is the spec's max_model_len; left open, it is what
`aot compile` resolves (just above its example prompts): set it for serving."""


def add_parser(sub: Any, fmt: type[argparse.HelpFormatter], epilog: str) -> None:
    """Add ``aot serve`` to ``aot``'s subcommands."""
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API, warm from the verified cache",
        epilog=f"{EXAMPLES}\n\n{epilog}",
        formatter_class=fmt,
    )
    p.add_argument("model", type=path_arg, help="local Hugging Face model directory")
    p.add_argument("--spec", type=path_arg, help="compile spec file (.toml or .json)")
    p.add_argument("--backend", default="vllm", type=name_arg, help="aot backend (default: vllm)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    p.add_argument("--api-key", help="refuse requests without 'Authorization: Bearer KEY'")
    p.add_argument(
        "--served-model-name",
        type=text_arg,
        help="the model name requests use (default: MODEL as given)",
    )
    p.add_argument(
        "--chat-template",
        type=path_arg,
        metavar="FILE",
        help="Jinja chat template for /v1/chat/completions when the tokenizer has none",
    )
    p.add_argument("--eager", action="store_true", help="serve without compilation")
    p.add_argument(
        "--drain-timeout",
        type=non_negative_int,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        metavar="S",
        help="on SIGTERM/Ctrl-C, seconds in-flight requests may run on before they are "
        f"aborted (default {DEFAULT_DRAIN_TIMEOUT_S}; 0 aborts them at once)",
    )
    p.add_argument(
        "--replicas",
        type=positive_int,
        metavar="N",
        help="serve N replicas through Ray Serve (aot-vllm[ray]) on the Ray cluster at "
        "--ray-address, behind one endpoint at --host:--port; each imports the verified "
        "entry and starts warm",
    )
    p.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="with --replicas: the Ray cluster's address (default: $RAY_ADDRESS, else a new "
        "local cluster)",
    )
    p.set_defaults(func=cmd_serve)


@dataclass(frozen=True, kw_only=True)
class _Start:
    """How the served model was started, for the ready line and ``/aot/stats``."""

    path: str
    """"eager", "warm" (verified entry) or "cold" (compiled and published first)."""

    key: str | None
    """The cache entry's key (None eager)."""

    artifact: Path | None
    """The cache entry's directory (None eager)."""

    compile_s: float | None
    """Wall seconds the first start spent compiling and publishing (cold only)."""


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean drain and stop."""
    from aot_core.registry import get_backend

    started = time.perf_counter()
    model = check_model(args.model)
    spec = load_spec(args.spec)
    if args.eager:
        spec = spec.replace(compile_mode="none")
    cls = get_backend(args.backend)
    if not cls.serves:
        raise CLIError(
            ExitCode.BACKEND_UNAVAILABLE,
            f"backend {cls.name!r} has no HTTP server; aot serve runs with --backend vllm",
        )
    cls.options_class.validate(spec)
    store = artifacts.ArtifactStore(args.cache_dir)
    spec, start_config = serve_spec(spec, model, store.root)
    if args.replicas is not None:
        return _serve_replicas(args, cls, model, spec, store, start_config=start_config)
    if args.ray_address:
        raise CLIError(ExitCode.USAGE, "--ray-address goes with --replicas N")
    with _bound(args.host, args.port) as sock, stdout_to_stderr():
        host, port = sock.getsockname()[:2]
        progress(f"bound {_url(host, port)}; starting the engine (requests wait until ready)")
        serve = _Serve(args=args, cls=cls, model=model, sock=sock, host=host, port=port)
        if not spec.compiles:
            serve.run(spec, _Start(path="eager", key=None, artifact=None, compile_s=None), started)
            return ExitCode.OK
        key = artifacts.entry_key(
            backend=cls.name, backend_version=cls.version(), model=model, spec=spec
        )
        dest = store.path(key)
        start = _Start(path="warm", key=key, artifact=dest, compile_s=None)
        if not (dest / artifacts.MANIFEST_NAME).exists():
            start = _compile_first(cls.name, model, spec, dest, key, start=start_config)
        with _held(dest, key, cls.name):
            serve.run(spec.replace(cache_dir=str(dest / artifacts.FILES_DIR)), start, started)
    return ExitCode.OK


def _serve_replicas(
    args: argparse.Namespace,
    cls: Any,
    model: Path,
    spec: CompileSpec,
    store: Any,
    *,
    start_config: StartConfig,
) -> int:
    """``--replicas``: reach Ray first (fails fast), then the entry as ``aot serve`` makes
    it (compiled and published first when missing), then the replicas on Ray Serve."""
    from aot_core.serve import replicas as serve_replicas

    serve_replicas.connect(args.ray_address, progress)
    key = dest = None
    if spec.compiles:
        key = artifacts.entry_key(
            backend=cls.name, backend_version=cls.version(), model=model, spec=spec
        )
        dest = store.path(key)
        if not (dest / artifacts.MANIFEST_NAME).exists():
            _compile_first(cls.name, model, spec, dest, key, start=start_config)
    plan = serve_replicas.ReplicaPlan(model=model, spec=spec, backend=cls.name, entry=dest, key=key)
    with stdout_to_stderr():
        return serve_replicas.run(plan, args, progress)


def serve_spec(spec: CompileSpec, model: Path, cache_root: Path) -> tuple[CompileSpec, StartConfig]:
    """The spec ``aot compile`` keys and builds its entry with (its open fields resolved by
    aot-core's ``resolve_start`` with the same example prompts), so the server uses that
    entry; eager, the same configuration without compilation. With it, the start
    configuration it came from, which a first compile's manifest records."""
    from aot_core.bench.prompts import default_prompts
    from aot_core.start_config import resolve_start

    start = resolve_start(spec, model, examples=default_prompts(), cache_root=cache_root)
    resolved = start.apply(spec)
    # The cache root is where an eager engine's entry goes; a compiled one runs from its
    # artifact's files, and ``aot compile`` keys its entry without a cache_dir.
    if spec.compiles:
        resolved = resolved.replace(cache_dir=spec.cache_dir)
    return resolved, start


@dataclass(frozen=True, kw_only=True)
class _Serve:
    """The parts of one server start decided before the spec's entry is."""

    args: argparse.Namespace
    """The command line."""

    cls: Any
    """The backend class."""

    model: Path
    """The model directory."""

    sock: socket.socket
    """The bound socket."""

    host: str
    """The bound address."""

    port: int
    """The bound port."""

    def run(self, spec: CompileSpec, start: _Start, started: float) -> None:
        """Start the backend's server on ``spec`` and block until it has stopped."""
        name = self.args.served_model_name or self.args.model

        def on_ready(stats: OptimizationStats) -> Mapping[str, Any]:
            record = self._record(stats, start, name, time.perf_counter() - started)
            progress(_ready_line(record, stats))
            progress(f"start stats: {json.dumps(record, default=str)}")
            return record

        request = ServeRequest(
            model=self.model,
            spec=spec,
            sock=self.sock,
            host=self.host,
            port=self.port,
            api_key=self.args.api_key,
            served_model_name=name,
            chat_template=self.args.chat_template,
            drain_timeout_s=self.args.drain_timeout,
            on_ready=on_ready,
            progress=progress,
        )
        self.cls(spec).serve(request)
        progress("server stopped; every engine process has exited")

    def _record(
        self, stats: OptimizationStats, start: _Start, name: str, ready_s: float
    ) -> dict[str, Any]:
        return {
            "url": _url(self.host, self.port),
            "model": str(self.model),
            "served_model_name": name,
            "backend": self.cls.name,
            "start": {
                "path": start.path,
                "key": start.key,
                "artifact": None if start.artifact is None else str(start.artifact),
                "compile_s": start.compile_s,
            },
            "ready_s": round(ready_s, 3),
            "stats": stats.to_dict(),
        }


def _ready_line(record: Mapping[str, Any], stats: OptimizationStats) -> str:
    start = record["start"]
    if start["path"] == "cold":
        how = (
            f"compiled and published {start['artifact']} in {start['compile_s']:.1f} s, "
            "then started warm from it"
        )
    elif start["path"] == "warm":
        how = f"warm from verified artifact {start['artifact']}"
    else:
        how = "eager (no compilation)"
    context = stats.resolved_config.get("max_model_len")
    return (
        f"ready: serving {record['served_model_name']!r} at {record['url']}/v1 "
        f"({record['ready_s']:.1f} s after the command started; engine start "
        f"{stats.startup_s or 0:.1f} s, {how}; compile cache: {stats.cache.describe()}; "
        f"context {context} tokens). Start record: {record['url']}{STATS_PATH}"
    )


def _compile_first(
    backend: str, model: Path, spec: CompileSpec, dest: Path, key: str, *, start: StartConfig
) -> _Start:
    """Compile and publish the entry as ``aot compile`` does (under its lock; a concurrent
    compile of the same entry is waited for and reused)."""
    from aot_core.bench.prompts import default_prompts
    from aot_core.cli.workflow import compile_into, manifest_record

    artifacts.ensure_writable(dest.parent)
    progress(f"no verified entry yet: compiling {model} with {backend} into {dest} first")
    t0 = time.perf_counter()
    _, compiled = compile_into(
        dest=dest,
        key=key,
        backend=backend,
        model=model,
        spec=spec,
        example_inputs=default_prompts(),
        force=False,
        progress=progress,
        resolved=manifest_record(start, dest),
    )
    if not compiled:
        return _Start(path="warm", key=key, artifact=dest, compile_s=None)
    return _Start(path="cold", key=key, artifact=dest, compile_s=time.perf_counter() - t0)


@contextlib.contextmanager
def _held(dest: Path, key: str, backend: str) -> Iterator[None]:
    """Verify the entry and hold its lock while serving; refuse one another process holds."""
    try:
        # A probe that never waits: a server holds the lock for hours, so a second one
        # must fail now, not queue behind it.
        with artifacts.entry_lock(dest, timeout_s=0, read_only_ok=True):
            pass
    except artifacts.LockTimeoutError as exc:
        raise CLIError(
            ExitCode.ENTRY_IN_USE,
            f"{exc}. Another aot process (a server, or a job compiling or using it) holds "
            f"this cache entry; stop it, or serve with another spec or --cache-dir",
        ) from None
    try:
        with artifacts.using_artifact(dest, backend=backend, on_wait=progress):
            yield
    except ArtifactCorruptError as exc:
        raise CLIError(
            ExitCode.ARTIFACT_CORRUPT,
            f"the cache entry cannot be served: {exc}. It was left as it is: "
            f"`aot cache clear {key}` removes it (the next `aot serve` compiles afresh), or "
            "`aot compile MODEL --backend B --spec S --force` rebuilds it",
        ) from exc


@contextlib.contextmanager
def _bound(host: str, port: int) -> Iterator[socket.socket]:
    """A listening socket on ``host``:``port``, or PORT_IN_USE naming why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise CLIError(
            ExitCode.PORT_IN_USE, f"--host {host!r} is not an address here ({exc}); "
        ) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Listening at once (not only bound) is what makes a second server on this port
        # fail here: Linux lets two SO_REUSEADDR sockets bind one port while neither listens.
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CLIError(ExitCode.PORT_IN_USE, _bind_problem(host, port, exc)) from None
    try:
        yield sock
    finally:
        sock.close()


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use by another process; pass another --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine, so {where} cannot be bound; pass --host"
    if exc.errno == errno.EACCES:
        return f"{where} needs privileges to bind (ports below 1024); pass --port 1024 or above"
    return f"{where} cannot be bound: {exc.strerror or exc}"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535; 0: any free one)")
    return value
