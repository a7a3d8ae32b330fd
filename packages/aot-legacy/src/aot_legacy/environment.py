"""What compiled code depends on: torch version, device and its capability or CPU ISA.

Cache directories are keyed on these facts and packages record them in their manifest, so
code built for another torch, CPU or GPU is never loaded (CPU kernels are built with
``-march=native``, so they are tied to the build host's instruction set).
"""

from __future__ import annotations

import hashlib
import json
import platform
from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict[str, str]:
    """The facts that invalidate compiled code for ``device``."""
    env = {
        "torch": str(torch.__version__),
        "machine": platform.machine(),
        "device_type": device.type,
        "cpu_isa": str(torch.backends.cpu.get_cpu_capability()),
        "cpu_model": _cpu_model(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        env["cuda_capability"] = f"{major}.{minor}"
        env["gpu_name"] = torch.cuda.get_device_name(index)
        env["cuda"] = str(torch.version.cuda)
        try:
            import triton

            env["triton"] = str(triton.__version__)
        except ImportError:  # pragma: no cover - CUDA torch ships triton
            pass
    return env


def describe_device(device: torch.device) -> str:
    """A device label for stats, e.g. "cuda:0 (NVIDIA H100, sm_90)" or "cpu (AVX2)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}, sm_{major}{minor})"
    return f"cpu ({torch.backends.cpu.get_cpu_capability()})"


def mismatches(built: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """Human-readable differences between where code was built and where it would run."""
    out = []
    for key in sorted(set(built) | set(here)):
        if built.get(key) != here.get(key):
            out.append(f"{key}: built for {built.get(key)!r}, this machine has {here.get(key)!r}")
    return out


def stable_hash(data: Any, length: int = 16) -> str:
    """A hash of JSON-able ``data`` that is the same in every process and key order."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
