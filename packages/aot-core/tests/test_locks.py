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
from aot_core.cli import ExitCode, main
from test_artifacts import SPEC, key_for, make_artifact, make_model


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
