"""Slow tests: loading from a published aot artifact verifies it first, never writes to
it, and serves any weights of the architecture.

The artifact is published exactly as ``aot compile`` does (``build_and_publish``: staging
directory, manifest with a sha256 per file, atomic rename) around the session's compiled
caches, so no extra compile is needed: its packages were built from the config-only
directory and its torch.compile cache from ``alt_dir``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from aot_core import ArtifactCorruptError, ArtifactIncompatibleError
from aot_core.artifacts import FILES_DIR, build_and_publish, entry_key, verify
from aot_legacy import LegacyBackend
from aot_legacy.compiled_model import LegacyCompiledModel
from conftest import GREEDY, MAX_LEN, MAX_SEQS, PROMPTS, run_child, spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def published(
    packaged: LegacyCompiledModel,
    compiled: LegacyCompiledModel,
    cache_root: Path,
    tiny_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """An artifact holding both tiers' compiled files, published as ``aot compile`` does."""
    key = entry_key(
        backend="legacy",
        backend_version=LegacyBackend.version(),
        model=tiny_dir,
        spec=spec(),
    )
    dest = tmp_path_factory.mktemp("store") / key

    def build(files: Path) -> dict[str, object]:
        # The session's store entry holds both tiers' files (compile_model with aoti off
        # and compile_model_aot share one entry), laid out as an artifact's files/ is.
        entry_files = Path(str(packaged.stats.resolved_config["cache_dir"])).parent
        assert Path(str(compiled.stats.resolved_config["cache_dir"])).parent == entry_files
        assert entry_files.parent.parent == cache_root / "entries"
        shutil.copytree(entry_files, files, dirs_exist_ok=True)
        return {"device": "cpu"}

    build_and_publish(
        dest,
        key=key,
        build=build,
        backend="legacy",
        backend_version=LegacyBackend.version(),
        spec=spec(),
        model=str(tiny_dir),
    )
    assert verify(dest).ok
    return dest


def _files(artifact: Path) -> str:
    return str(artifact / FILES_DIR)


def test_package_tier_serves_other_weights_and_writes_nothing(
    published: Path, alt_dir: Path, alt_eager_tokens: list
) -> None:
    s = spec(cache_dir=_files(published))
    for build in (False, True):  # compile_model, and compile_model_aot as `aot bench` warm does
        compiler = LegacyBackend(s)
        m = (
            compiler.compile_model_aot(alt_dir, PROMPTS, s)
            if build
            else compiler.compile_model(alt_dir, s)
        )
        with m:
            assert m.stats.resolved_config["tier"] == "package" and m.stats.cache.status == "hit"
            assert m.stats.resolved_config["verified_artifact"] == str(published)
            assert [g.token_ids for g in m.generate(PROMPTS, GREEDY)] == alt_eager_tokens
    assert verify(published).ok, verify(published).describe()


def test_compile_tier_from_the_artifact_in_a_fresh_process(
    published: Path, tiny_dir: Path, eager_tokens: list
) -> None:
    child_spec = json.dumps(
        {"max_model_len": MAX_LEN, "max_num_seqs": MAX_SEQS, "backend_options": {"aoti": False}}
    )
    out = run_child(str(tiny_dir), _files(published), child_spec)
    assert [tuple(t) for t in out["tokens"]] == eager_tokens
    stats = out["stats"]
    assert stats["resolved_config"]["tier"] == "compile" and stats["cache"]["status"] == "hit"
    # It ran from a private copy: the artifact is exactly as published.
    assert not str(stats["cache"]["path"]).startswith(str(published))
    assert verify(published).ok, verify(published).describe()


def _key_dir(artifact: Path) -> Path:
    (key_dir,) = (p for p in (artifact / FILES_DIR).iterdir() if (p / "aoti").is_dir())
    return key_dir


def _plant_extra(a: Path) -> None:
    (_key_dir(a) / "aoti" / "probe-0123456789abcdef.json").write_text('{"ok": true}')


def _edit_verdict(a: Path) -> None:
    path = _key_dir(a) / "aoti" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["probe"] = {"ok": True, "detail": "edited"}
    path.write_text(json.dumps(manifest))


def _truncate_package(a: Path) -> None:
    path = _key_dir(a) / "aoti" / "decode.pt2"
    path.write_bytes(path.read_bytes()[:1000])


def _edit_package(a: Path) -> None:
    path = _key_dir(a) / "aoti" / "prefill.pt2"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_inductor_file(a: Path) -> None:
    path = next(p for p in (_key_dir(a) / "inductor").rglob("*") if p.is_file())
    path.write_bytes(path.read_bytes() + b"\n# planted\n")


@pytest.mark.parametrize(
    "tamper",
    [_plant_extra, _edit_verdict, _truncate_package, _edit_package, _edit_inductor_file],
    ids=["extra-file", "edited-verdict", "truncated-package", "edited-package", "edited-inductor"],
)
def test_tampered_artifact_is_refused_before_loading(
    published: Path, tiny_dir: Path, tmp_path: Path, tamper: Callable[[Path], None]
) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(published, artifact)
    tamper(artifact)
    assert not verify(artifact).ok
    package_dir = str(_key_dir(artifact) / "aoti")
    for s in (
        spec(cache_dir=_files(artifact)),
        spec(cache_dir=_files(artifact), backend_options={"aoti": False}),
        spec(cache_dir=str(tmp_path / "plain"), backend_options={"package_dir": package_dir}),
    ):
        with pytest.raises(ArtifactCorruptError, match="refusing to load a damaged artifact"):
            LegacyBackend(s).compile_model(tiny_dir, s)
        with pytest.raises(ArtifactCorruptError, match="refusing to load a damaged artifact"):
            LegacyBackend(s).compile_model_aot(tiny_dir, PROMPTS, s)


NO_CPU_HAS = "aot_test_isa_no_cpu_has"


def test_edited_or_foreign_manifest_is_refused(
    published: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(published, artifact)
    path = artifact / "manifest.json"
    original = json.loads(path.read_text())
    s = spec(cache_dir=_files(artifact))
    # An edited pin contradicts the recorded torch_version and the key: corrupt.
    path.write_text(json.dumps({**original, "pins": {**original["pins"], "torch": "2.5.0"}}))
    with pytest.raises(ArtifactCorruptError, match="inconsistent"):
        LegacyBackend(s).compile_model(tiny_dir, s)
    # Built on a CPU with an extension this one lacks: incompatible, never loaded. The name
    # is one no CPU reports, so the check holds on every host (avx512f, used before, is
    # present on this project's AVX-512 machines).
    path.write_text(json.dumps({**original, "cpu_isa": [*original["cpu_isa"], NO_CPU_HAS]}))
    with pytest.raises(ArtifactIncompatibleError, match=NO_CPU_HAS):
        LegacyBackend(s).compile_model(tiny_dir, s)
