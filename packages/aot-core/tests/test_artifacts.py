"""Artifacts: manifests, verification, compatibility, export/import and atomic publish.

Artifacts here are small real directories of real files; no backend is involved.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aot_core import artifacts
from aot_core.artifacts import environment
from aot_core.errors import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactIncompatibleError,
    NotOwnedError,
)
from aot_core.spec import CompileSpec
from aot_core.stats import RankStats
from artifact_support import FILES, SPEC, key_for, make_artifact, make_model, rewrite_manifest


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path)


@pytest.fixture
def art(tmp_path: Path, model: Path) -> Path:
    dest = tmp_path / "store" / "entries" / key_for(model)
    make_artifact(dest, model=model)
    return dest


def test_manifest_records_everything_and_round_trips(art: Path, model: Path) -> None:
    m = artifacts.read_manifest(art)
    assert m.format_version == artifacts.FORMAT_VERSION
    assert m.key == art.name
    assert m.backend == "test"
    assert m.spec_fingerprint == SPEC.fingerprint()
    assert CompileSpec.from_dict(m.spec) == SPEC
    assert m.model_config_hash == artifacts.model_config_hash(model)
    assert m.torch_version == artifacts.torch_version()
    assert m.pins == {} and m.vllm_version is None  # backend "test" is not installed: no pins
    assert m.device_kind == "cpu" and m.cpu_arch and m.cpu_isa == artifacts.cpu_isa()
    by_path = {f.path: f for f in m.files}
    assert set(by_path) == {f"files/{rel}" for rel in FILES}
    for rel, data in FILES.items():
        record = by_path[f"files/{rel}"]
        assert record.size == len(data)
        assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert artifacts.Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.extra["note"] == "test"


def test_artifact_root_tells_artifacts_from_plain_caches(art: Path, tmp_path: Path) -> None:
    assert artifacts.artifact_root(art) == art
    assert artifacts.artifact_root(art / "files") == art
    assert artifacts.artifact_root(str(art / "files")) == art
    plain = tmp_path / "plain-cache" / "files"
    plain.mkdir(parents=True)
    assert artifacts.artifact_root(plain) is None
    assert artifacts.artifact_root(None) is None


def test_intact_artifact_verifies_and_loads(art: Path) -> None:
    report = artifacts.verify(art)
    assert report.ok, report.describe()
    assert artifacts.verify_for_load(art).key == art.name
    # backends hand over their cache dir, which is the artifact's files/ directory
    assert artifacts.verify_for_load(art / artifacts.FILES_DIR).key == art.name


def test_tampered_file_same_size_is_detected(art: Path) -> None:
    path = art / "files/torch_compile_cache/abc/computation_graph.py"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # one flipped bit, same size
    path.write_bytes(bytes(data))
    report = artifacts.verify(art)
    assert not report.ok
    assert report.tampered == ("files/torch_compile_cache/abc/computation_graph.py",)
    with pytest.raises(ArtifactCorruptError, match=r"computation_graph\.py"):
        artifacts.verify_for_load(art)


def test_truncated_missing_and_extra_files_are_detected(art: Path) -> None:
    blob = art / "files/torch_compile_cache/abc/rank_0_0/backbone/artifact.bin"
    with blob.open("r+b") as fh:
        fh.truncate(100)
    (art / "files/inductor/kernels/k1.so").unlink()
    (art / "files/inductor/kernels/evil.so").write_bytes(b"planted")
    report = artifacts.verify(art)
    assert report.truncated == (
        "files/torch_compile_cache/abc/rank_0_0/backbone/artifact.bin (100 of 10240 bytes)",
    )
    assert report.missing == ("files/inductor/kernels/k1.so",)
    assert report.extra == ("files/inductor/kernels/evil.so",)
    text = "\n".join(report.problems())
    assert "truncated" in text and "missing" in text and "unexpected extra file" in text
    with pytest.raises(ArtifactCorruptError, match="refusing to load a damaged artifact"):
        artifacts.verify_for_load(art)


def test_extra_files_can_be_discarded_but_damage_is_never_loaded(art: Path) -> None:
    planted = art / "files/inductor/planted.so"
    planted.write_bytes(b"code nobody verified")
    with pytest.raises(ArtifactCorruptError, match="unexpected extra file"):
        artifacts.verify_for_load(art)
    assert planted.exists()
    assert artifacts.verify_for_load(art, discard_extra=True).key == art.name
    # the unlisted file is gone before anything could load it, and the entry verifies
    assert not planted.exists()
    assert artifacts.verify(art).ok
    (art / "files/empty.txt").write_text("now not empty")
    (art / "files/another-extra.bin").write_bytes(b"x")
    with pytest.raises(ArtifactCorruptError, match=r"tampered.*empty.txt"):
        artifacts.verify_for_load(art, discard_extra=True)
    # a refused entry is left as it is, for `aot cache verify` to show
    assert (art / "files/another-extra.bin").exists()


def test_symlinked_file_is_refused(art: Path, tmp_path: Path) -> None:
    target = art / "files/inductor/kernels/k1.so"
    outside = tmp_path / "outside.so"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    report = artifacts.verify(art)
    assert report.tampered == ("files/inductor/kernels/k1.so (not a plain file)",)


def test_missing_or_garbled_manifest(art: Path, tmp_path: Path) -> None:
    (art / artifacts.MANIFEST_NAME).write_text("{not json")
    assert "not valid JSON" in artifacts.verify(art).error
    with pytest.raises(ArtifactCorruptError, match="not valid JSON"):
        artifacts.verify_for_load(art)
    (art / artifacts.MANIFEST_NAME).write_text('{"format_version": 1}')
    with pytest.raises(ArtifactCorruptError, match="malformed"):
        artifacts.verify_for_load(art)
    plain = tmp_path / "not-an-artifact"
    (plain / "files").mkdir(parents=True)
    with pytest.raises(ArtifactCorruptError, match=r"no manifest\.json"):
        artifacts.verify_for_load(plain)


def test_manifest_paths_outside_the_artifact_are_tampering(art: Path) -> None:
    def escape(data: dict[str, Any]) -> None:
        data["files"][0]["path"] = "files/../../../etc/passwd"

    rewrite_manifest(art, escape, consistent=False)
    report = artifacts.verify(art)
    assert any("outside the artifact" in t for t in report.tampered)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["pins"].update(torch="0.0.1"), "built for torch 0.0.1, this environment has"),
        (lambda d: d["pins"].update(vllm="0.9.9"), "built for vllm 0.9.9"),
        (
            lambda d: d.update(cpu_isa=[*d["cpu_isa"], "aot_test_isa_no_cpu_has"]),
            "which this CPU lacks",
        ),
        (lambda d: d.update(cpu_arch="riscv128"), "built on a riscv128 CPU"),
        (
            lambda d: d.update(
                device="cuda:0 (NVIDIA H100, sm_90)", device_kind="cuda", cuda_capability="9.0"
            ),
            "capability 9.0",
        ),
        (lambda d: d.update(format_version=999), "upgrade aot-core"),
    ],
)
def test_incompatible_artifacts_are_refused_naming_the_reason(
    art: Path, change: Callable[[dict[str, Any]], None], expected: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(environment, "cuda_capabilities", lambda: ())
    rewrite_manifest(art, change)
    assert artifacts.verify(art).ok  # the files are intact: only the environment differs
    problems = artifacts.check_compatible(artifacts.read_manifest(art))
    assert any(expected in p for p in problems), problems
    with pytest.raises(ArtifactIncompatibleError, match="built for another environment"):
        artifacts.verify_for_load(art)


def test_cuda_capability_mismatch_names_both(art: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(environment, "cuda_capabilities", lambda: ("8.0",))
    rewrite_manifest(
        art, lambda d: d.update(device="cuda:0", device_kind="cuda", cuda_capability="9.0")
    )
    problems = artifacts.check_compatible(artifacts.read_manifest(art))
    assert problems == ["built for CUDA capability 9.0, the GPUs here have 8.0"]


def test_wrong_backend_is_refused(art: Path) -> None:
    with pytest.raises(ArtifactIncompatibleError, match="built by backend 'test', not 'vllm'"):
        artifacts.verify_for_load(art, backend="vllm")


def test_entry_key_is_stable_and_tracks_what_invalidates(model: Path, tmp_path: Path) -> None:
    def key(**kw: Any) -> str:
        args: dict[str, Any] = {
            "backend": "legacy",
            "backend_version": "0.1.0",
            "model": model,
            "spec": SPEC,
        }
        args.update(kw)
        return artifacts.entry_key(**args)

    assert key() == key()
    assert key().startswith("legacy-model-")
    assert key(spec=SPEC.replace(cache_dir="/somewhere")) == key()  # the path is not identity
    assert key(spec=SPEC.replace(compile_mode="max-autotune")) != key()
    assert key(backend_version="0.2.0") != key()
    other = make_model(tmp_path / "other", arch="MistralForCausalLM")
    assert key(model=other) != key()


def test_export_import_round_trip(art: Path, tmp_path: Path) -> None:
    archive = tmp_path / "entry.aot.tar.gz"
    digest = artifacts.export_artifact(art, archive)
    assert digest == hashlib.sha256(archive.read_bytes()).hexdigest()
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0] == artifacts.MANIFEST_NAME
    store = artifacts.ArtifactStore(tmp_path / "other-store")
    dest, manifest, placed = artifacts.import_artifact(archive, store, expected_sha256=digest)
    assert placed and dest == store.path(art.name)
    assert artifacts.verify(dest).ok
    assert manifest == artifacts.read_manifest(art)
    # importing the same artifact again is a no-op
    assert artifacts.import_artifact(archive, store)[2] is False
    assert store.leftovers() == []


def test_export_refuses_a_damaged_artifact(art: Path, tmp_path: Path) -> None:
    (art / "files/empty.txt").write_text("x")
    with pytest.raises(ArtifactCorruptError, match="refusing to export"):
        artifacts.export_artifact(art, tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()


def _archive(members: dict[str, bytes], path: Path, *, symlink: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink is not None:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


def _members(art: Path) -> dict[str, bytes]:
    out = {artifacts.MANIFEST_NAME: (art / artifacts.MANIFEST_NAME).read_bytes()}
    for f in artifacts.read_manifest(art).files:
        out[f.path] = (art / f.path).read_bytes()
    return out


def test_import_checks_before_placing_anything(art: Path, tmp_path: Path) -> None:
    store = artifacts.ArtifactStore(tmp_path / "dst")
    members = _members(art)

    tampered = dict(members)
    tampered["files/inductor/kernels/k1.so"] = b"\x7fELF" + b"\x01" * 2000
    with pytest.raises(ArtifactCorruptError, match="checksums do not match"):
        artifacts.import_artifact(_archive(tampered, tmp_path / "t.tar"), store)

    traversal = dict(members)
    traversal["../../outside.txt"] = b"x"
    with pytest.raises(ArtifactCorruptError, match="unexpected archive member"):
        artifacts.import_artifact(_archive(traversal, tmp_path / "p.tar"), store)

    with pytest.raises(ArtifactCorruptError, match="unexpected archive member"):
        artifacts.import_artifact(
            _archive(members, tmp_path / "s.tar", symlink="files/link"), store
        )

    short = {k: v for k, v in members.items() if not k.endswith("k1.so")}
    with pytest.raises(ArtifactCorruptError, match="missing from the archive"):
        artifacts.import_artifact(_archive(short, tmp_path / "m.tar"), store)

    data = json.loads(members[artifacts.MANIFEST_NAME])
    data["pins"]["torch"] = "0.0.1"
    foreign = dict(members)
    foreign[artifacts.MANIFEST_NAME] = json.dumps(data).encode()
    with pytest.raises(ArtifactIncompatibleError, match=r"torch 0\.0\.1"):
        artifacts.import_artifact(_archive(foreign, tmp_path / "f.tar"), store)

    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 20)
    with pytest.raises(ArtifactCorruptError, match="not a readable artifact archive"):
        artifacts.import_artifact(tmp_path / "junk.tar", store)

    good = _archive(members, tmp_path / "g.tar")
    with pytest.raises(ArtifactCorruptError, match="sha256 is"):
        artifacts.import_artifact(good, store, expected_sha256="0" * 64)

    # nothing was placed, nothing was left behind, nothing escaped
    assert store.entry_keys() == []
    assert store.leftovers() == []
    assert not (tmp_path / "outside.txt").exists()
    assert artifacts.import_artifact(good, store)[2] is True


def test_import_does_not_silently_replace_a_different_entry(art: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    artifacts.export_artifact(art, archive)
    store = artifacts.ArtifactStore(tmp_path / "dst")
    make_artifact(store.path(art.name), model=make_model(tmp_path / "m2"), files={"x": b"1"})
    with pytest.raises(FileExistsError, match="--force"):
        artifacts.import_artifact(archive, store)
    assert artifacts.read_manifest(store.path(art.name)).files[0].path == "files/x"
    dest, _, placed = artifacts.import_artifact(archive, store, replace=True)
    assert placed and artifacts.verify(dest).ok and len(artifacts.read_manifest(dest).files) == 4


def test_corrupt_existing_entry_is_refused_not_rebuilt(art: Path, model: Path) -> None:
    """A file whose bytes differ from the manifest is not provably aot's (issue 23: a copied
    manifest must not make a directory deletable), so the entry is neither reused nor
    rebuilt over: it is left for a person to look at. Until 2026-12 it was rebuilt."""
    (art / "files/empty.txt").write_text("tampered")
    before = {p: p.read_bytes() for p in art.rglob("*") if p.is_file()}
    calls: list[Path] = []

    def build(files_dir: Path) -> dict[str, Any]:
        calls.append(files_dir)
        (files_dir / "fresh.bin").write_bytes(b"fresh")
        return {"device": "cpu"}

    with pytest.raises(NotOwnedError, match=r"files/empty.txt \(8 bytes, the manifest says 0\)"):
        artifacts.build_and_publish(
            art, key=art.name, build=build, backend="test", backend_version="", spec=SPEC,
            model=model, force=True,
        )  # fmt: skip
    assert calls == []
    assert {p: p.read_bytes() for p in art.rglob("*") if p.is_file()} == before
    # once the damage is gone (the file as the manifest lists it), it is reused unbuilt
    (art / "files/empty.txt").write_bytes(b"")
    again, built = artifacts.build_and_publish(
        art, key=art.name, build=build, backend="test", backend_version="", spec=SPEC,
        model=model,
    )  # fmt: skip
    assert not built and calls == [] and again.key == art.name
    # a listed file that is missing loses nothing: that entry is still aot's to rebuild
    (art / "files/empty.txt").unlink()
    manifest, built = artifacts.build_and_publish(
        art, key=art.name, build=build, backend="test", backend_version="", spec=SPEC,
        model=model,
    )  # fmt: skip
    assert built and len(calls) == 1 and [f.path for f in manifest.files] == ["files/fresh.bin"]
    assert artifacts.verify(art).ok


def test_failed_build_leaves_previous_entry_and_no_staging(art: Path, model: Path) -> None:
    before = artifacts.read_manifest(art)

    def build(files_dir: Path) -> dict[str, Any]:
        (files_dir / "half.bin").write_bytes(b"half")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="compiler crashed"):
        artifacts.build_and_publish(
            art,
            key=art.name,
            build=build,
            backend="test",
            backend_version="",
            spec=SPEC,
            model=model,
            force=True,
        )
    assert artifacts.read_manifest(art) == before
    assert artifacts.verify(art).ok
    assert artifacts.ArtifactStore(art.parent.parent).leftovers() == []


def test_a_manifest_records_the_spec_without_its_run_time_kv_size(
    tmp_path: Path, model: Path
) -> None:
    """A job's kv_cache_seqs sized its start, not the entry jobs of every size share: the
    manifest holds the spec without it (readable by an aot-core that predates the field),
    and verifies."""
    root = tmp_path / "a"
    (root / "files").mkdir(parents=True)
    (root / "files" / "code.bin").write_bytes(b"compiled")
    sized = SPEC.replace(kv_cache_seqs=30)
    manifest = artifacts.write_manifest(
        root, key=key_for(model), backend="test", backend_version="", spec=sized, model=model
    )
    assert "kv_cache_seqs" not in manifest.spec
    assert CompileSpec.from_dict(manifest.spec) == SPEC
    assert manifest.spec_fingerprint == SPEC.fingerprint() == sized.fingerprint()
    assert artifacts.verify(root).ok


def test_write_manifest_refuses_symlinks(tmp_path: Path, model: Path) -> None:
    root = tmp_path / "a"
    (root / "files").mkdir(parents=True)
    (root / "files" / "link").symlink_to("/etc/hostname")
    with pytest.raises(ArtifactError, match="symbolic link"):
        artifacts.write_manifest(
            root, key="a", backend="t", backend_version="", spec=SPEC, model=model
        )


def test_store_listing_and_removal(tmp_path: Path, model: Path) -> None:
    store = artifacts.ArtifactStore(tmp_path / "s")
    make_artifact(store.path("one"), model=model)
    make_artifact(store.path("two"), model=model)
    rewrite_manifest(store.path("two"), lambda d: d["pins"].update(torch="0.0.1"))
    assert store.entry_keys() == ["one", "two"]
    assert store.info("one").problem == ""
    assert "torch 0.0.1" in store.info("two").problem
    assert store.info("one").size_bytes == sum(len(v) for v in FILES.values()) + len(
        (store.path("one") / artifacts.MANIFEST_NAME).read_bytes()
    )
    assert store.remove("two") is True
    assert store.remove("two") is False
    assert store.entry_keys() == ["one"]
    with pytest.raises(ArtifactError, match="not a valid entry name"):
        store.path("../escape")


def test_default_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "c"))
    assert artifacts.ArtifactStore().root == tmp_path / "c"
    monkeypatch.delenv("AOT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert artifacts.default_cache_root() == tmp_path / "x" / "aot"


def test_model_config_hash_ignores_key_order(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "config.json").write_text('{"x": 1, "y": [1, 2]}')
    (b / "config.json").write_text('{\n  "y": [1, 2],\n  "x": 1\n}')
    assert artifacts.model_config_hash(a) == artifacts.model_config_hash(b)
    (b / "config.json").write_text('{"x": 2, "y": [1, 2]}')
    assert artifacts.model_config_hash(a) != artifacts.model_config_hash(b)


def test_using_artifact_reseals_what_a_successful_start_wrote(art: Path) -> None:
    with artifacts.using_artifact(art) as manifest:
        assert manifest.key == art.name
        (art / "files/torch_compile_cache/abc/new-shape.py").write_text("compiled at load")
    report = artifacts.verify(art)
    assert report.ok, report.describe()
    assert "files/torch_compile_cache/abc/new-shape.py" in {
        f.path for f in artifacts.read_manifest(art).files
    }


def test_using_artifact_does_not_bless_what_a_failed_start_wrote(art: Path) -> None:
    with pytest.raises(RuntimeError, match="engine died"), artifacts.using_artifact(art):
        (art / "files/half-written.so").write_bytes(b"\x7fEL")
        raise RuntimeError("engine died")
    with pytest.raises(ArtifactCorruptError, match=r"half-written\.so"):
        artifacts.verify_for_load(art)


def test_using_artifact_refuses_before_the_block_runs(art: Path) -> None:
    (art / "files/empty.txt").write_text("tampered")
    ran = []
    with pytest.raises(ArtifactCorruptError), artifacts.using_artifact(art):
        ran.append(True)
    assert ran == []


def test_an_entry_for_another_key_is_rebuilt_not_reused(art: Path, model: Path) -> None:
    refused: list[str] = []

    def build(files_dir: Path) -> dict[str, Any]:
        (files_dir / "other.bin").write_bytes(b"other")
        return {"device": "cpu"}

    manifest, built = artifacts.build_and_publish(
        art, key="another-model-key", build=build, backend="test", backend_version="",
        spec=SPEC, model=model, on_refused=lambda exc: refused.append(str(exc)),
    )  # fmt: skip
    assert built and manifest.key == "another-model-key"
    assert "holds another model or spec" in refused[0]


def _tp2_artifact(tmp_path: Path, model: Path) -> Path:
    """An artifact compiled for two tensor-parallel ranks, each with a file of its own."""
    spec = SPEC.replace(tensor_parallel_size=2)
    key = artifacts.entry_key(backend="test", backend_version="", model=model, spec=spec)
    dest = tmp_path / "store" / "entries" / key
    # What a backend reports per rank (paths relative to its cache_dir, the files/ dir).
    ranks = [
        RankStats(rank=r, tensor_parallel_rank=r, files=(f"graphs/rank{r}.bin", "gone.bin"))
        for r in (0, 1)
    ]

    def build(files_dir: Path) -> dict[str, Any]:
        (files_dir / "graphs").mkdir()
        for r in (0, 1):
            (files_dir / "graphs" / f"rank{r}.bin").write_bytes(bytes([r]) * 64)
        return {"device": "cpu", "ranks": artifacts.rank_records(ranks)}

    artifacts.build_and_publish(
        dest, key=key, build=build, backend="test", backend_version="", spec=spec, model=model
    )
    return dest


def test_a_multi_rank_manifest_records_the_world_and_each_ranks_files(
    tmp_path: Path, model: Path
) -> None:
    dest = _tp2_artifact(tmp_path, model)
    m = artifacts.read_manifest(dest)
    assert m.world_size == (2, 1)
    # A file a rank names that is not in the artifact is dropped from its record.
    assert [r.files for r in m.ranks] == [("files/graphs/rank0.bin",), ("files/graphs/rank1.bin",)]
    assert artifacts.Manifest.from_dict(m.to_dict()) == m
    assert artifacts.verify(dest).ok
    assert any("tensor_parallel_size=2" in line for line in artifacts.describe_manifest(m))


def test_an_artifact_for_another_world_size_is_refused(tmp_path: Path, model: Path) -> None:
    dest = _tp2_artifact(tmp_path, model)
    assert artifacts.verify_for_load(dest, world=(2, 1)).world_size == (2, 1)
    with pytest.raises(ArtifactIncompatibleError) as err:
        artifacts.verify_for_load(dest, world=(1, 1))
    message = str(err.value)
    assert "built for tensor_parallel_size=2 x pipeline_parallel_size=1 (2 rank(s)" in message
    assert "this start asks for tensor_parallel_size=1 x pipeline_parallel_size=1" in message
    assert "rank 0, rank 1" in message
    # And the other way round: a single-process artifact does not serve two ranks.
    (plain := tmp_path / "plain").mkdir()
    one = make_artifact(plain / "entry", model=model)
    assert "built for tensor_parallel_size=1" in artifacts.world_problem(
        one, tensor_parallel_size=2, pipeline_parallel_size=1
    )


def test_a_rank_record_naming_an_unlisted_file_is_tampering(tmp_path: Path, model: Path) -> None:
    dest = _tp2_artifact(tmp_path, model)
    rewrite_manifest(
        dest, lambda d: d["ranks"][1]["files"].append("files/evil.so"), consistent=False
    )
    report = artifacts.verify(dest)
    assert not report.ok
    assert any("files/evil.so (named by rank 1" in p for p in report.problems())


def test_an_artifact_being_built_is_already_an_artifact(tmp_path: Path, model: Path) -> None:
    # A backend handed the staging files/ as spec.cache_dir finds its (empty) artifact.
    seen: dict[str, Any] = {}

    def build(files_dir: Path) -> dict[str, Any]:
        root = artifacts.artifact_root(files_dir)
        seen["root"] = root
        seen["files"] = artifacts.verify_for_load(files_dir).files if root else None
        (files_dir / "table.bin").write_bytes(b"compiled")
        return {"device": "cpu"}

    key = key_for(model)
    dest = tmp_path / "store" / "entries" / key
    manifest, built = artifacts.build_and_publish(
        dest, key=key, build=build, backend="test", backend_version="", spec=SPEC, model=model
    )
    assert built and seen["root"] is not None and seen["root"].name.startswith(f".{key}.")
    assert seen["files"] == ()
    assert [f.path for f in manifest.files] == ["files/table.bin"]
