"""Several real processes writing one cache entry at once, and writers killed mid-way.

Each writer is a separate Python process running ``artifacts.build_and_publish`` with a
builder that writes real files slowly, so the interleavings are the ones real compiles
produce. After every scenario the entry either verifies or is absent; it is never a
half-written directory that ``verify_for_load`` would accept.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from aot_core import artifacts
from aot_core.errors import ArtifactCorruptError

WRITER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    from aot_core import artifacts
    from aot_core.spec import CompileSpec

    # A test run started in the background (a CI runner's `cmd &`) hands its children
    # SIGINT ignored, and Python then never turns it into KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    dest, mode, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    ready = Path(sys.argv[4]) if len(sys.argv) > 4 else None

    def build(files):
        for i in range(8):
            (files / f"part-{i}.bin").write_bytes(os.urandom(64 * 1024))
            if i == 3 and ready is not None:
                ready.write_text(str(os.getpid()))  # half of the files are written
                if mode in ("hang", "hang-force"):
                    time.sleep(60)  # the test kills us here
            time.sleep(0.02)
        (files / "writer.txt").write_text(str(os.getpid()))
        return {"device": "cpu"}

    if mode == "crash-in-publish":
        real_rename = os.rename
        def rename(src, dst):
            real_rename(src, dst)
            if ".trash-" in str(dst):
                os._exit(137)  # old entry moved aside, new one not yet in place
        os.rename = rename

    key = artifacts.entry_key(
        backend="test", backend_version="", model=model, spec=CompileSpec()
    )
    manifest, built = artifacts.build_and_publish(
        dest, key=key, build=build, backend="test", backend_version="",
        spec=CompileSpec(), model=model,
        force=mode in ("force", "hang-force", "crash-in-publish"),
    )
    writer = (dest / "files" / "writer.txt").read_text()
    print(json.dumps({"built": built, "writer": writer, "pid": os.getpid()}))
    """
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return {
        "model": model,
        "script": script,
        "dest": tmp_path / "cache" / "entries" / "tiny-entry",
        "tmp": tmp_path,
    }


def start(env: dict[str, Path], mode: str, ready: Path | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(env["script"]), str(env["dest"]), mode, str(env["model"])]
    if ready is not None:
        cmd.append(str(ready))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def leftovers(dest: Path) -> list[str]:
    return sorted(
        p.name for p in dest.parent.iterdir() if ".staging-" in p.name or ".trash-" in p.name
    )


def test_concurrent_writers_of_one_entry_all_finish_with_one_intact_entry(
    env: dict[str, Path],
) -> None:
    procs = [start(env, "normal") for _ in range(6)]
    results = [finish(p) for p in procs]
    built = [r for r in results if r["built"]]
    assert len(built) == 1, results  # the others waited on the lock and reused it
    assert {r["writer"] for r in results} == {str(built[0]["pid"])}
    assert artifacts.verify(env["dest"]).ok
    artifacts.verify_for_load(env["dest"])
    assert leftovers(env["dest"]) == []


def test_concurrent_forced_rebuilds_serialise_and_leave_one_intact_entry(
    env: dict[str, Path],
) -> None:
    procs = [start(env, "force") for _ in range(4)]
    results = [finish(p) for p in procs]
    assert all(r["built"] for r in results)
    report = artifacts.verify(env["dest"])
    assert report.ok, report.describe()
    assert (env["dest"] / "files/writer.txt").read_text() in {str(r["pid"]) for r in results}
    assert leftovers(env["dest"]) == []


def test_sigkill_mid_build_leaves_nothing_loadable_and_next_run_recovers(
    env: dict[str, Path],
) -> None:
    ready = env["tmp"] / "ready"
    proc = start(env, "hang", ready)
    wait_for(ready)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    dest = env["dest"]
    assert not dest.exists()
    assert len(leftovers(dest)) == 1  # the dead writer's staging dir, under a dot-name
    with pytest.raises(ArtifactCorruptError):
        artifacts.verify_for_load(dest)
    result = finish(start(env, "normal"))
    assert result["built"] is True
    assert artifacts.verify(dest).ok
    assert leftovers(dest) == []  # the next writer cleaned up after the dead one


def test_sigkill_mid_rebuild_keeps_the_previous_entry(env: dict[str, Path]) -> None:
    first = finish(start(env, "normal"))
    ready = env["tmp"] / "ready"
    proc = start(env, "hang-force", ready)
    wait_for(ready)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    artifacts.verify_for_load(env["dest"])  # the old, complete entry still loads
    assert (env["dest"] / "files/writer.txt").read_text() == str(first["pid"])


def test_sigint_mid_build_cleans_up_its_staging_dir(env: dict[str, Path]) -> None:
    ready = env["tmp"] / "ready"
    proc = start(env, "hang", ready)
    wait_for(ready)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert not env["dest"].exists()
    assert leftovers(env["dest"]) == []


def test_crash_between_the_two_renames_of_a_replace(env: dict[str, Path]) -> None:
    finish(start(env, "normal"))
    proc = start(env, "crash-in-publish")
    proc.communicate(timeout=60)
    assert proc.returncode == 137
    dest = env["dest"]
    # the old entry was moved aside and the new one not yet placed: no entry at all,
    # which readers treat as a miss, never as something to load
    assert not dest.exists()
    assert any(".trash-" in n for n in leftovers(dest))
    with pytest.raises(ArtifactCorruptError):
        artifacts.verify_for_load(dest)
    assert finish(start(env, "normal"))["built"] is True
    assert artifacts.verify(dest).ok
    assert leftovers(dest) == []


def _can_mount_tmpfs(tmp: Path) -> bool:
    probe = tmp / "probe-mnt"
    probe.mkdir()
    try:
        rc = subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
            capture_output=True,
            check=False,
            timeout=30,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return False
    return rc == 0


FULL_DISK = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from aot_core import artifacts
    from aot_core.spec import CompileSpec

    store = artifacts.ArtifactStore(sys.argv[1])
    model = sys.argv[2]

    def build_with(size):
        def build(files):
            (files / "blob.bin").write_bytes(os.urandom(size))
            return {"device": "cpu"}
        return build

    key = artifacts.entry_key(backend="test", backend_version="", model=model, spec=CompileSpec())

    def attempt(name, size, force=False):
        try:
            artifacts.build_and_publish(
                store.path(name), key=key, build=build_with(size), backend="test",
                backend_version="", spec=CompileSpec(), model=model, force=force,
            )
            return "ok"
        except OSError as exc:
            return os.strerror(exc.errno)

    out = {
        "small": attempt("small", 4096),
        "big": attempt("big", 4 << 20),
        "small-rebuilt-big": attempt("small", 4 << 20, force=True),
        "small-verifies": artifacts.verify(store.path("small")).ok,
        "keys": store.entry_keys(),
        "leftovers": [p.name for p in store.leftovers()],
    }
    print(json.dumps(out))
    """
)


def test_full_disk_fails_cleanly_and_keeps_existing_entries(env: dict[str, Path]) -> None:
    tmp = env["tmp"]
    if not _can_mount_tmpfs(tmp):
        pytest.skip("needs `unshare -m` and tmpfs mounts (root in a private mount namespace)")
    mnt = tmp / "small-disk"
    mnt.mkdir()
    script = tmp / "full_disk.py"
    script.write_text(FULL_DISK)
    shell = (
        f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
        f"{sys.executable} {script} {mnt / 'cache'} {env['model']}"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["small"] == "ok"
    assert out["big"] == os.strerror(28)  # ENOSPC
    assert out["small-rebuilt-big"] == os.strerror(28)
    assert out["small-verifies"] is True
    assert out["keys"] == ["small"]
    assert out["leftovers"] == []
