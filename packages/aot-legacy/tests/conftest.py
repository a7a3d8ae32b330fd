"""Shared fixtures: one tiny HF Llama on disk and one compiled artifact set per session.

Compiles are the slow part on a 2-core machine, so every compiled model below is built
once per session and shared; tests that need a fresh process reuse the same cache.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 threads were 20x slower on 2 cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from aot_core import CompileSpec, GenerationParams
from aot_core.models.tiny import TinyLlamaShape, write_tiny_llama
from aot_legacy import LegacyBackend
from aot_legacy.compiled_model import LegacyCompiledModel

torch.set_num_threads(1)

HERE = Path(__file__).parent

# Different lengths in one batch, a 1-token prompt, and a batch of 3 (padded to 4).
PROMPTS: list[list[int]] = [[5, 17, 42, 99, 3, 7], [65], list(b"Hello, world")]
GREEDY = GenerationParams(max_new_tokens=8, stop_on_eos=False)
MAX_LEN = 64
MAX_SEQS = 4
# Half the built-in model's width: the legacy backend has no head-size floor (vLLM's CPU
# attention has), and narrower layers keep the many compiles here short.
TINY = TinyLlamaShape(hidden_size=64, intermediate_size=128)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def spec(**kw: Any) -> CompileSpec:
    """The test spec: small static shapes, so compiles stay short."""
    base: dict[str, Any] = {"max_model_len": MAX_LEN, "max_num_seqs": MAX_SEQS}
    base.update(kw)
    return CompileSpec(**base)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a byte-level tokenizer, saved like any HF model."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), shape=TINY)


@pytest.fixture(scope="session")
def alt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture and config.json as ``tiny_dir``, other weights (seed 7)."""
    return write_tiny_llama(tmp_path_factory.mktemp("alt-llama"), seed=7, shape=TINY)


@pytest.fixture(scope="session")
def config_only_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_dir``'s config.json and tokenizer, no weights: a config-only model."""
    out = tmp_path_factory.mktemp("config-only")
    for f in tiny_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's compile-cache root, shared by in-process and fresh-process tests."""
    return tmp_path_factory.mktemp("aot-cache")


@pytest.fixture(scope="session")
def eager(tiny_dir: Path) -> Iterator[LegacyCompiledModel]:
    """The tiny model run eagerly (the reference for every compiled variant)."""
    m = LegacyBackend().compile_model(tiny_dir, spec(compile_mode="none"))
    assert isinstance(m, LegacyCompiledModel)
    yield m
    m.close()


@pytest.fixture(scope="session")
def eager_tokens(eager: LegacyCompiledModel) -> list[tuple[int, ...]]:
    """Greedy tokens of PROMPTS from the eager model."""
    return [g.token_ids for g in eager.generate(PROMPTS, GREEDY)]


@pytest.fixture(scope="session")
def alt_eager_tokens(alt_dir: Path) -> list[tuple[int, ...]]:
    """Greedy tokens of PROMPTS from the other-weights model, run eagerly."""
    with LegacyBackend().compile_model(alt_dir, spec(compile_mode="none")) as m:
        return [g.token_ids for g in m.generate(PROMPTS, GREEDY)]


@pytest.fixture(scope="session")
def compiled(alt_dir: Path, cache_root: Path) -> Iterator[LegacyCompiledModel]:
    """torch.compile tier, cold, into the session cache (no packages exist yet).

    Compiled from the other-weights model: every later start of ``tiny_dir`` from this
    cache is a hit that must produce tiny's own tokens (the cache holds no weights).
    """
    s = spec(cache_dir=str(cache_root), backend_options={"aoti": False})
    m = LegacyBackend().compile_model(alt_dir, s)
    assert isinstance(m, LegacyCompiledModel)
    yield m
    m.close()


@pytest.fixture(scope="session")
def packaged(config_only_dir: Path, cache_root: Path) -> Iterator[LegacyCompiledModel]:
    """AOTInductor packages built by compile_model_aot into the session cache, from the
    config-only directory: placeholder weights, the real graph. Every package test then
    starts real weights (``tiny_dir``, ``alt_dir``) from these packages."""
    with pytest.warns(UserWarning, match="placeholder"):
        m = LegacyBackend().compile_model_aot(
            config_only_dir, PROMPTS, spec(cache_dir=str(cache_root))
        )
    assert isinstance(m, LegacyCompiledModel)
    yield m
    m.close()


@pytest.fixture(scope="session")
def from_packages(
    packaged: LegacyCompiledModel, tiny_dir: Path, cache_root: Path
) -> Iterator[LegacyCompiledModel]:
    """``tiny_dir`` (real weights) started from the packages the config-only compile built."""
    m = LegacyBackend().compile_model(tiny_dir, spec(cache_dir=str(cache_root)))
    assert isinstance(m, LegacyCompiledModel)
    yield m
    m.close()


def run_child(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> dict[str, Any]:
    """Run tests/_child.py in a fresh process; returns the JSON it prints last."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(HERE / "_child.py"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
