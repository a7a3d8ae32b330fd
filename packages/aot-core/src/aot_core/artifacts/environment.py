"""What compiled code depends on here: CPU architecture and ISA, GPUs, installed versions.

Versions of what a backend depends on are the backend's to read (``Compiler.pins()``);
this module reads only distribution metadata by name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import re
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path

# The CPU features compiled CPU kernels may use; an artifact needs all of its own on the host.
_ISA_FLAGS = frozenset(
    {
        # x86
        "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq",
        "avx512cd", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
        "avx512vbmi", "amx_tile", "amx_bf16", "amx_int8",
        # arm
        "asimd", "asimdhp", "asimddp", "fphp", "sve", "sve2", "bf16", "i8mm",
    }
)  # fmt: skip


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_isa() -> tuple[str, ...]:
    """The ISA extensions of this CPU that compiled kernels may depend on, sorted."""
    return tuple(sorted(_cpu_flags() & _ISA_FLAGS))


@functools.cache
def cuda_capabilities() -> tuple[str, ...]:
    """Compute capabilities ("9.0", ...) of the NVIDIA GPUs here, read via nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def package_version(*names: str) -> str | None:
    """Installed version of the first of ``names`` that is installed, else None."""
    for name in names:
        try:
            return dist_version(name)
        except PackageNotFoundError:
            continue
    return None


def torch_version() -> str | None:
    """Installed torch version (with its local tag, e.g. "2.13.0+cpu"), or None."""
    return package_version("torch")


def device_kind(device: str) -> str:
    """The device family ("cuda", "cpu", ...) of a stats device string."""
    lowered = device.strip().lower()
    for kind in ("cuda", "cpu", "rocm", "xpu", "mps", "tpu"):
        if lowered.startswith(kind):
            return kind
    return lowered.split(":", 1)[0].split(" ", 1)[0] or "cpu"


def _capability_from_device(device: str) -> str | None:
    match = re.search(r"sm_?(\d+)(\d)\b", device) or re.search(r"capability (\d+)\.(\d+)", device)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def host_fingerprint() -> str:
    """A short digest of what compiled code depends on here (arch, ISA, GPUs)."""
    text = json.dumps([platform.machine(), cpu_isa(), cuda_capabilities()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
