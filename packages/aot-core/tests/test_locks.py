"""Entry locks: mutual exclusion holds while lock files of gone entries are deleted.

``entry_lock`` deletes a lock file when its entry is gone, so lock files do not pile up
for every key ever tried. That is only safe because every locker re-checks, after its
``flock`` succeeds, that the path still names the inode it locked; the stress test below
runs real processes that lock, build and remove one entry in a tight loop and checks
that no two ever hold the lock at once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aot_core import artifacts
from aot_core.cli.app import ExitCode, main
from artifact_support import SPEC, key_for, make_artifact, make_model


def _failing_build(files: Path) -> dict[str, Any]:
    raise RuntimeError("compiler crashed")


def test_lock_files_do_not_pile_up_for_every_key_tried(tmp_path: Path) -> None:
    store = artifacts.ArtifactStore(tmp_path / "cache")
    model = make_model(tmp_path)
    for i in range(20):
        with pytest.raises(RuntimeError):
            artifacts.build_and_publish(
                store.path(f"tried-{i}"), key=key_for(model), build=_failing_build,
                backend="test", backend_version="", spec=SPEC, model=model,
            )  # fmt: skip
    assert sorted(p.name for p in store.entries_dir.iterdir()) == []
    make_artifact(store.path("kept"), model=model)
    make_artifact(store.path("removed"), model=model)
    assert store.remove("removed")
    # one lock file per existing entry, none for the removed one
    assert sorted(p.name for p in store.entries_dir.iterdir()) == [".kept.lock", "kept"]
    assert store.leftovers() == []


def test_stale_lock_files_of_older_releases_are_cleaned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = artifacts.ArtifactStore(tmp_path / "cache")
    make_artifact(store.path("kept"), model=make_model(tmp_path))
    for i in range(5):
        (store.entries_dir / f".gone-{i}.lock").write_text("123")
    assert len(store.leftovers()) == 5
    assert main(["--cache-dir", str(store.root), "cache", "ls"]) == ExitCode.OK
    assert "5 leftover(s)" in capsys.readouterr().out
    assert main(["--cache-dir", str(store.root), "cache", "clear", "--leftovers"]) == 0
    assert "5 leftover(s)" in capsys.readouterr().out
    assert sorted(p.name for p in store.entries_dir.iterdir()) == [".kept.lock", "kept"]
    assert artifacts.verify(store.path("kept")).ok


STRESS = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from aot_core import artifacts

    dest, rounds = Path(sys.argv[1]), int(sys.argv[2])
    marker = dest.parent / "holder"
    overlaps = 0
    for _ in range(rounds):
        with artifacts.entry_lock(dest):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                overlaps += 1  # someone else holds "the" lock at the same time
                continue
            os.close(fd)
            if os.getpid() % 2:
                dest.mkdir()  # sometimes the entry exists at release, sometimes not
            time.sleep(0.0005)
            os.unlink(marker)
            if dest.exists():
                dest.rmdir()
    print("overlaps", overlaps)
    """
)


def test_deleting_lock_files_never_lets_two_processes_hold_one_lock(tmp_path: Path) -> None:
    dest = tmp_path / "entries" / "contended"
    dest.parent.mkdir()
    script = tmp_path / "stress.py"
    script.write_text(STRESS)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(dest), "150"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [o.split()[-1] for o in outs] == ["0", "0", "0", "0"], outs
    assert not (dest.parent / ".contended.lock").exists()  # the entry is gone, so is its lock


# ------------------------------------------------------------------ issue 23

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from aot_core import artifacts

    entry, how = Path(sys.argv[1]), sys.argv[2]
    held = (
        artifacts.using_artifact(entry)
        if how == "using"
        else artifacts.entry_lock(entry, intent=how)
    )
    with held:
        print("held", flush=True)
        sys.stdin.readline()  # until the test lets go
    """
)


def _hold(entry: Path, how: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(entry), how],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0


def test_cache_clear_of_a_locked_entry_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 item 3: clear waited for a compile's lock, then deleted what it published."""
    store = artifacts.ArtifactStore(tmp_path / "cache")
    make_artifact(store.path("busy"), model=make_model(tmp_path / "m1"))
    make_artifact(store.path("idle"), model=make_model(tmp_path / "m2"))
    holder = _hold(store.path("busy"), "writing")
    try:
        # in a process of its own, so that a clear queued behind the lock fails the test
        # (TimeoutExpired) instead of hanging it
        proc = subprocess.run(
            [sys.executable, "-m", "aot_core.cli.app", "--cache-dir", str(store.root), "cache",
             "clear"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        code, out, err = proc.returncode, proc.stdout, proc.stderr
        assert code == ExitCode.CACHE_NOT_WRITABLE, err
        assert f"process {holder.pid}, which is writing busy" in err
        assert "removed 1 entry" in out and store.entry_keys() == ["busy"]
        assert main(["--cache-dir", str(store.root), "cache", "clear", "busy"]) == 10
        assert artifacts.verify(store.path("busy")).ok
    finally:
        _release(holder)
    assert main(["--cache-dir", str(store.root), "cache", "clear", "busy"]) == ExitCode.OK
    assert store.entry_keys() == []


def test_a_waiter_says_whether_the_holder_writes_or_only_uses_the_entry(
    tmp_path: Path,
) -> None:
    """Issue 23 item 5: a job only reading an entry was reported as writing it."""
    store = artifacts.ArtifactStore(tmp_path / "cache")
    make_artifact(store.path("e"), model=make_model(tmp_path / "m"))
    for how in ("using", "writing"):
        holder = _hold(store.path("e"), how)
        said: list[str] = []
        try:
            with (
                pytest.raises(artifacts.LockTimeoutError, match=f"which is {how} e"),
                artifacts.entry_lock(store.path("e"), timeout_s=0.2, on_wait=said.append),
            ):
                pass
        finally:
            _release(holder)
        assert said == [f"waiting for process {holder.pid}, which is {how} e"]
