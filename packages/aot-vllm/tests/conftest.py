"""Shared fixtures: the built-in tiny Llama, a one-thread environment, process checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Torch on a 2-core box oversubscribes unless it is told to use one thread; set it before
# vLLM or torch is imported by any test.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from aot_core.tiny import TINY, TinyLlamaShape, write_tiny_llama

# vLLM's CPU attention kernels support head sizes from 32 up; the tiny model's own head
# size is used when it qualifies, else the same model with a wider residual stream.
_HEAD_DIM = TINY.hidden_size // TINY.num_attention_heads
VLLM_TINY = (
    TINY
    if _HEAD_DIM >= 32
    else TinyLlamaShape(
        hidden_size=32 * TINY.num_attention_heads,
        intermediate_size=2 * 32 * TINY.num_attention_heads,
    )
)

# A small, fixed KV cache keeps every engine's memory (and the test time) small.
KV_BYTES = 64 << 20


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny Llama directory (weights and byte-level tokenizer)."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), shape=VLLM_TINY)


@pytest.fixture(scope="session")
def config_only_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny Llama's config.json alone (for load_format='dummy' starts)."""
    directory = tmp_path_factory.mktemp("tiny-config-only")
    (directory / "config.json").write_bytes((tiny_model / "config.json").read_bytes())
    return directory


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache store for the in-process engine tests: every spec gets its own entry, and
    only the first start pays vLLM's model-inspection subprocess (shared between entries)."""
    return tmp_path_factory.mktemp("aot-store")
