"""``aot eval --server URL`` refusing what it cannot use, before lm-eval sends a request:
no server at the URL, a server that is not OpenAI-compatible, options that would start an
engine, a task that is not there. The job against a real ``aot serve`` is in
``test_serve_eval.py`` (slow)."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aot_core.cli.app import ExitCode
from conftest import TASKS, Run

GEN = ("--tasks", "aot_gen", "--include-path", str(TASKS), "--limit", "2")


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # the test reads stderr
        pass


@pytest.fixture
def not_openai(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on loopback serving an empty directory: 404 to /v1/models."""
    handler = functools.partial(_Files, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_no_server_at_the_url_is_server_unreachable(
    eval_here: Callable[..., Run], tiny: Path
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    run = eval_here(str(tiny), *GEN, "--server", url)
    assert run.rc == ExitCode.SERVER_UNREACHABLE, run.stderr[-2000:]
    assert f"no server answers at {url}" in run.stderr and "aot serve" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_server_that_is_not_openai_compatible_is_server_unreachable(
    eval_here: Callable[..., Run], tiny: Path, not_openai: str
) -> None:
    run = eval_here(str(tiny), *GEN, "--server", f"{not_openai}/v1/")
    assert run.rc == ExitCode.SERVER_UNREACHABLE, run.stderr[-2000:]
    assert f"{not_openai}/v1/models answered HTTP 404" in run.stderr


def test_engine_options_and_a_non_http_url_are_usage_errors(
    eval_here: Callable[..., Run], tiny: Path
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    run = eval_here(str(tiny), *GEN, "--server", url, "--eager", "--backend", "vllm")
    assert run.rc == ExitCode.USAGE, run.stderr[-2000:]
    assert "--eager, --backend cannot apply" in run.stderr
    run = eval_here(str(tiny), *GEN, "--server", "127.0.0.1:8000")
    assert run.rc == ExitCode.USAGE, run.stderr[-2000:]
    assert "not an http(s) URL" in run.stderr


def test_tasks_are_checked_before_the_server_is_asked(
    eval_here: Callable[..., Run], tiny: Path
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    args = ("--tasks", "no_such_task", "--include-path", str(TASKS), "--server", url)
    run = eval_here(str(tiny), *args)
    assert run.rc == ExitCode.TASK_NOT_FOUND, run.stderr[-2000:]
