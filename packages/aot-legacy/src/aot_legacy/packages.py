"""AOTInductor packages: export the prefill and decode steps, package them as ``.pt2``,
verify and load them in a later process without compiling.

A package directory holds ``prefill.pt2``, ``decode.pt2`` and ``manifest.json`` (format,
the environment it was built in, the shapes it covers, and a sha256 per file). Loading
refuses a package built for another torch, CPU ISA or GPU, or whose files do not match
their checksums, with a reason the caller records before it falls back to compiling.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from aot_core.errors import ArtifactCorruptError, ArtifactError, ArtifactIncompatibleError

from aot_legacy.decoder import StaticKVDecoder
from aot_legacy.environment import mismatches, stable_hash
from aot_legacy.options import MIN_BUCKET, StepPlan

PACKAGE_FORMAT = 1
"""Bumped when the package layout or the step signature changes."""

MANIFEST = "manifest.json"
FILES = ("prefill.pt2", "decode.pt2")
PROBE_TIMEOUT_S = 600

# Loads the packages in a throw-away process: a loader that crashes (a segfault was seen
# loading CUDA packages with torch 2.11+cu130) must not take the user's process with it.
_PROBE_CODE = """
import sys
from torch._inductor import aoti_load_package
index = int(sys.argv[1])
for path in sys.argv[2:]:
    aoti_load_package(path, device_index=index)
"""


class PackagedStep:
    """A loaded ``.pt2`` step that checks shapes itself, since AOTInductor does not.

    Out-of-range shapes are undefined behaviour inside the package (it ran silently with
    wrong sizes in torch-aot.md section 1), so they are refused here with a clear error.
    """

    def __init__(
        self, fn: Callable[..., Any], *, kind: str, plan: StepPlan, kv: Sequence[torch.Tensor]
    ) -> None:
        self._fn = fn
        self.kind = kind
        self.plan = plan
        self._kv = list(kv)

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, last_index: torch.Tensor
    ) -> torch.Tensor:
        bsz, seq = input_ids.shape
        if not MIN_BUCKET <= bsz <= self.plan.max_batch:
            raise ValueError(
                f"{self.kind} package: batch {bsz} is outside the exported range "
                f"[{MIN_BUCKET}, {self.plan.max_batch}]; pad the batch or rebuild the package "
                "with a larger max_num_seqs"
            )
        if self.kind == "decode" and seq != 1:
            raise ValueError(f"decode package: expects one token per row, got {seq}")
        if self.kind == "prefill" and not MIN_BUCKET <= seq <= self.plan.max_seq:
            raise ValueError(
                f"prefill package: prompt length {seq} is outside the exported range "
                f"[{MIN_BUCKET}, {self.plan.max_seq}]; pad short prompts, or rebuild with a "
                "larger max_model_len"
            )
        if positions.shape != input_ids.shape or last_index.shape != (bsz,):
            raise ValueError("packaged step: positions/last_index do not match input_ids")
        # Strides are baked into the generated kernels: a non-contiguous input reads the
        # wrong elements (measured: an out-of-bounds index error), so copy to contiguous.
        return self._fn(  # type: ignore[no-any-return]
            input_ids.contiguous(), positions.contiguous(), last_index.contiguous(), *self._kv
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _example(plan: StepPlan, seq: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    bsz = MIN_BUCKET
    ids = torch.zeros((bsz, seq), dtype=torch.long, device=device)
    pos = torch.arange(seq, device=device).expand(bsz, seq).contiguous()
    last = torch.full((bsz,), seq - 1, dtype=torch.long, device=device)
    return ids, pos, last


def build_packages(
    step: StaticKVDecoder,
    plan: StepPlan,
    kv: Sequence[torch.Tensor],
    dest: Path,
    *,
    environment: dict[str, str],
    key_data: dict[str, Any],
) -> float:
    """Export and package both steps into ``dest``; returns seconds spent.

    Written into a temporary sibling and renamed, so an interrupted build never leaves a
    directory that a later run would load.
    """
    from torch._inductor import aoti_compile_and_package
    from torch.export import Dim, export

    t0 = time.perf_counter()
    device = kv[0].device
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        batch = (
            Dim("batch", min=MIN_BUCKET, max=plan.max_batch)
            if plan.max_batch > MIN_BUCKET
            else None
        )
        seq_dim = (
            Dim("seq", min=MIN_BUCKET, max=plan.max_seq) if plan.max_seq > MIN_BUCKET else None
        )
        kv_shapes = tuple(None for _ in kv)
        prefill_ex = _example(plan, min(8, plan.max_seq), device)
        decode_ex = _example(plan, 1, device)
        prefill_shapes = (
            {0: batch, 1: seq_dim},
            {0: batch, 1: seq_dim},
            {0: batch},
            *kv_shapes,
        )
        decode_shapes = ({0: batch}, {0: batch}, {0: batch}, *kv_shapes)
        with torch.no_grad():
            for name, example, shapes in (
                ("prefill", prefill_ex, prefill_shapes),
                ("decode", decode_ex, decode_shapes),
            ):
                ep = export(step, (*example, *kv), dynamic_shapes=(shapes,), strict=False)
                aoti_compile_and_package(ep, package_path=str(tmp / f"{name}.pt2"))
        manifest = {
            "format": PACKAGE_FORMAT,
            "environment": environment,
            "key": key_data,
            "plan": {"max_batch": plan.max_batch, "max_seq": plan.max_seq, "dtype": plan.dtype},
            "files": {name: _sha256(tmp / name) for name in FILES},
            "created_unix": time.time(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a package directory; ArtifactError when there is none or it is broken."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"no AOTInductor package in {directory} (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactCorruptError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactCorruptError(f"{path}: manifest is not a JSON object")
    return data


def verify_package(
    directory: Path, *, environment: dict[str, str], key_data: dict[str, Any]
) -> dict[str, Any]:
    """Check a package was built for this torch/device/model/shapes and is intact."""
    manifest = read_manifest(directory)
    if manifest.get("format") != PACKAGE_FORMAT:
        raise ArtifactIncompatibleError(
            f"{directory}: package format {manifest.get('format')!r}, this aot-legacy reads "
            f"format {PACKAGE_FORMAT}; rebuild it with compile_model_aot"
        )
    diffs = mismatches(manifest.get("environment", {}), environment)
    diffs += mismatches(manifest.get("key", {}), key_data)
    if diffs:
        raise ArtifactIncompatibleError(
            f"{directory}: package does not match this process ({'; '.join(diffs)}); rebuild "
            "it with compile_model_aot"
        )
    files = manifest.get("files", {})
    for name in FILES:
        path = directory / name
        if not path.is_file():
            raise ArtifactCorruptError(f"{directory}: {name} is missing")
        if files.get(name) != _sha256(path):
            raise ArtifactCorruptError(
                f"{directory}: {name} does not match its checksum (tampered or truncated); "
                "delete the directory or rebuild it with compile_model_aot"
            )
    return manifest


def probe_load(directory: Path, *, environment: dict[str, str], device_index: int) -> None:
    """Load the packages once in a child process; raise ArtifactIncompatibleError if that
    fails or crashes. The verdict is remembered per environment beside the package."""
    record = directory / f"probe-{stable_hash(environment)}.json"
    try:
        verdict = json.loads(record.read_text())
    except (OSError, ValueError):
        verdict = None
    if not isinstance(verdict, dict) or "ok" not in verdict:
        cmd = [sys.executable, "-c", _PROBE_CODE, str(device_index)]
        cmd += [str(directory / name) for name in FILES]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
            )
            ok = proc.returncode == 0
            if proc.returncode < 0:
                detail = f"the loader crashed with signal {-proc.returncode}"
            else:
                tail = proc.stderr.strip().splitlines()
                detail = f"exit code {proc.returncode}: {tail[-1][:300] if tail else ''}"
        except subprocess.TimeoutExpired:
            ok, detail = False, f"loading took over {PROBE_TIMEOUT_S} s"
        verdict = {"ok": ok, "detail": "" if ok else detail, "environment": environment}
        tmp = record.with_name(f".{record.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(verdict, indent=2))
            os.replace(tmp, record)
        except OSError:  # a read-only package directory still gets a verdict, just not saved
            pass
    if not verdict["ok"]:
        raise ArtifactIncompatibleError(
            f"{directory}: loading the package in a probe process failed ({verdict['detail']}); "
            "this torch cannot load it here"
        )


def load_packages(
    directory: Path,
    *,
    plan: StepPlan,
    kv: Sequence[torch.Tensor],
    environment: dict[str, str],
    key_data: dict[str, Any],
    single_threaded: bool,
) -> tuple[PackagedStep, PackagedStep]:
    """Verify and load the prefill and decode packages of ``directory``."""
    from torch._inductor import aoti_load_package

    verify_package(directory, environment=environment, key_data=key_data)
    device = kv[0].device
    index = device.index if device.type == "cuda" and device.index is not None else -1
    if device.type == "cuda" and index < 0:
        index = torch.cuda.current_device()
    probe_load(directory, environment=environment, device_index=index)
    loaded = []
    for name in FILES:
        try:
            fn = aoti_load_package(
                str(directory / name), run_single_threaded=single_threaded, device_index=index
            )
        except Exception as exc:  # the loader raises RuntimeError, OSError, zip errors...
            raise ArtifactCorruptError(f"{directory / name}: failed to load ({exc})") from exc
        loaded.append(fn)
    return (
        PackagedStep(loaded[0], kind="prefill", plan=plan, kv=kv),
        PackagedStep(loaded[1], kind="decode", plan=plan, kv=kv),
    )
