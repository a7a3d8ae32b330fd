"""Fresh-process helper for tests: compile or load a model, generate, print JSON.

usage: _child.py MODEL_DIR CACHE_ROOT SPEC_JSON
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
t0 = time.perf_counter()

import torch  # noqa: E402

torch.set_num_threads(1)

from aot_core import CompileSpec, GenerationParams  # noqa: E402
from aot_legacy import LegacyBackend  # noqa: E402

PROMPTS = [[5, 17, 42, 99, 3, 7], [65], list(b"Hello, world")]


def main() -> None:
    model_dir, cache_root, spec_json = sys.argv[1:4]
    spec = CompileSpec.from_dict({**json.loads(spec_json), "cache_dir": cache_root})
    with LegacyBackend().compile_model(model_dir, spec) as m:
        transformers_imported = "transformers" in sys.modules
        out = m.generate(PROMPTS, GenerationParams(max_new_tokens=8, stop_on_eos=False))
        from torch._dynamo.utils import counters

        print(
            json.dumps(
                {
                    "tokens": [list(g.token_ids) for g in out],
                    "stats": m.stats.to_dict(),
                    "inductor_counters": dict(counters["inductor"]),
                    "process_s": time.perf_counter() - t0,
                    "transformers_imported_when_ready": transformers_imported,
                }
            )
        )


if __name__ == "__main__":
    main()
