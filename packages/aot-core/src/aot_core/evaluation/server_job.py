"""``aot eval --server URL``: lm-eval's own OpenAI-API models against a running ``aot serve``.

A server started once answers every job, so no job pays an engine start. The job runs
lm-eval's ``local-completions`` model (log-likelihood and generation), or
``local-chat-completions`` when ``--apply_chat_template`` is among lm-eval's options (the
server renders the chat with the model's template). The served model's name and context
come from the server's ``/v1/models``; the local MODEL directory is the tokenizer lm-eval
counts and splits tokens with, so it must be the one the server serves. lm-eval runs in
``aot eval``'s own process on the tasks its checks already built: a job against a server
pays one interpreter start and one task load, not two. Its outputs are ``aot eval``'s own
(``--output``), their ``aot`` section naming the server instead of an engine start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.evaluation.errors import EvalError, EvalUsageError, ServerUnreachableError

DISCOVERY_TIMEOUT_S = 10.0
"""Seconds ``/v1/models`` may take to answer before the server counts as unreachable."""

DEFAULT_CONCURRENCY = 4
"""Requests lm-eval keeps in flight (``num_concurrent``); the server batches them."""

CHAT_OPTION = "--apply_chat_template"
"""lm-eval's option that switches the job to ``local-chat-completions``."""

_NOT_WITH_SERVER = ("parity", "eager", "backend", "spec")
"""``aot eval`` options that start an engine, which a job against a server does not."""


@dataclass(frozen=True, kw_only=True)
class ServedModel:
    """What a running server says it serves (its ``/v1/models``)."""

    base: str
    """The server's URL without a trailing ``/v1`` (``http://127.0.0.1:8000``)."""

    name: str
    """The model name requests must use."""

    max_model_len: int | None
    """The served context in tokens, when the server says it (vLLM does)."""


def base_url(url: str) -> str:
    """``url`` as the server's base: trailing slashes and one ``/v1`` dropped."""
    base = url.strip().rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    if not base.startswith(("http://", "https://")):
        raise EvalUsageError(
            f"--server {url!r} is not an http(s) URL; pass the server's address, e.g. "
            "--server http://127.0.0.1:8000"
        )
    return base


def discover(url: str, *, timeout_s: float = DISCOVERY_TIMEOUT_S) -> ServedModel:
    """The model the server at ``url`` serves, or ServerUnreachableError saying why not."""
    base = base_url(url)
    where = f"{base}/v1/models"
    request = urllib.request.Request(where)
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    hint = "start one with `aot serve MODEL --spec S --port P`, or check --server"
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        extra = " (set OPENAI_API_KEY to the server's --api-key)" if exc.code == 401 else ""
        raise ServerUnreachableError(
            f"aot eval --server: {where} answered HTTP {exc.code}{extra}; it is not an "
            f"OpenAI-compatible server aot eval can use: {hint}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerUnreachableError(
            f"aot eval --server: no server answers at {base} ({reason}); {hint}"
        ) from None
    except ValueError as exc:
        raise ServerUnreachableError(
            f"aot eval --server: {where} did not answer JSON ({exc}); {hint}"
        ) from None
    models = body.get("data") if isinstance(body, dict) else None
    if not models or not isinstance(models[0], dict) or "id" not in models[0]:
        raise ServerUnreachableError(f"aot eval --server: {where} lists no model: {body!r:.200}")
    length = models[0].get("max_model_len")
    return ServedModel(
        base=base, name=str(models[0]["id"]), max_model_len=int(length) if length else None
    )


def lm_eval_model(
    served: ServedModel, tokenizer: Path, *, chat: bool, extra: str = ""
) -> tuple[str, dict[str, str]]:
    """lm-eval's model name and ``model_args`` for a job against ``served``."""
    endpoint = "chat/completions" if chat else "completions"
    args = {
        "model": served.name,
        "base_url": f"{served.base}/v1/{endpoint}",
        "num_concurrent": str(DEFAULT_CONCURRENCY),
        "max_retries": "3",
    }
    if not chat:  # log-likelihoods are scored on tokens the local tokenizer makes
        args |= {"tokenizer_backend": "huggingface", "tokenizer": str(tokenizer)}
    if served.max_model_len:
        # As aot's own lm-eval model: the context less one token for the continuation.
        args["max_length"] = str(served.max_model_len - 1)
    for item in filter(None, extra.split(",")):  # the user's --model-args win
        name, _, value = item.partition("=")
        args[name.strip()] = value
    return ("local-chat-completions" if chat else "local-completions"), args


def check_server_options(args: argparse.Namespace) -> None:
    """Refuse the options that only mean something when aot starts the engine."""
    given = [name for name in _NOT_WITH_SERVER if getattr(args, name, None)]
    if given:
        options = ", ".join(f"--{name}" for name in given)
        raise EvalUsageError(
            f"aot eval --server evaluates the model the server runs, so {options} cannot "
            "apply; drop them (the server's own `aot serve` options decide its engine)"
        )


def run_against_server(
    args: argparse.Namespace,
    model: Path,
    passthrough: list[str],
    started: float,
    progress: Callable[[str], None],
) -> int:
    """Check the tasks, find the served model, run lm-eval against it in this process."""
    from aot_core.cli.command import stdout_to_stderr
    from aot_core.evaluation.job import evaluate, prepare_tasks, write_outputs
    from aot_core.evaluation.lm_eval_args import lm_eval_argv

    check_server_options(args)
    with stdout_to_stderr():  # bad tasks, data and options fail here, before any request
        prepared = prepare_tasks(lm_eval_argv(args, passthrough), progress)
    served = discover(args.server)
    chat = CHAT_OPTION in passthrough
    name, model_args = lm_eval_model(served, model, chat=chat, extra=args.model_args or "")
    progress(f"evaluating {served.name!r} served at {served.base} with lm-eval's {name}")
    ready = time.perf_counter()
    try:
        with stdout_to_stderr():
            # As text, so lm-eval parses it as its CLI would (numbers become numbers).
            as_text = ",".join(f"{k}={v}" for k, v in model_args.items())
            results = evaluate(name, prepared, model_args=as_text)
    except Exception as exc:  # lm-eval's own errors: refused requests, retries exhausted
        raise EvalError(
            f"lm-eval's {name} job against {served.base} failed "
            f"({type(exc).__name__}: {exc}); its messages are above"
        ) from exc
    results["aot"] = _server_section(served, name, model_args, started, ready)
    if args.output:
        for path in write_outputs(results, Path(args.output).expanduser()):
            progress(f"wrote {path}")
    print(server_summary(results))
    sys.stdout.flush()
    return 0


def _server_section(
    served: ServedModel, name: str, model_args: dict[str, str], started: float, ready: float
) -> dict[str, Any]:
    """The ``aot`` section of a job against a server: who answered, how, and how long."""
    from importlib.metadata import version

    now = time.perf_counter()
    return {
        "server": {"url": served.base, "model": served.name, "lm_eval_model": name},
        "model_args": {k: v for k, v in model_args.items() if "key" not in k.lower()},
        "wall_s": {
            "to_first_request": round(ready - started, 3),
            "evaluate": round(now - ready, 3),
            "total": round(now - started, 3),
        },
        "versions": {"aot-core": version("aot-core"), "lm-eval": version("lm_eval")},
    }


def server_summary(results: dict[str, Any]) -> str:
    """lm-eval's results table, then which server answered and how long the job took."""
    from lm_eval.utils import make_table

    aot = results["aot"]
    lines = [make_table(results)]
    if "groups" in results:
        lines.append(make_table(results, "groups"))
    wall = aot["wall_s"]
    lines.append(
        f"aot: served by {aot['server']['url']} ({aot['server']['model']!r}, lm-eval's "
        f"{aot['server']['lm_eval_model']}); job {wall['total']:.1f} s, of which "
        f"{wall['evaluate']:.1f} s evaluating"
    )
    return "\n".join(lines)
