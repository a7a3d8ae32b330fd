"""lm-eval's ``local-completions`` and ``local-chat-completions`` models against a running
``aot serve`` give what ``aot eval`` gives on the same weights: the same decisions and
generations, log-likelihoods within 1e-3 (float32); ``aot eval --server`` runs the same job
for you. ``aot eval`` runs first and compiles the cache entry, so the server also shows that
it starts warm from the entry ``aot eval`` wrote.

The tiny Llama here is a copy with a chat template in its tokenizer config (the built-in one
has none), so ``aot eval --apply_chat_template`` and the server render the same chat.

Slow (one compiled eval job, a warm one, one server start, three lm-eval jobs: minutes
here), so it runs in ``nox -s eval_slow``, not in the default ``eval`` session.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import F32, LIMIT, TASKS, aot_eval, samples

pytestmark = pytest.mark.slow

TASK_LIST = "aot_mc,aot_gen"
SPEC = 'dtype = "float32"\nmax_model_len = 512\n'  # what F32's model args say
HOST = "127.0.0.1"
# A plain chat template (no BOS: the tiny tokenizer adds none, and vLLM's chat adds no special
# tokens of its own), so both sides tokenize the same prompt.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _with_chat_template(tiny: Path, dest: Path) -> Path:
    """A copy of the tiny Llama whose tokenizer has ``CHAT_TEMPLATE``."""
    shutil.copytree(tiny, dest)
    config = dest / "tokenizer_config.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    config.write_text(json.dumps({**data, "chat_template": CHAT_TEMPLATE}), encoding="utf-8")
    return dest


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    return response.status, json.loads(text) if text.startswith("{") else text


@pytest.fixture(scope="module")
def served(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``aot eval`` (compiled: it writes the cache entry) plain and with the chat template,
    then ``aot serve`` of that entry (which holds its lock, so the jobs run first)."""
    work = tmp_path_factory.mktemp("serve-eval")
    tiny = _with_chat_template(tiny, work / "tiny-chat")
    common = (
        "--include-path", str(TASKS), "--limit", LIMIT, "--backend", "vllm",
        "--model-args", F32, "--log-samples",
    )  # fmt: skip
    run = aot_eval(str(tiny), "--tasks", TASK_LIST, *common, "--output", str(work / "eval"))
    assert run.rc == 0, run.stderr[-3000:]
    run = aot_eval(
        str(tiny), "--tasks", "aot_gen", *common, "--output", str(work / "eval-chat"),
        "--lm-eval", "--apply_chat_template",
    )  # fmt: skip
    assert run.rc == 0, run.stderr[-3000:]
    spec = work / "spec.toml"
    spec.write_text(SPEC)
    port = _free_port()
    log = work / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aot_core", "serve", str(tiny), "--spec", str(spec),
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=_env(),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-5000:]
            try:
                if _get(port, "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(2)
        yield {"work": work, "port": port, "log": log, "tiny": tiny}
    finally:
        proc.terminate()
        proc.wait(timeout=180)


def test_the_server_starts_from_the_verified_entry_aot_eval_wrote(served: dict[str, Any]) -> None:
    status, record = _get(served["port"], "/aot/stats")
    assert status == 200, record
    assert record["start"]["path"] == "warm", record["start"]  # the same key, verified
    # Not asserted: a compile-cache hit. aot eval's in-process engine writes other Inductor
    # graphs than aot compile's for the same key (measured here; the served engine compiles
    # what aot compile compiles), so this start may add its graph to the entry.
    print("compile cache:", record["stats"]["cache"])


def test_local_completions_against_aot_serve_equals_aot_eval(served: dict[str, Any]) -> None:
    tiny, work, port = served["tiny"], served["work"], served["port"]
    model_args = ",".join(
        [
            f"model={tiny}",
            f"base_url=http://{HOST}:{port}/v1/completions",
            "tokenizer_backend=huggingface",
            f"tokenizer={tiny}",
            "num_concurrent=2",
            "max_retries=1",
            "max_length=511",  # aot's lm-eval model: max_model_len less one
        ]
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "local-completions",
         "--model_args", model_args, "--tasks", TASK_LIST, "--include_path", str(TASKS),
         "--limit", LIMIT, "--output_path", str(work / "served"), "--log_samples"],
        cwd=TASKS, env=_env(), capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-5000:]
    print(f"lm-eval local-completions against aot serve: {wall:.1f} s")
    _same_as_aot_eval(work / "eval", work / "served")


def test_local_chat_completions_against_aot_serve_equals_aot_eval(
    served: dict[str, Any],
) -> None:
    """The server renders the chat with the model's template, as ``aot eval
    --apply_chat_template`` does locally: the same greedy generations."""
    tiny, work, port = served["tiny"], served["work"], served["port"]
    model_args = f"model={tiny},base_url=http://{HOST}:{port}/v1/chat/completions,num_concurrent=2"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "local-chat-completions",
         "--model_args", model_args, "--tasks", "aot_gen", "--include_path", str(TASKS),
         "--limit", LIMIT, "--apply_chat_template", "--output_path", str(work / "chat"),
         "--log_samples"],
        cwd=TASKS, env=_env(), capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    print(f"lm-eval local-chat-completions against aot serve: {time.perf_counter() - t0:.1f} s")
    want, got = samples(work / "eval-chat", "aot_gen"), samples(work / "chat", "aot_gen")
    assert sorted(want) == sorted(got) and len(want) == int(LIMIT)
    for doc, row in want.items():
        assert "<|assistant|>" in json.dumps(row["arguments"])  # it was a chat
        assert row["filtered_resps"] == got[doc]["filtered_resps"], doc


def test_aot_eval_server_runs_the_job_against_aot_serve(served: dict[str, Any]) -> None:
    """``aot eval MODEL --server URL``: the served model's name and context come from the
    server; the results are ``aot eval``'s own."""
    tiny, work, port = served["tiny"], served["work"], served["port"]
    t0 = time.perf_counter()
    run = aot_eval(
        str(tiny), "--tasks", TASK_LIST, "--include-path", str(TASKS), "--limit", LIMIT,
        "--server", f"http://{HOST}:{port}/v1", "--output", str(work / "via-server"),
        "--log-samples",
    )  # fmt: skip
    assert run.rc == 0, run.stderr[-5000:]
    print(f"aot eval --server: {time.perf_counter() - t0:.1f} s")
    assert f"served at http://{HOST}:{port} with lm-eval's local-completions" in run.stderr
    _same_as_aot_eval(work / "eval", work / "via-server")


def _same_as_aot_eval(eval_dir: Path, served_dir: Path) -> None:
    """Decisions and generations equal, log-likelihoods within 1e-3."""
    mc_eval, mc_served = samples(eval_dir, "aot_mc"), samples(served_dir, "aot_mc")
    assert sorted(mc_eval) == sorted(mc_served) and len(mc_eval) == int(LIMIT)
    for doc, row in mc_eval.items():
        want = [float(r[0]) for r in row["filtered_resps"]]
        got = [float(r[0]) for r in mc_served[doc]["filtered_resps"]]
        assert len(got) == len(want)
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-3, (doc, got, want)
        assert row["acc"] == mc_served[doc]["acc"], doc
    gen_eval, gen_served = samples(eval_dir, "aot_gen"), samples(served_dir, "aot_gen")
    assert sorted(gen_eval) == sorted(gen_served)
    for doc, row in gen_eval.items():
        assert row["filtered_resps"] == gen_served[doc]["filtered_resps"], doc
