"""``aot serve``'s checks that need no engine: the model, the backend, the address.

The server itself (vLLM's) is tested in aot-vllm's ``test_serve.py``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from aot_core.cli.app import main
from aot_core.cli.command import CLIError, ExitCode
from aot_core.serve.command import _bound
from cli_support import run_aot


def _run(argv: list[str]) -> tuple[int, str]:
    ran = run_aot(argv)
    assert "Traceback" not in ran.err
    return ran.code, ran.err


def test_serve_is_listed_with_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--spec", "--host", "--port", "--api-key", "--eager", "--drain-timeout"):
        assert option in out
    assert "127.0.0.1" in out


def test_a_missing_model_or_one_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    code, err = _run(["serve", str(tmp_path / "nope")])
    assert code == ExitCode.MODEL_NOT_FOUND, err
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    code, err = _run(["serve", str(tmp_path)])
    assert code == ExitCode.NOT_A_CAUSAL_LM, err


def test_a_backend_without_a_server_is_refused(tmp_path: Path) -> None:
    from aot_core.models.tiny import write_tiny_llama

    model = write_tiny_llama(tmp_path / "tiny")
    code, err = _run(["serve", str(model), "--backend", "toy"])
    assert code == ExitCode.BACKEND_UNAVAILABLE, err
    assert "no HTTP server" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--port", "x"],
        ["--drain-timeout", "-1"],
        ["--replicas", "0"],
        ["--backend", " "],
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], tmp_path: Path) -> None:
    code, _ = _run(["serve", str(tmp_path), *argv])
    assert code == ExitCode.USAGE


def test_a_port_in_use_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(CLIError) as info, _bound("127.0.0.1", port):
            pass
    assert info.value.code == ExitCode.PORT_IN_USE
    assert f"port {port}" in str(info.value) and "in use" in str(info.value)


def test_an_address_not_of_this_host_is_refused() -> None:
    # 192.0.2.0/24 is reserved for documentation: never an address of this machine.
    with pytest.raises(CLIError) as info, _bound("192.0.2.1", 0):
        pass
    assert info.value.code == ExitCode.PORT_IN_USE
    assert "not an address of this machine" in str(info.value)


def test_the_bound_socket_listens_on_loopback() -> None:
    with _bound("127.0.0.1", 0) as sock:
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1" and port > 0
        with socket.create_connection((host, port), timeout=5):
            pass


@pytest.mark.parametrize(
    ("path", "compile_s", "phrase"),
    [
        ("cold", 12.5, "compiled and published"),
        ("warm", None, "warm from"),
        ("eager", None, "eager"),
    ],
)
def test_the_ready_line_says_how_the_model_started(
    path: str, compile_s: float | None, phrase: str
) -> None:
    from aot_core.serve.command import _ready_line
    from aot_core.stats import OptimizationStats

    record = {
        "url": "http://127.0.0.1:8000",
        "served_model_name": "m",
        "ready_s": 1.0,
        "start": {"path": path, "artifact": "/x", "compile_s": compile_s, "key": "k"},
    }
    line = _ready_line(record, OptimizationStats(backend="vllm", startup_s=1.0))
    assert line.startswith("ready: serving 'm' at http://127.0.0.1:8000/v1") and phrase in line
    assert "/aot/stats" in line
