"""A Ray driver for test_ray.py: connects to a running cluster and prints one JSON line.

python ray_driver.py ADDRESS warm MODEL_DIR ARCHIVE STORE_DIR
    a task pinned to the node with the "aot_node_b" resource imports the exported aot
    artifact into that node's store, starts the TP=2 engine from it, generates, closes;
python ray_driver.py ADDRESS vllm-ray MODEL_DIR
    raw vllm.LLM(tensor_parallel_size=2, distributed_executor_backend="ray") on CPU,
    to show what vLLM itself does with Ray on its CPU platform.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import ray

PROMPTS = [[72, 101, 108, 108, 111], list(range(40, 90))]


@ray.remote(num_cpus=1, resources={"aot_node_b": 1})
def warm_engine_on_node_b(model: str, archive: str, store: str) -> dict[str, Any]:
    """On the second node: import the artifact, start the TP=2 engine warm, generate."""
    import psutil
    from aot_core.artifacts import ArtifactStore, import_artifact
    from aot_core.compiler import GenerationParams
    from aot_vllm.backend import VllmBackend
    from start_parallel import spec_for

    entry, _manifest, placed = import_artifact(archive, ArtifactStore(store))
    spec = spec_for(store, tp=2)
    with VllmBackend().compile_model(model, spec) as compiled:
        pids = compiled.engine_pids
        gens = compiled.generate(PROMPTS, GenerationParams(max_new_tokens=12, stop_on_eos=False))
        stats = compiled.stats
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "imported": str(entry),
        "placed": placed,
        "tokens": [list(g.token_ids) for g in gens],
        "stats": stats.to_dict(),
        "engine_pids": sorted(pids),
        "alive_after_close": sorted(p for p in pids if psutil.pid_exists(p)),
    }


def vllm_ray_on_cpu(model: str) -> dict[str, Any]:
    """vLLM's own Ray executor for two CPU ranks, without aot-vllm in between."""
    # The engine core in this process, so vLLM's own exception comes back here.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import vllm

    try:
        vllm.LLM(
            model=model,
            tensor_parallel_size=2,
            distributed_executor_backend="ray",
            dtype="float32",
            max_model_len=256,
            kv_cache_memory_bytes=64 << 20,
            compilation_config={"mode": 0},
        )
    except Exception as exc:  # what vLLM raises is the result
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"error": ""}


def main() -> None:
    address, what, model = sys.argv[1], sys.argv[2], sys.argv[3]
    here = os.path.dirname(os.path.abspath(__file__))
    # The task imports start_parallel (the tests' spec) on the other node.
    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": here}})
    result: dict[str, Any] = {"driver_node": ray.get_runtime_context().get_node_id()}
    if what == "warm":
        archive, store = sys.argv[4], sys.argv[5]
        result.update(ray.get(warm_engine_on_node_b.remote(model, archive, store), timeout=1800))
    else:
        result.update(vllm_ray_on_cpu(model))
    result["nodes"] = {
        n["NodeID"]: sorted(k for k in n["Resources"] if k == "aot_node_b")
        for n in ray.nodes()
        if n["Alive"]
    }
    print("AOT-RESULT " + json.dumps(result), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
