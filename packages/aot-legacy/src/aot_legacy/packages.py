"""AOTInductor packages: weight-free ``.pt2`` files for the prefill and decode steps.

A package directory holds ``prefill.pt2``, ``decode.pt2`` and ``manifest.json``: the
format, the environment it was built in, the shapes it covers, the names of the weights
it takes as inputs (in order), a sha256 per file, and the probe's verdict (whether the
packages loaded and ran in a child process right after the build). Loading refuses a
package built for another torch, CPU or GPU, another model structure, a negative verdict,
or files that do not match their checksums, with a reason the caller records before it
falls back to compiling.

The packages embed no weights (``weights.py``): the caller passes them on every call.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from aot_core.artifacts.manifest import is_empty_dir
from aot_core.errors import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactIncompatibleError,
    NotOwnedError,
)

from aot_legacy.decoder import StaticKVDecoder
from aot_legacy.environment import mismatches
from aot_legacy.options import MIN_BUCKET, StepPlan
from aot_legacy.package_build import FILES, PackagingError, build_in_child
from aot_legacy.package_loader import Runner, load_runner
from aot_legacy.weights import skeleton_bytes, step_tensors

PACKAGE_FORMAT = 3
"""Bumped when the package layout or the step signature changes (2: weights are inputs;
3: prefill takes ``last_index`` ``[B, K]`` and returns logits at K positions per row)."""

MANIFEST = "manifest.json"


class PackagedStep:
    """A loaded ``.pt2`` step that checks shapes itself, since AOTInductor does not.

    Out-of-range shapes are undefined behaviour inside the package (it ran silently with
    wrong sizes in torch-aot.md section 1), so they are refused here with a clear error.
    The KV cache and the weights are bound here and passed on every call.
    """

    def __init__(
        self,
        fn: Runner,
        *,
        kind: str,
        plan: StepPlan,
        kv: Sequence[torch.Tensor],
        weights: Sequence[torch.Tensor] = (),
    ) -> None:
        self._fn = fn
        self.kind = kind
        self.plan = plan
        self._bound = [*kv, *weights]

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
        picks: tuple[int, ...] = tuple(last_index.shape[1:]) if self.kind == "prefill" else ()
        if self.kind == "prefill" and not (
            len(picks) == 1 and MIN_BUCKET <= picks[0] <= self.plan.max_seq
        ):
            raise ValueError(
                f"prefill package: last_index must be [batch, K] with K in the exported range "
                f"[{MIN_BUCKET}, {self.plan.max_seq}], got {list(last_index.shape)}"
            )
        if positions.shape != input_ids.shape or last_index.shape != (bsz, *picks):
            raise ValueError("packaged step: positions/last_index do not match input_ids")
        # Strides are baked into the generated kernels: a non-contiguous input reads the
        # wrong elements (measured: an out-of-bounds index error), so copy to contiguous.
        flat = [input_ids.contiguous(), positions.contiguous(), last_index.contiguous()]
        return self._fn([*flat, *self._bound])[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _specs(tensors: Sequence[torch.Tensor]) -> list[tuple[list[int], str]]:
    return [(list(t.shape), str(t.dtype).removeprefix("torch.")) for t in tensors]


def build_packages(
    step: StaticKVDecoder,
    plan: StepPlan,
    kv: Sequence[torch.Tensor],
    dest: Path,
    *,
    environment: dict[str, str],
    key_data: dict[str, Any],
) -> float:
    """Export and package both steps into ``dest`` in a child process; returns seconds spent.

    Written into a temporary sibling and renamed, so an interrupted build never leaves a
    directory that a later run would load. A full disk raises ``OSError(ENOSPC)``.
    ``dest`` may be the user's ``backend_options.package_dir``: it is replaced only when it
    is empty or a package directory this backend wrote (``NotOwnedError`` otherwise).
    """
    check_replaceable(dest)
    t0 = time.perf_counter()
    names, tensors = step_tensors(step)
    try:
        skeleton = skeleton_bytes(step)
    except Exception as exc:  # a class defined in __main__, a lambda attribute, ...
        raise PackagingError(
            f"the step cannot be sent to a packaging process ({type(exc).__name__}: {exc}); "
            "define its class in an importable module"
        ) from exc
    request = {
        "skeleton": skeleton,
        "names": names,
        "weights": _specs(tensors),
        "kv": _specs(kv),
        "device": str(kv[0].device),
        "max_batch": plan.max_batch,
        "max_seq": plan.max_seq,
        "threads": torch.get_num_threads(),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result = build_in_child(request, tmp)
        manifest = {
            "format": PACKAGE_FORMAT,
            "environment": environment,
            "key": key_data,
            "plan": {"max_batch": plan.max_batch, "max_seq": plan.max_seq, "dtype": plan.dtype},
            "weights": {"binding": "inputs", "names": names},
            "probe": {"ok": result.probe_ok, "detail": result.probe_detail},
            "files": {name: _sha256(tmp / name) for name in FILES},
            "created_unix": time.time(),
        }
        with (tmp / MANIFEST).open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(manifest, indent=2, sort_keys=True))
            fh.flush()
            os.fsync(fh.fileno())
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


def check_replaceable(dest: Path) -> None:
    """Refuse to replace ``dest`` unless it is absent, empty or a package directory.

    Proof that this backend wrote it is a package manifest (a JSON object with an integer
    format, an environment and per-file checksums) that lists every other file there with
    the sha256 it has (aot-core's rule, ``ownership_problem``: a manifest copied beside
    someone's files, or package files whose bytes changed, prove nothing); anything else is
    the user's.
    """
    if not (dest.exists() or dest.is_symlink()) or is_empty_dir(dest):
        return
    try:
        data = read_manifest(dest)
    except ArtifactError:
        data = {}
    if not (
        dest.is_dir()
        and not dest.is_symlink()
        and isinstance(data.get("format"), int)
        and isinstance(data.get("environment"), dict)
        and isinstance(data.get("files"), dict)
    ):
        raise NotOwnedError(
            f"refusing to replace {dest} with AOTInductor packages: it is not a package "
            "directory aot-legacy wrote (no package manifest), so it may hold your files; "
            "nothing was changed. Point backend_options.package_dir at a new or empty directory"
        )
    foreign = _unvouched(dest, data["files"])
    if foreign:
        raise NotOwnedError(
            f"refusing to replace {dest} with AOTInductor packages: its package manifest does "
            f"not vouch for {', '.join(foreign[:5])}, so it may hold your files; nothing was "
            "changed. Move it away yourself, or point backend_options.package_dir at a new or "
            "empty directory"
        )


def _unvouched(dest: Path, files: dict[str, Any]) -> list[str]:
    """Every path below ``dest`` but the manifest that ``files`` does not list with its
    sha256 (a listed file that is absent loses nothing and is not named)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(dest):
        base = Path(dirpath)
        for name in [*filenames, *(d for d in dirnames if (base / d).is_symlink())]:
            path = base / name
            rel = path.relative_to(dest).as_posix()
            if rel == MANIFEST:
                continue
            if path.is_symlink() or not path.is_file() or files.get(rel) != _sha256(path):
                out.append(rel)
    return sorted(out)


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
    directory: Path,
    *,
    environment: dict[str, str],
    key_data: dict[str, Any],
    weight_names: Sequence[str],
) -> dict[str, Any]:
    """Check a package was built for this torch/device/model/shapes/weights and is intact."""
    manifest = read_manifest(directory)
    if manifest.get("format") != PACKAGE_FORMAT:
        raise ArtifactIncompatibleError(
            f"{directory}: package format {manifest.get('format')!r}, this aot-legacy reads "
            f"format {PACKAGE_FORMAT} (weight-free, multi-position prefill); rebuild it with "
            "compile_model_aot"
        )
    diffs = mismatches(manifest.get("environment", {}), environment)
    diffs += mismatches(manifest.get("key", {}), key_data)
    weights = manifest.get("weights") or {}
    if weights.get("binding") != "inputs" or list(weights.get("names") or []) != list(weight_names):
        diffs.append("weights: the package takes other weight tensors than this model has")
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
    probe = manifest.get("probe") or {}
    if probe.get("ok") is not True:
        raise ArtifactIncompatibleError(
            f"{directory}: loading the packages in a probe process failed "
            f"({probe.get('detail') or 'no verdict recorded'}); this torch cannot load them here"
        )
    return manifest


def load_packages(
    directory: Path,
    *,
    plan: StepPlan,
    kv: Sequence[torch.Tensor],
    weights: tuple[Sequence[str], Sequence[torch.Tensor]],
    environment: dict[str, str],
    key_data: dict[str, Any],
    single_threaded: bool,
) -> tuple[PackagedStep, PackagedStep]:
    """Verify and load the prefill and decode packages of ``directory``.

    ``weights`` is (names, tensors) of the model: the packages take them as inputs.
    """
    names, tensors = weights
    verify_package(directory, environment=environment, key_data=key_data, weight_names=names)
    device = kv[0].device
    index = device.index if device.type == "cuda" and device.index is not None else -1
    if device.type == "cuda" and index < 0:
        index = torch.cuda.current_device()
    loaded = []
    for name in FILES:
        try:
            fn = load_runner(directory / name, single_threaded, index)
        except Exception as exc:  # the loader raises RuntimeError, OSError, zip errors...
            raise ArtifactCorruptError(f"{directory / name}: failed to load ({exc})") from exc
        loaded.append(fn)
    return (
        PackagedStep(loaded[0], kind="prefill", plan=plan, kv=kv, weights=tensors),
        PackagedStep(loaded[1], kind="decode", plan=plan, kv=kv, weights=tensors),
    )
