"""A max_model_len beyond the model's own limit is refused before vLLM is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec
from aot_vllm.context_length import ALLOW_VAR, model_length_limit
from aot_vllm.start_setup import request_start


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_position_embeddings": 2048}, (2048, "max_position_embeddings")),
        # vLLM takes the smallest declared length.
        ({"max_position_embeddings": 4096, "seq_length": 1024}, (1024, "seq_length")),
        # A RoPE scaling factor stretches it (an upper bound: vLLM skips some types).
        (
            {"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "linear", "factor": 4}},
            (16384, "max_position_embeddings"),
        ),
        # vLLM lets a user go up to a larger model_max_length.
        (
            {"max_position_embeddings": 2048, "model_max_length": 8192},
            (8192, "model_max_length"),
        ),
        ({"text_config": {"n_positions": 1024}}, (1024, "n_positions")),
        ({"hidden_size": 64}, None),
    ],
)
def test_the_limit_follows_vllms_reading_of_the_config(
    config: dict[str, object], expected: tuple[int, str] | None
) -> None:
    assert model_length_limit(config) == expected


def test_a_longer_max_model_len_names_both_numbers(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW_VAR, raising=False)
    limit = json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
    spec = CompileSpec(max_model_len=limit * 4, cache_dir=str(tmp_path / "store"))
    with pytest.raises(SpecError) as info:
        request_start(tiny_model, spec)
    assert info.value.field == "max_model_len"
    message = str(info.value)
    assert f"{limit * 4} exceeds the model's max_position_embeddings {limit}" in message
    assert f"set max_model_len <= {limit}" in message and f"{ALLOW_VAR}=1" in message
    assert not (tmp_path / "store").exists()  # refused before any entry was opened
    # The model's own limit itself is fine.
    request_start(tiny_model, spec.replace(max_model_len=limit))


def test_vllms_own_switch_allows_it_with_a_note(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW_VAR, "1")
    spec = CompileSpec(max_model_len=4096, cache_dir=str(tmp_path / "store"))
    request = request_start(tiny_model, spec)
    assert any("allowed by" in n and ALLOW_VAR in n for n in request.notes)


def test_aot_compile_refuses_it_with_the_spec_exit_code(tiny_model: Path, tmp_path: Path) -> None:
    from aot_core.cli.command import ExitCode

    spec = tmp_path / "long.toml"
    spec.write_text("max_model_len = 100000\n")
    cache = tmp_path / "cache"
    command = ["compile", str(tiny_model), "--backend", "vllm", "--spec", str(spec)]
    proc = subprocess.run(
        [sys.executable, "-m", "aot_core.cli.app", "--cache-dir", str(cache), *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if k != ALLOW_VAR},
    )
    assert proc.returncode == ExitCode.SPEC_ERROR, proc.stderr
    assert "100000 exceeds the model's max_position_embeddings 512" in proc.stderr
    assert "Traceback" not in proc.stderr
    entries = cache / "entries"
    assert not entries.exists() or not any(entries.iterdir())  # nothing staged was left
