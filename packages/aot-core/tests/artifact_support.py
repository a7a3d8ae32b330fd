"""Artifacts for aot-core's tests: a model directory, an artifact built and published the
way backends' compiles do (real files, real manifest), and manifest rewrites."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aot_core import artifacts
from aot_core.artifacts.identity import key_digest
from aot_core.spec import CompileSpec

SPEC = CompileSpec(compile_mode="default", max_model_len=256)

FILES = {
    "torch_compile_cache/abc/rank_0_0/backbone/artifact.bin": bytes(range(256)) * 40,
    "torch_compile_cache/abc/computation_graph.py": b"def forward(x):\n    return x\n",
    "inductor/kernels/k1.so": b"\x7fELF" + b"\x00" * 2000,
    "empty.txt": b"",
}


def make_model(root: Path, arch: str = "LlamaForCausalLM") -> Path:
    model = root / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({"architectures": [arch], "hidden_size": 64}))
    return model


def make_artifact(
    dest: Path,
    *,
    model: Path,
    files: dict[str, bytes] = FILES,
    backend: str = "test",
    device: str = "cpu",
) -> artifacts.Manifest:
    """Build and publish an artifact the way backends' compiles do, with real files.

    Its key is the real entry key (``dest`` may be named otherwise, as ``--out`` allows).
    """

    def build(files_dir: Path) -> dict[str, Any]:
        for rel, data in files.items():
            path = files_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return {"device": device, "extra": {"note": "test"}}

    manifest, built = artifacts.build_and_publish(
        dest,
        key=key_for(model, backend),
        build=build,
        backend=backend,
        backend_version="",
        spec=SPEC,
        model=model,
    )
    assert built
    return manifest


def rewrite_manifest(
    dest: Path, change: Callable[[dict[str, Any]], None], *, consistent: bool = True
) -> None:
    """Edit a manifest: as if written in another environment, or (``consistent=False``) raw.

    A consistent rewrite is what a genuine build elsewhere records: the versions follow
    the pins and the key is recomputed from the manifest's fields. A raw one is tampering.
    """
    path = dest / artifacts.MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    if consistent:
        pins = data["pins"]
        for package in ("torch", "vllm"):
            if package in pins:
                data[f"{package}_version"] = pins[package]
        digest = key_digest(
            format_version=data["format_version"],
            backend=data["backend"],
            backend_version=data["backend_version"],
            spec_fingerprint=data["spec_fingerprint"],
            model_config_hash=data["model_config_hash"],
            pins=pins,
            host=data["host_fingerprint"],
        )
        data["key"] = re.sub(r"-[0-9a-f]{16}$", f"-{digest}", data["key"])
    path.write_text(json.dumps(data))


def key_for(model: Path, backend: str = "test") -> str:
    """The entry key ``make_artifact`` gives an artifact of ``model``."""
    return artifacts.entry_key(backend=backend, backend_version="", model=model, spec=SPEC)
