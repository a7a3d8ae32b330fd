"""Whether a model directory's safetensors files can be loaded, read from their headers only.

Backends fail on a damaged weights file in different places: aot-legacy reads it in the
``aot`` process (``SpecError`` before, exit 5), vLLM inside an engine process whose error
reaches ``aot`` only as "engine failed to start" (exit 7). Checking the header before any
backend starts gives one answer, exit 4 with the file named, whichever backend was asked.
A header is at most ``MAX_HEADER_BYTES``, so the check costs a few reads per file however
large the weights are; bytes flipped inside the tensor data are not seen (no engine sees
them either: they load as other numbers).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100 << 20
"""safetensors' own limit on the JSON header."""

_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}  # fmt: skip


def weights_problem(model_dir: Path) -> str | None:
    """Why a ``*.safetensors`` file in ``model_dir`` cannot load; None when every one can."""
    for path in sorted(model_dir.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is not None:
            return f"{path}: {problem}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a loadable safetensors file (header and sizes); None when it is."""
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                return f"{size} bytes, too short for a safetensors file (truncated or empty)"
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                return "its header length is beyond the file (truncated, or not safetensors)"
            header = json.loads(fh.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "its header is not JSON (damaged, or not a safetensors file)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not isinstance(header, dict):
        return "its header is not a JSON object (damaged, or not a safetensors file)"
    return _tensors_problem(header, data_bytes=size - 8 - length)


def _tensors_problem(header: dict[str, object], *, data_bytes: int) -> str | None:
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        invalid = f"tensor {name!r} has no valid dtype, shape and data_offsets"
        if not isinstance(info, dict):
            return invalid
        try:
            begin, stop = info["data_offsets"]
            shape = [int(d) for d in info["shape"]]
        except (KeyError, TypeError, ValueError):
            return invalid
        if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop):
            return invalid
        width = _DTYPE_BYTES.get(str(info.get("dtype")))
        if width is not None and math.prod(shape) * width != stop - begin:
            return f"tensor {name!r}: its shape and dtype need other than {stop - begin} bytes"
        end = max(end, stop)
    if end != data_bytes:
        return (
            f"its header describes {end} bytes of tensor data, the file holds {data_bytes} "
            "(truncated or damaged)"
        )
    return None
