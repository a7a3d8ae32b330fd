"""Building AOTInductor packages in a child process: ``python -m aot_legacy.package_build``.

Export, AOTInductor compile and the ``.pt2`` write run in a throw-away process. Two
failures seen in the user's process are why: a full disk made torch's zip writer abort
the whole process (exit 134, ``c10::Error ... unexpected pos``), and loading a CUDA
package segfaulted (torch 2.11+cu130 on an H100). In a child they are an exit status
the parent turns into ``OSError(ENOSPC)`` (the ``aot`` command's DISK_FULL exit) or a
refused package with the reason.

The parent sends the step's skeleton (``weights.skeleton_bytes``: structure, no weight
bytes) and the shapes of the KV cache and weights; the child exports
``WeightsAsInputs`` over it, checks that the exported program holds no tensors,
packages prefill and decode, prints ``BUILT``, then loads each package and runs it once
(the probe) and prints ``PROBED`` with the verdict. A child that dies after ``BUILT``
left packages that cannot be loaded here; the verdict says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUILT = "AOT_LEGACY_BUILT"
PROBED = "AOT_LEGACY_PROBED "
FAILED = "AOT_LEGACY_FAILED "
FILES = ("prefill.pt2", "decode.pt2")
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_LOW_SPACE_BYTES = 1 << 20
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


class PackagingError(RuntimeError):
    """The packages could not be built (export or compile failed in the child)."""


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    """What the child reported."""

    probe_ok: bool
    """Whether the built packages loaded and ran in the child."""

    probe_detail: str
    """Why they did not, when they did not."""


def build_in_child(request: dict[str, Any], out_dir: Path) -> BuildResult:
    """Run the child on ``request`` (see ``main``); packages land in ``out_dir``.

    Raises ``OSError(ENOSPC)`` when the disk filled up, ``PackagingError`` for any other
    failure before the packages were written.
    """
    payload = pickle.dumps({**request, "out": str(out_dir), "sys_path": list(sys.path)})
    proc = subprocess.run(
        [sys.executable, "-m", "aot_legacy.package_build"],
        input=payload,
        capture_output=True,
        check=False,
    )
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    failure = _marker(out, FAILED)
    if BUILT not in out.splitlines():
        if _disk_full(out_dir, failure, err):
            raise OSError(
                errno.ENOSPC,
                "No space left on device (while building AOTInductor packages)",
                str(out_dir),
            )
        why = (failure or {}).get("error") or _exit_text(proc.returncode, err)
        raise PackagingError(f"building the packages failed: {why}")
    verdict = _marker(out, PROBED)
    if verdict is None:
        return BuildResult(probe_ok=False, probe_detail=_exit_text(proc.returncode, err))
    return BuildResult(probe_ok=bool(verdict.get("ok")), probe_detail=str(verdict.get("detail")))


def _marker(text: str, prefix: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith(prefix):
            with contextlib.suppress(ValueError):
                data = json.loads(line[len(prefix) :])
                return data if isinstance(data, dict) else None
    return None


def _exit_text(code: int, stderr: str) -> str:
    if code < 0:
        return f"the process was killed by signal {-code}"
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return f"exit code {code}: {lines[-1][:300] if lines else 'no message'}"


def _disk_full(directory: Path, failure: dict[str, Any] | None, stderr: str) -> bool:
    if failure is not None and failure.get("errno") in DISK_FULL_ERRNOS:
        return True
    if any(text in stderr or text in str((failure or {}).get("error")) for text in _DISK_FULL_TEXT):
        return True
    # torch's zip writer aborts with "unexpected pos" and no errno when a write fails.
    with contextlib.suppress(OSError):
        return shutil.disk_usage(directory).free < _LOW_SPACE_BYTES
    return False


# ---------------------------------------------------------------------- the child


def _examples(
    max_batch: int, seq: int, device: Any
) -> tuple[Any, Any, Any]:  # pragma: no cover - runs in the child
    """Inputs of a prefill (``seq`` > 1: logits at MIN_BUCKET positions per row) or a
    decode step (``seq`` == 1: one position per row)."""
    import torch

    from aot_legacy.options import MIN_BUCKET

    ids = torch.zeros((MIN_BUCKET, seq), dtype=torch.long, device=device)
    pos = torch.arange(seq, device=device).expand(MIN_BUCKET, seq).contiguous()
    picks = (MIN_BUCKET, MIN_BUCKET) if seq > 1 else (MIN_BUCKET,)
    last = torch.full(picks, seq - 1, dtype=torch.long, device=device)
    return ids, pos, last


def _empty(specs: Sequence[tuple[list[int], str]], device: Any) -> list[Any]:
    import torch

    return [
        torch.empty(shape, dtype=getattr(torch, dtype), device=device) for shape, dtype in specs
    ]


def package_steps(request: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    """Export and package both steps as ``WeightsAsInputs`` into ``request["out"]``."""
    import torch
    from torch._inductor import aoti_compile_and_package
    from torch.export import Dim, export

    from aot_legacy.options import MIN_BUCKET
    from aot_legacy.weights import WeightsAsInputs, assert_weight_free, from_skeleton

    device = torch.device(request["device"])
    kv = _empty(request["kv"], device)
    weights = _empty(request["weights"], device)
    wrapper = WeightsAsInputs(
        from_skeleton(request["skeleton"]), num_kv=len(kv), names=request["names"]
    )
    max_batch, max_seq = request["max_batch"], request["max_seq"]
    batch = Dim("batch", min=MIN_BUCKET, max=max_batch) if max_batch > MIN_BUCKET else None
    seq = Dim("seq", min=MIN_BUCKET, max=max_seq) if max_seq > MIN_BUCKET else None
    picks = Dim("picks", min=MIN_BUCKET, max=max_seq) if max_seq > MIN_BUCKET else None
    rest = tuple(None for _ in (*kv, *weights))
    steps = (
        (
            "prefill",
            min(8, max_seq),
            ({0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 1: picks}),
        ),
        ("decode", 1, ({0: batch}, {0: batch}, {0: batch})),
    )
    out = Path(request["out"])
    with torch.no_grad():
        for name, length, shapes in steps:
            example = _examples(max_batch, length, device)
            ep = export(
                wrapper, (*example, *kv, *weights), dynamic_shapes=(*shapes, rest), strict=False
            )
            assert_weight_free(ep)
            aoti_compile_and_package(ep, package_path=str(out / f"{name}.pt2"))


def probe(request: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    """Load each package and run it once on the example shapes (a crash kills the child)."""
    import torch

    from aot_legacy.package_loader import load_runner

    device = torch.device(request["device"])
    index = device.index if device.type == "cuda" and device.index is not None else -1
    kv = _empty(request["kv"], device)
    weights = [t.zero_() for t in _empty(request["weights"], device)]
    for name, length in (("prefill", min(8, request["max_seq"])), ("decode", 1)):
        run = load_runner(Path(request["out"]) / f"{name}.pt2", False, index)
        run([*_examples(request["max_batch"], length, device), *kv, *weights])


def main() -> int:  # pragma: no cover - runs in the child
    """Read the request from stdin, build, probe; report through stdout markers."""
    request = pickle.loads(sys.stdin.buffer.read())  # bytes from our parent process
    for entry in reversed(request.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if request.get("threads"):
        import torch

        torch.set_num_threads(int(request["threads"]))
    try:
        package_steps(request)
    except OSError as exc:
        print(FAILED + json.dumps({"errno": exc.errno, "error": str(exc)}), flush=True)
        return 3
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [""]
        text = f"{type(exc).__name__}: {lines[0][:300]}"
        print(FAILED + json.dumps({"errno": None, "error": text}), flush=True)
        return 2
    print(BUILT, flush=True)
    try:
        probe(request)
    except Exception as exc:
        print(PROBED + json.dumps({"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}))
        return 0
    print(PROBED + json.dumps({"ok": True, "detail": ""}), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main())
