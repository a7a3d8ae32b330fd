"""Start the tiny model once in a fresh process and print what happened as one JSON line.

Used by fresh_start.py (and handy by hand):
    python start_once.py MODEL_DIR CACHE_DIR [aot|eager]
"""

from __future__ import annotations

import json
import os
import sys
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

PROMPTS = [[72, 101, 108, 108, 111], list(range(40, 90))]


def main() -> None:
    from aot_core.compiler import GenerationParams
    from aot_core.spec import CompileSpec
    from aot_vllm.backend import VllmBackend

    model, cache = sys.argv[1], sys.argv[2]
    options: dict[str, object] = {"kv_cache_memory_bytes": 64 << 20}
    mode = sys.argv[3] if len(sys.argv) > 3 else ""
    if mode == "aot":
        options["compile_cache"] = "aot"
    spec = CompileSpec(
        compile_mode="none" if mode == "eager" else "default",
        dtype="float32",
        max_model_len=256,
        max_num_seqs=8,
        cache_dir=cache,
        backend_options=options,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with VllmBackend().compile_model(model, spec) as compiled:
            gens = compiled.generate(
                PROMPTS, GenerationParams(max_new_tokens=12, stop_on_eos=False)
            )
            stats = compiled.stats
    result = {
        "stats": stats.to_dict(),
        "tokens": [list(g.token_ids) for g in gens],
        "warnings": [str(w.message) for w in caught if "aot" in str(w.message).lower()],
    }
    print("AOT-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
