"""A real architecture from aot-core's shape presets, built and run by the legacy backend.

SmolLM2-135M's published config alone (no weights, no tokenizer): aot's decoder builds its
30 layers with placeholder weights, says so, runs float32 on a CPU without native
bfloat16 although the config says bfloat16, and generates. Eager only, so it costs
seconds; compiled shapes run in the benchmark (benchmarks/scaling.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aot_core import GenerationParams
from aot_core.dtype_choice import cpu_has_native_bf16
from aot_core.models.shape_presets import ensure_shape_dir, get_shape
from aot_legacy import LegacyBackend
from conftest import spec


def test_smollm2_shape_runs_eager_with_placeholder_weights(tmp_path: Path) -> None:
    model = ensure_shape_dir(get_shape("smollm2-135m"), tmp_path)
    with pytest.warns(UserWarning, match="placeholder weights"):
        compiled = LegacyBackend().compile_model(model, spec(compile_mode="none"))
    with compiled as m:
        s = m.stats
        assert s.resolved_config["placeholder_weights"] is True
        assert any(n.startswith("weights are placeholders") for n in s.notes)
        # aot-core's rule for "auto", on either kind of CPU: the preset's bfloat16 where it is
        # native, float32 where it would be emulated.
        if cpu_has_native_bf16():
            assert s.resolved_config["dtype"] == "bfloat16", s.resolved_config
            assert any("checkpoint's own dtype" in n for n in s.notes), s.notes
        else:
            assert s.resolved_config["dtype"] == "float32", s.resolved_config
            assert any("no native bfloat16" in n for n in s.notes), s.notes
        gens = m.generate([[1, 2, 3, 4], [5]], GenerationParams(max_new_tokens=4))
        assert [len(g.token_ids) for g in gens] == [4, 4]
        assert all(0 <= t < 49152 for g in gens for t in g.token_ids)
