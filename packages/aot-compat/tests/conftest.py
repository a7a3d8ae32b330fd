"""Fixtures for the compat tests: which backends this environment has, the tiny model.

The same tests run in every install combination (compat alone, +legacy, +vllm, +both);
each test asks these fixtures what is installed and asserts the behaviour that
combination must show, or skips saying why it does not apply.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aot_compat import selection
from aot_core.registry import list_backends

BACKENDS = (selection.VLLM, selection.LEGACY)


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Compile caches go to a temporary directory, never the user's ~/.cache."""
    root = tmp_path_factory.mktemp("caches")
    names = ("AOT_CACHE_DIR", "VLLM_CACHE_ROOT", "AOT_BACKEND", "AOT_COMPAT_STRICT")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["AOT_CACHE_DIR"] = str(root / "aot")
    os.environ["VLLM_CACHE_ROOT"] = str(root / "vllm")
    os.environ.pop("AOT_BACKEND", None)  # tests that need them set them themselves
    os.environ.pop("AOT_COMPAT_STRICT", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def installed() -> set[str]:
    """Names of the backends whose packages are installed here."""
    return {info.name for info in list_backends()}


@pytest.fixture(scope="session")
def unusable(installed: set[str]) -> dict[str, str | None]:
    """For each known backend, why it cannot run here (None when it can).

    This imports vLLM when aot-vllm is installed (about 13 s), as the old API's choice does
    (the registry's deep check, the one ``aot backends`` shows).
    """
    return {name: selection.why_unusable(name) for name in BACKENDS}


@pytest.fixture(scope="session")
def expected_default(unusable: dict[str, str | None]) -> str | None:
    """The backend create_enhanced_compiler() must choose here (None: it must fail)."""
    for name in BACKENDS:
        if unusable[name] is None:
            return name
    return None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny Llama (real HF directory, written offline)."""
    from aot_core.tiny import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def in_memory_model(tiny_model_dir: Path) -> Callable[[], Any]:
    """Builds the tiny Llama in memory (no name_or_path) with its saved weights loaded."""

    def build() -> Any:
        import torch
        from safetensors.torch import load_file
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig.from_pretrained(tiny_model_dir)
        config.name_or_path = ""
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        model.load_state_dict(load_file(str(tiny_model_dir / "model.safetensors")), strict=False)
        model.tie_weights()
        return model.eval()

    return build
