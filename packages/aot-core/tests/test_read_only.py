"""Artifacts on read-only media load; only compiling needs write access.

The store is made really read-only: a read-only bind mount in a private mount namespace
(``unshare -m``, which needs root), or, for a non-root user, directories without write
permission. ``chmod`` does not stop root, so as root without ``unshare`` the test skips
rather than pretend. The commands run as the installed ``aot`` does, in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fake_backend
import pytest
from aot_core import artifacts
from aot_core.bench.prompts import default_prompts
from aot_core.cli.app import ExitCode
from aot_core.spec import CompileSpec
from aot_core.start_config import resolve_start
from artifact_support import make_model
from fake_backend import install_cli_test_backends

AOT = f"{sys.executable} -m aot_core.cli.app"

# Runs inside the read-only store; prints one "name rc" line per step.
SCRIPT = textwrap.dedent(
    """
    set +e
    {aot} --cache-dir {cache} compile {model} --backend ready > {out}/compile.out 2>&1
    echo "compile $?"
    {aot} --cache-dir {cache} compile {model} --backend ready --out {outdir} \
        > {out}/compile-out.out 2>&1
    echo "compile-out $?"
    {aot} --cache-dir {cache} cache ls --verify > {out}/ls.out 2>&1
    echo "ls $?"
    {aot} --cache-dir {cache} cache verify > {out}/verify.out 2>&1
    echo "verify $?"
    {aot} --cache-dir {cache} cache export {key} {out}/x.tar > {out}/export.out 2>&1
    echo "export $?"
    {py} -c "from pathlib import Path
    from aot_core import artifacts
    with artifacts.using_artifact('{entry}', backend='ready') as m:
        assert (Path('{entry}') / m.files[0].path).read_bytes()
    with artifacts.using_artifact('{outdir}', backend='ready') as m:
        pass
    print('loaded', m.key)" > {out}/load.out 2>&1
    echo "load $?"
    {aot} --cache-dir {cache} compile {model} --backend ready --force > {out}/force.out 2>&1
    echo "force $?"
    {aot} --cache-dir {cache} compile {other} --backend ready > {out}/other.out 2>&1
    echo "other $?"
    {aot} --cache-dir {cache} cache clear > {out}/clear.out 2>&1
    echo "clear $?"
    """
)


def _build(dest: Path, *, key: str, model: Path, spec: CompileSpec) -> None:
    def build(files: Path) -> dict[str, str]:
        (files / "kernel.bin").write_bytes(b"compiled elsewhere" * 100)
        return {"device": "cpu"}

    artifacts.build_and_publish(
        dest, key=key, build=build, backend="ready", backend_version="0.0.7",
        spec=spec, model=model,
    )  # fmt: skip


def _read_only(paths: list[Path], script: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        for path in paths:
            for p in [path, *path.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555)
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    mounts = " && ".join(f"mount --bind {p} {p} && mount -o remount,bind,ro {p} {p}" for p in paths)
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{mounts} && {script}"],
        capture_output=True,
        text=True,
        check=False,
    )


def _can_bind_read_only(tmp: Path) -> bool:
    if os.geteuid() != 0:
        return True
    probe = tmp / "probe"
    probe.mkdir()
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe} {probe} && "
         f"touch {probe}/x"],
        capture_output=True, check=False,
    )  # fmt: skip
    probe.rmdir()
    return proc.returncode != 0 and b"Read-only file system" in proc.stderr


def test_a_read_only_store_is_used_without_write_access(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        usable = _can_bind_read_only(tmp_path)
    except FileNotFoundError:
        usable = False
    if not usable:
        pytest.skip("as root this needs `unshare -m` and bind mounts (chmod does not stop root)")
    install_cli_test_backends(site, "Ready")
    # the aot processes below import the backends from the site dir alone
    (site / "fake_backend.py").write_text(Path(fake_backend.__file__).read_text())
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))

    model = make_model(tmp_path / "m")
    other = make_model(tmp_path / "other", arch="MistralForCausalLM")
    cache = artifacts.ArtifactStore(tmp_path / "media" / "cache")
    # The spec `aot compile` keys its entry with: the open fields resolved once per command.
    spec = resolve_start(CompileSpec(), model, examples=default_prompts()).apply(CompileSpec())
    key = artifacts.entry_key(backend="ready", backend_version="0.0.7", model=model, spec=spec)
    # Its lock file stays: a shared lock is taken.
    _build(cache.path(key), key=key, model=model, spec=spec)
    outdir = tmp_path / "media" / "art"
    _build(outdir, key=key, model=model, spec=spec)
    (outdir.parent / ".art.lock").unlink()  # none at all here: read without one
    out = tmp_path / "out"
    out.mkdir()
    script = SCRIPT.format(
        aot=AOT, py=sys.executable, cache=cache.root, model=model, other=other, out=out,
        outdir=outdir, key=key, entry=cache.path(key),
    )  # fmt: skip
    proc = _read_only([tmp_path / "media"], script)
    rc = dict(line.split() for line in proc.stdout.splitlines() if len(line.split()) == 2)

    def log(name: str) -> str:
        return (out / f"{name}.out").read_text()

    assert rc.get("compile") == "0", proc.stdout + proc.stderr + log("compile")
    assert "cannot be written, but it holds a verified artifact" in log("compile")
    assert log("compile").splitlines()[-6] == str(cache.path(key))  # where it is, on stdout
    assert rc["compile-out"] == "0", log("compile-out")
    assert rc["ls"] == "0" and "ok (1 files verified)" in log("ls")
    assert rc["verify"] == "0", log("verify")
    assert rc["export"] == "0", log("export")
    assert rc["load"] == "0" and f"loaded {key}" in log("load"), log("load")
    for step in ("force", "other", "clear"):
        assert rc[step] == str(int(ExitCode.CACHE_NOT_WRITABLE)), (step, log(step))
        assert "Traceback" not in log(step)
    assert "Read-only file system" in log("force") or "Permission denied" in log("force")
    assert artifacts.verify(cache.path(key)).ok and artifacts.verify(outdir).ok
