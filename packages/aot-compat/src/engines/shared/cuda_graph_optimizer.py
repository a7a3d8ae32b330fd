"""Old module path of the CUDA-graph optimizer (``engines.shared.cuda_graph_optimizer``).

``CUDAGraphOptimizer`` is aot-legacy's own class, loaded on first use so that this module
imports without aot-legacy installed.
"""

from __future__ import annotations

from aot_compat.migration import Moved, Removed, dir_with, getattr_migration

_LAZY = {"CUDAGraphOptimizer": "aot_legacy:CUDAGraphOptimizer"}

__getattr__ = getattr_migration(
    __name__,
    {
        "CudaGraphOptimizer": Moved(target="aot_legacy:CUDAGraphOptimizer"),
        "CudaGraphConfig": Removed(
            replacement="pass enable_cuda_graphs=... and batch_sizes=[...] to "
            "create_enhanced_compiler (cuda_graphs and cuda_graph_sizes in "
            "aot_core.CompileSpec)"
        ),
    },
    lazy=_LAZY,
    requires={"CUDAGraphOptimizer": "aot-legacy"},
)

__all__: list[str] = []
__dir__ = dir_with(globals(), *_LAZY)
