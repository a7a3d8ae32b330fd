"""Slow tests: a start keeps its compile caches as an entry of aot-core's store, which
``aot cache ls``, ``verify``, ``export``, ``import`` and ``clear`` handle as they handle
``aot compile``'s and aot-vllm's entries.

The entry is the one the session's ``packaged`` fixture (``compile_model_aot`` into the
session cache) made, so only starts that load packages run here, plus one recompile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aot_core.artifacts import MANIFEST_NAME, verify
from aot_core.errors import ArtifactIncompatibleError, NotOwnedError
from aot_legacy import LegacyBackend
from aot_legacy.cache_entry import CacheWarning
from aot_legacy.compiled_model import LegacyCompiledModel
from conftest import GREEDY, PROMPTS, spec

pytestmark = pytest.mark.slow

AOT = Path(sys.executable).with_name("aot")


def _aot(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AOT_CACHE_DIR"}
    return subprocess.run(
        [str(AOT), "--cache-dir", str(store), "cache", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _entry(m: LegacyCompiledModel) -> Path:
    """The store entry a start's caches live in (``<store>/entries/<key>``)."""
    return Path(str(m.stats.resolved_config["cache_dir"])).parent.parent


def _listed(store: Path) -> dict[str, dict[str, Any]]:
    done = _aot(store, "ls", "--json")
    assert done.returncode == 0, done.stderr
    return {e["key"]: e for e in json.loads(done.stdout)}


def _old_layout_dir(store: Path) -> dict[str, bytes]:
    """A cache directory as aot-legacy wrote them before it used the store."""
    old = store / "0123456789abcdef" / "aoti"
    old.mkdir(parents=True)
    files = {"manifest.json": b'{"format": 3}', "prefill.pt2": b"old package bytes"}
    for name, data in files.items():
        (old / name).write_bytes(data)
    return files


def _unchanged(store: Path, files: dict[str, bytes]) -> bool:
    old = store / "0123456789abcdef" / "aoti"
    return {p.name: p.read_bytes() for p in old.iterdir()} == files


def test_a_start_publishes_an_entry_aot_cache_lists(
    packaged: LegacyCompiledModel, cache_root: Path
) -> None:
    entry = _entry(packaged)
    assert entry.parent == cache_root / "entries"
    assert entry.name.startswith("legacy-llama-")  # the model type, not the checkpoint
    record = _listed(cache_root)[entry.name]
    assert record["manifest"]["backend"] == "legacy"
    assert record["loadable_here"] is True and record["problem"] == ""
    listed = {f["path"] for f in record["manifest"]["files"]}
    assert any(p.endswith("/aoti/prefill.pt2") for p in listed)
    assert record["manifest"]["extra"] == {}  # sealed, not in progress
    done = _aot(cache_root, "verify", entry.name)
    assert done.returncode == 0, done.stdout + done.stderr
    # Nothing of the layout before the store: no keyed directory beside entries/.
    assert not [p for p in cache_root.iterdir() if len(p.name) == 16]


def test_export_import_clear_round_trip(
    packaged: LegacyCompiledModel,
    cache_root: Path,
    tiny_dir: Path,
    eager_tokens: list,
    tmp_path: Path,
) -> None:
    key = _entry(packaged).name
    archive = tmp_path / "entry.aot.tar.gz"
    done = _aot(cache_root, "export", key, str(archive))
    assert done.returncode == 0, done.stderr
    store = tmp_path / "elsewhere"
    store.mkdir()
    old = _old_layout_dir(store)
    done = _aot(store, "import", str(archive))
    assert done.returncode == 0, done.stderr
    assert list(_listed(store)) == [key]
    # A start from the imported entry loads its packages, compiles nothing, writes nothing.
    with LegacyBackend().compile_model(tiny_dir, spec(cache_dir=str(store))) as m:
        assert m.stats.resolved_config["tier"] == "package" and m.stats.cache.status == "hit"
        assert _entry(m) == store / "entries" / key
        assert [g.token_ids for g in m.generate(PROMPTS, GREEDY)] == eager_tokens
    assert verify(store / "entries" / key).ok
    done = _aot(store, "clear")
    assert done.returncode == 0, done.stderr
    assert _listed(store) == {}
    assert _unchanged(store, old)  # the old layout's directory is not aot cache's to remove


def test_a_damaged_entry_is_refused_and_left_alone(
    packaged: LegacyCompiledModel, cache_root: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    key = _entry(packaged).name
    archive = tmp_path / "entry.aot.tar"
    assert _aot(cache_root, "export", key, str(archive)).returncode == 0
    store = tmp_path / "store"
    assert _aot(store, "import", str(archive)).returncode == 0
    (package,) = (store / "entries" / key).glob("files/*/aoti/prefill.pt2")
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    package.write_bytes(bytes(data))
    for args in (("verify", key), ("export", key, str(tmp_path / "again.tar"))):
        done = _aot(store, *args)
        assert done.returncode == 8, (args, done.stdout, done.stderr)  # ARTIFACT_CORRUPT
    assert _listed(store)[key]["problem"] == ""  # ls reads no checksum without --verify
    # A start refuses it (bytes its manifest does not vouch for are not provably aot's)
    # and changes nothing: not moved aside, not rebuilt, not deleted.
    with pytest.raises(NotOwnedError):
        LegacyBackend().compile_model(tiny_dir, spec(cache_dir=str(store)))
    assert package.read_bytes() == bytes(data)
    assert (store / "entries" / key / MANIFEST_NAME).is_file()
    assert not (tmp_path / "again.tar").exists()


def test_an_entry_missing_a_file_is_rebuilt(
    packaged: LegacyCompiledModel,
    compiled: LegacyCompiledModel,
    tiny_dir: Path,
    eager_tokens: list,
    tmp_path: Path,
) -> None:
    # ``compiled`` first: a session fixture's cold compile must be this process's first
    # compile of the graph (Inductor keeps compiled graphs in memory too).
    key = _entry(packaged).name
    assert _entry(compiled).name == key
    archive = tmp_path / "entry.aot.tar"
    assert _aot(_entry(packaged).parent.parent, "export", key, str(archive)).returncode == 0
    store = tmp_path / "store"
    assert _aot(store, "import", str(archive)).returncode == 0
    (package,) = (store / "entries" / key).glob("files/*/aoti/decode.pt2")
    package.unlink()  # a listed file missing loses nothing of anyone's: aot's to rebuild
    s = spec(cache_dir=str(store), backend_options={"aoti": False})
    with (
        pytest.warns(CacheWarning, match="moved aside"),
        LegacyBackend().compile_model(tiny_dir, s) as m,
    ):
        assert m.stats.resolved_config["tier"] == "compile"
        assert [g.token_ids for g in m.generate(PROMPTS, GREEDY)] == eager_tokens
    # The rebuilt entry (same key: aoti off does not change it) is sealed and intact.
    record = _listed(store)[key]
    assert record["loadable_here"] is True and record["manifest"]["extra"] == {}
    assert verify(store / "entries" / key).ok
    assert not list((store / "entries" / key).glob("files/*/aoti"))
    assert _aot(store, "ls").stdout.count("leftover") == 0


def test_an_intact_entry_under_another_name_is_refused_and_kept(
    packaged: LegacyCompiledModel, tiny_dir: Path, tmp_path: Path
) -> None:
    from aot_legacy.options import LegacyOptions
    from aot_legacy.startup import load_start, request_start

    key = _entry(packaged).name
    archive = tmp_path / "entry.aot.tar"
    assert _aot(_entry(packaged).parent.parent, "export", key, str(archive)).returncode == 0
    store = tmp_path / "store"
    assert _aot(store, "import", str(archive)).returncode == 0
    other = spec(cache_dir=str(store), max_model_len=32)
    request = request_start(
        str(tiny_dir), other, LegacyOptions(), aot=False, backend_version=LegacyBackend.version()
    )
    start = load_start(request, None)  # names the entry; compiles nothing
    start.compiler.close()
    assert start.entry.key != key
    (store / "entries" / key).rename(start.entry.path)  # renamed by hand
    with pytest.raises(ArtifactIncompatibleError, match=f"holds the intact entry {key}"):
        LegacyBackend().compile_model(tiny_dir, other)
    assert verify(start.entry.path).ok  # not moved aside, not rebuilt, not deleted
