"""Shared fixtures: the built-in tiny Llama, a one-thread environment, process checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Torch on a 2-core box oversubscribes unless it is told to use one thread; set it before
# vLLM or torch is imported by any test.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from aot_core.models.tiny import write_tiny_llama

# A small, fixed KV cache keeps every engine's memory (and the test time) small.
KV_BYTES = 64 << 20


@pytest.fixture(scope="session", autouse=True)
def aot_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """aot's default cache root for the session (and the processes it starts), so tests
    never write to the user's ~/.cache/aot."""
    if os.environ.get("AOT_CACHE_DIR"):
        return Path(os.environ["AOT_CACHE_DIR"])
    home = tmp_path_factory.mktemp("aot-home")
    os.environ["AOT_CACHE_DIR"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny Llama directory (weights and byte-level tokenizer)."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


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


# Multi-rank engines are expensive here (every rank is a process that imports vLLM): the
# default suite starts them on one release (the noxfile sets AOT_MULTI_RANK_TESTS=1 for
# it), and `nox -s vllm_parallel` (AOT_PARALLEL_EXTRA=1) runs the rest and the Ray tests.
_GATES = {
    "multi_rank": (
        "AOT_MULTI_RANK_TESTS",
        "multi-rank engine tests run in the default suite on one release; "
        "nox -s vllm_parallel runs them everywhere",
    ),
    "parallel_extra": ("AOT_PARALLEL_EXTRA", "opt-in: nox -s vllm_parallel"),
    "ray": ("AOT_PARALLEL_EXTRA", "opt-in: nox -s vllm_parallel (needs aot-vllm[ray])"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker, (variable, reason) in _GATES.items():
            if item.get_closest_marker(marker) and os.environ.get(variable) != "1":
                item.add_marker(pytest.mark.skip(reason=f"{reason} ({variable}=1)"))
