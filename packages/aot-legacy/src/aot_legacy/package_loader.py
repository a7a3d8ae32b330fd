"""Loading one AOTInductor ``.pt2`` package into a callable: shared by the parent, which
loads verified packages (``packages.py``), and the packaging child, which probes what it
just built (``package_build.py``), so neither module imports the other for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

Runner = Callable[[list[torch.Tensor]], list[torch.Tensor]]
"""A loaded package: flat inputs in, flat outputs out."""


def load_runner(path: Path, single_threaded: bool, device_index: int) -> Runner:
    """Load one ``.pt2`` with AOTInductor's C++ loader.

    ``torch._inductor.aoti_load_package`` imports Inductor's Python side (3-4 s measured
    here) and probes the compiler for the CPU ISA (seconds more without a warm cache);
    the manifest already pins torch, CPU ISA and CPU model, so the C++ loader it wraps is
    used directly where this torch has it (2.6+), and the public function otherwise.
    """
    aoti = getattr(torch._C, "_aoti", None)
    loader_cls = getattr(aoti, "AOTIModelPackageLoader", None)
    if loader_cls is not None:
        try:
            loader = loader_cls(str(path), "model", single_threaded, 1, device_index)
        except TypeError:  # another constructor signature: use the public function
            loader = None
        if loader is not None:
            return loader.boxed_run  # type: ignore[no-any-return]
    from torch._inductor import aoti_load_package

    model = aoti_load_package(
        str(path), run_single_threaded=single_threaded, device_index=device_index
    )
    return lambda flat: [model(*flat)]
