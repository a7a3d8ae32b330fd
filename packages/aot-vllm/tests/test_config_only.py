"""Config-only precompile: compile from config.json alone, then serve real weights.

The weights are placeholders (vLLM's dummy loader) while compiling; compiled code takes
the weights as inputs, so once the real weights land in the same directory the next start
is a verified hit that reuses vLLM's compiled code, and its greedy tokens equal an eager
start's on those weights. Each start runs in a fresh process, as a user's would.
Marked ``optin``: ``nox -s vllm_optin`` runs it (about three engine starts).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from aot_core.models.tiny import write_tiny_llama
from fresh_start import start_fresh

# Three fresh-process engine starts: opt-in (`nox -s vllm_optin`), not the default list.
pytestmark = [pytest.mark.slow, pytest.mark.optin]


@pytest.fixture(scope="module")
def starts(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = tmp_path_factory.mktemp("later-weights") / "llama"
    model.mkdir()
    shutil.copyfile(tiny_model / "config.json", model / "config.json")
    cache = tmp_path_factory.mktemp("config-only-cache")
    cold = start_fresh(model, cache)
    write_tiny_llama(model)  # the same config.json (byte for byte), plus weights and tokenizer
    warm = start_fresh(model, cache)
    eager = start_fresh(model, tmp_path_factory.mktemp("eager-cache"), "eager")
    return {"cold": cold, "warm": warm, "eager": eager}


def test_config_only_compile_says_the_weights_are_placeholders(starts: dict[str, Any]) -> None:
    cold = starts["cold"]["stats"]
    assert cold["cache"]["status"] == "miss", cold["cache"]
    assert any(n.startswith("weights are placeholders") for n in cold["notes"]), cold["notes"]


def test_real_weights_later_are_a_hit_with_eager_tokens(starts: dict[str, Any]) -> None:
    cold, warm = starts["cold"]["stats"], starts["warm"]["stats"]
    assert warm["cache"]["status"] == "hit", warm["cache"]
    assert warm["cache"]["path"] == cold["cache"]["path"]
    assert not any(n.startswith("weights are placeholders") for n in warm["notes"])
    # vLLM's compiled code was reused, not rebuilt: its compile phase is the warm one.
    assert warm["startup_phases"]["compile_warmup"] < cold["startup_phases"]["compile_warmup"]
    assert starts["warm"]["tokens"] == starts["eager"]["tokens"]
    # ... and those are the real weights' tokens, not the placeholders'.
    assert starts["warm"]["tokens"] != starts["cold"]["tokens"]
