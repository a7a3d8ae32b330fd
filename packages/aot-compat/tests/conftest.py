"""Fixtures for the compat tests: which backends this environment has, the tiny model.

The same tests run in every install combination (compat alone, +legacy, +vllm, +both);
each test asks these fixtures what the combination holds and asserts the behaviour it
must show, or skips saying why it does not apply. Under nox the combination says what it
installed and which backend the old API must choose (session_expectations.py): a backend
it installed that cannot run fails every test that asks, never skips them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aot_compat import selection
from aot_core.registry import list_backends
from session_expectations import CHOICE_ENV, REQUIRE_ENV, expected_choice, required_backends

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
    found = {info.name for info in list_backends()}
    missing = required_backends() - found
    if missing:
        pytest.fail(f"{REQUIRE_ENV} names {sorted(missing)}, not installed", pytrace=False)
    return found


@pytest.fixture(scope="session")
def unusable(installed: set[str]) -> dict[str, str | None]:
    """For each known backend, why it cannot run here (None when it can).

    This imports vLLM when aot-vllm is installed (about 13 s), as the old API's choice does
    (the registry's deep check, the one ``aot backends`` shows).
    """
    found = {name: selection.why_unusable(name) for name in BACKENDS}
    broken = {n: why for n, why in found.items() if why is not None and n in required_backends()}
    if broken:
        pytest.fail(f"{REQUIRE_ENV} names backends that cannot run: {broken}", pytrace=False)
    return found


@pytest.fixture(scope="session")
def expected_default(unusable: dict[str, str | None]) -> str | None:
    """The backend create_enhanced_compiler() must choose here (None: it must fail): the
    combination's stated choice, which must agree with what can run here."""
    found = next((name for name in BACKENDS if unusable[name] is None), None)
    stated = expected_choice()
    if stated is None:
        return found
    expected = None if stated == "none" else stated
    if found != expected:
        pytest.fail(f"{CHOICE_ENV}={stated}, but what can run here gives {found}", pytrace=False)
    return expected


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny Llama (real HF directory, written offline)."""
    from aot_core.models.tiny import write_tiny_llama

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
