"""Shape presets: real architectures' published configs, shipped as package data.

Each preset loads, its config.json round-trips through the model directory ``--shape``
writes, and its parameter count is the published one. Bad input: an unknown shape lists
the known ones, and a shape too big for the memory available is refused (exit 14) with the
estimate before any backend is looked up or any engine starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aot_core.cli.app import ExitCode, main
from aot_core.dtype_choice import cpu_has_native_bf16, resolve_dtype
from aot_core.errors import SpecError
from aot_core.models import memory_estimate
from aot_core.models.shape_presets import ensure_shape_dir, get_shape, known_shapes, shape_dir

# The parameter counts the model cards publish (SmolLM2: 134,515,008 as transformers counts).
PUBLISHED_PARAMETERS = {
    "smollm2-135m": 134_515_008,
    "qwen2.5-0.5b": 494_032_768,
    "llama-3.2-1b": 1_235_814_400,
}


def test_the_three_presets_ship() -> None:
    assert set(PUBLISHED_PARAMETERS) <= set(known_shapes())


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_preset_loads_and_its_config_round_trips(name: str, tmp_path: Path) -> None:
    preset = get_shape(name.upper())  # names are case-insensitive
    assert preset.name == name and preset.source.startswith("https://huggingface.co/")
    assert preset.source_note
    path = ensure_shape_dir(preset, tmp_path)
    assert path == shape_dir(preset, tmp_path) and path.is_relative_to(tmp_path / "models")
    # config-only: config.json and nothing else (no weights, no tokenizer)
    assert [p.name for p in path.iterdir()] == ["config.json"]
    assert json.loads((path / "config.json").read_text()) == preset.config
    assert ensure_shape_dir(preset, tmp_path) == path  # idempotent
    assert memory_estimate.parameter_count(preset.config) == PUBLISHED_PARAMETERS[name]


def test_unknown_shape_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"known shapes: .*smollm2-135m"):
        get_shape("gpt-5")


def test_cli_unknown_shape_exits_2_listing_known(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["bench", "--shape", "gpt-5"], ["compile", "--shape", "gpt-5", "--backend", "x"]):
        code = main(["--cache-dir", str(tmp_path), *argv])
        err = capsys.readouterr().err
        assert code == ExitCode.USAGE
        assert "unknown shape 'gpt-5'" in err and "qwen2.5-0.5b" in err
        assert not (tmp_path / "models").exists()  # nothing written for a bad name


def test_cli_model_and_shape_together_or_neither(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ensure_shape_dir(get_shape("smollm2-135m"), tmp_path)
    code = main(["--cache-dir", str(tmp_path), "bench", str(model), "--shape", "smollm2-135m"])
    assert code == ExitCode.USAGE and "not both" in capsys.readouterr().err
    code = main(["--cache-dir", str(tmp_path), "compile", "--backend", "x"])
    assert code == ExitCode.USAGE and "--shape NAME" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "compile"])
def test_shape_too_big_is_refused_with_the_estimate(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(memory_estimate, "available_memory_bytes", lambda: 3 << 30)
    argv = ["--cache-dir", str(tmp_path), command, "--shape", "llama-3.2-1b"]
    # A backend that does not exist: the refusal must come before any backend lookup.
    code = main([*argv, "--backend", "no-such-backend"])
    err = capsys.readouterr().err
    assert code == ExitCode.NOT_ENOUGH_MEMORY, err
    assert "1236M parameters" in err and "available here: 3.0 GiB" in err
    assert "no engine was started" in err


def test_estimate_adds_weights_kv_and_overhead() -> None:
    config = get_shape("qwen2.5-0.5b").config
    est = memory_estimate.estimate(
        config, dtype="float32", max_model_len=256, max_num_seqs=4, available=1 << 40
    )
    assert est.weight_bytes == 4 * PUBLISHED_PARAMETERS["qwen2.5-0.5b"]
    # 24 layers x 2 (K, V) x 2 heads x 64 x 4 bytes per token, 5 x 256 tokens
    assert est.kv_cache_bytes == 24 * 2 * 2 * 64 * 4 * 5 * 256
    assert est.total_bytes == est.weight_bytes + est.kv_cache_bytes + est.overhead_bytes
    assert est.fits
    half = memory_estimate.estimate(config, dtype="auto", max_model_len=256, max_num_seqs=4)
    assert half.dtype == "bfloat16" and half.weight_bytes == est.weight_bytes // 2


def test_dtype_auto_is_float32_without_native_bf16(tmp_path: Path) -> None:
    model = ensure_shape_dir(get_shape("smollm2-135m"), tmp_path)  # its config: bfloat16
    avx2 = ("avx", "avx2", "fma")
    assert not cpu_has_native_bf16(avx2)
    assert resolve_dtype("auto", model, isa=avx2).dtype == "float32"
    assert "no native bfloat16" in resolve_dtype("auto", model, isa=avx2).reason
    for native in (("avx512f", "avx512_bf16"), ("amx_bf16",), ("asimd", "bf16")):
        assert resolve_dtype("auto", model, isa=native).dtype == "bfloat16"
    # an explicit dtype always wins
    assert resolve_dtype("bfloat16", model, isa=avx2).dtype == "bfloat16"
