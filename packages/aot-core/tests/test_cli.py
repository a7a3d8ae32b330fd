"""The ``aot`` command: exit codes and messages for bad input, and the cache commands.

No test here compiles anything. A test backend registered through real entry points is
used only where the command must get past backend lookup to reach the check under test
(it raises if anything ever asks it to compile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aot_core import artifacts
from aot_core.cli import app as cli
from aot_core.cli.app import ExitCode, main
from artifact_support import make_artifact, make_model, rewrite_manifest
from fake_backend import install_cli_test_backends


@pytest.fixture
def fake_backends(site: Path) -> Path:
    install_cli_test_backends(site, "Ready", "NeedsGpu", "BrokenEngine")
    return site


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> artifacts.ArtifactStore:
    """A cache holding one valid entry, which no failing command may damage."""
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "cache"))
    store = artifacts.ArtifactStore()
    make_artifact(store.path("existing"), model=make_model(tmp_path / "m0"))
    return store


def assert_intact(store: artifacts.ArtifactStore) -> None:
    assert store.entry_keys() == ["existing"]
    assert artifacts.verify(store.path("existing")).ok
    assert store.leftovers() == []


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- help, usage


def test_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for code in ExitCode:
        assert f"{int(code):>3}  {cli.EXIT_CODE_HELP[code]}" in out
    assert "AOT_CACHE_DIR" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["compile"], ["bench", "--repeats", "0"], ["cache"], ["frobnicate"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == ExitCode.USAGE, argv
        assert "aot: error:" in capsys.readouterr().err


def test_console_script_module_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aot_core.cli.app", "cache", "ls"],
        capture_output=True,
        text=True,
        env={**os.environ, "AOT_CACHE_DIR": str(tmp_path)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(no entries)" in proc.stdout


# --------------------------------------------------------------------------- aot backends


def test_backends_with_none_installed(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["backends"], capsys)
    assert code == ExitCode.OK
    assert "No aot backends are installed" in out
    assert "pip install aot-vllm" in out and "pip install aot-legacy" in out
    code, out, _ = run(["backends", "--json"], capsys)
    assert json.loads(out) == []


def test_backends_lists_version_and_why_not(
    fake_backends: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["backends"], capsys)
    assert code == ExitCode.OK
    lines = out.splitlines()
    assert lines[0].split() == [
        "backend", "version", "package", "what", "usable", "here", "why", "not"
    ]  # fmt: skip
    needs = next(line for line in lines if line.startswith("needsgpu"))
    assert "0.0.7" in needs and " no " in needs and "needs a CUDA device; none found" in needs
    ready = next(line for line in lines if line.startswith("ready"))
    assert " yes" in ready
    code, out, _ = run(["backends", "--json"], capsys)
    data = {d["name"]: d for d in json.loads(out)}
    assert data["needsgpu"]["usable"] is False and data["ready"]["version"] == "0.0.7"
    assert data["brokenengine"]["usable"] is True  # the cheap check alone passes


def test_backends_check_imports_engines_as_compat_does(
    fake_backends: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["backends", "--check"], capsys)
    assert code == ExitCode.OK
    broken = next(line for line in out.splitlines() if line.startswith("brokenengine"))
    assert " no " in broken and "engine failed to import: ABI mismatch" in broken
    assert "installed, but its engine fails on import" in broken  # its description
    code, out, _ = run(["backends", "--check", "--json"], capsys)
    data = {d["name"]: d for d in json.loads(out)}
    assert data["brokenengine"]["usable"] is False and data["brokenengine"]["engine_checked"]


# --------------------------------------------------------------------------- bad model input


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("setup", "code", "phrase"),
    [
        (lambda t: t / "no-such-model", ExitCode.MODEL_NOT_FOUND, "not found"),
        (lambda t: _write(t / "weights.bin", "x"), ExitCode.MODEL_NOT_FOUND, "is a file"),
        (
            lambda t: _write(t / "m" / "README", "x").parent,
            ExitCode.MODEL_NOT_FOUND,
            "has no config.json",
        ),
        (
            lambda t: _write(t / "m" / "config.json", "{oops").parent,
            ExitCode.NOT_A_CAUSAL_LM,
            "cannot be read as JSON",
        ),
        (
            lambda t: _write(t / "m" / "config.json", '{"model_type": "llama"}').parent,
            ExitCode.NOT_A_CAUSAL_LM,
            "names no model architecture",
        ),
        (
            lambda t: (
                _write(t / "m" / "config.json", '{"architectures": ["BertForMaskedLM"]}').parent
            ),
            ExitCode.NOT_A_CAUSAL_LM,
            "BertForMaskedLM, not a causal language model",
        ),
    ],
)
def test_bad_model_gets_a_clear_message_and_code(
    setup: Any,
    code: ExitCode,
    phrase: str,
    *,
    tmp_path: Path,
    cache: artifacts.ArtifactStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = setup(tmp_path / "input")
    for argv in (["compile", str(model), "--backend", "vllm"], ["bench", str(model)]):
        got, _, err = run(argv, capsys)
        assert got == code, err
        assert phrase in err and err.startswith("aot: error:")
    assert_intact(cache)


# --------------------------------------------------------------------------- bad spec input


@pytest.mark.parametrize(
    ("text", "phrases"),
    [
        ('max_model_len = 256\n\ncompile_mode = "fast"\n', ["compile_mode", "line 3"]),
        ("max_model_len = 256\ncuda_graph_sizes = [1, 2, 2]\n", ["cuda_graph_sizes", "line 2"]),
        ("max_model_len = 256\ncompile_mod = 1\n", ["compile_mod", "did you mean", "line 2"]),
        ("max_model_len = \n", ["not valid", "line 1"]),
    ],
)
def test_spec_errors_name_field_and_line(
    text: str,
    phrases: list[str],
    tmp_path: Path,
    cache: artifacts.ArtifactStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = make_model(tmp_path)
    spec = _write(tmp_path / "spec.toml", text)
    code, _, err = run(["compile", str(model), "--backend", "vllm", "--spec", str(spec)], capsys)
    assert code == ExitCode.SPEC_ERROR, err
    for phrase in phrases:
        assert phrase in err
    assert str(spec) in err
    assert_intact(cache)


def test_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model(tmp_path)
    code, _, err = run(
        ["compile", str(model), "--backend", "vllm", "--spec", str(tmp_path / "nope.toml")],
        capsys,
    )
    assert code == ExitCode.SPEC_ERROR and "does not exist" in err


# --------------------------------------------------------------------------- backend lookup


def test_backend_not_installed(
    site: Path,
    tmp_path: Path,
    cache: artifacts.ArtifactStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = make_model(tmp_path)
    code, _, err = run(["compile", str(model), "--backend", "vllm"], capsys)
    assert code == ExitCode.BACKEND_UNAVAILABLE
    assert "pip install aot-vllm" in err
    code, _, err = run(["bench", str(model)], capsys)
    assert code == ExitCode.BACKEND_UNAVAILABLE and "no aot backend is installed" in err
    assert_intact(cache)


def test_backend_that_cannot_run_here(
    fake_backends: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_model(tmp_path)
    code, _, err = run(["compile", str(model), "--backend", "needsgpu"], capsys)
    assert code == ExitCode.BACKEND_UNAVAILABLE
    assert "needs a CUDA device; none found" in err


# --------------------------------------------------------------------------- unwritable output


def test_unwritable_cache_dir_fails_before_compiling(
    fake_backends: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_model(tmp_path)
    blocker = _write(tmp_path / "a-file", "not a directory")
    code, _, err = run(
        ["--cache-dir", str(blocker / "cache"), "compile", str(model), "--backend", "ready"],
        capsys,
    )
    assert code == ExitCode.CACHE_NOT_WRITABLE, err
    assert "cannot write to the cache directory" in err
    assert blocker.read_text() == "not a directory"


def test_out_dir_holding_other_data_is_never_overwritten(
    fake_backends: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_model(tmp_path)
    precious = _write(tmp_path / "results" / "thesis.tex", "years of work")
    code, _, err = run(
        ["compile", str(model), "--backend", "ready", "--out", str(precious.parent)], capsys
    )
    assert code == ExitCode.CACHE_NOT_WRITABLE
    assert "refusing to replace" in err and "holds no manifest.json" in err
    assert "nothing was changed" in err
    assert precious.read_text() == "years of work"


# --------------------------------------------------------------------------- aot cache


def test_cache_ls_verify_export_import_clear(
    tmp_path: Path, cache: artifacts.ArtifactStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["cache", "ls"], capsys)
    assert code == 0 and "existing" in out and " not checked" in out
    code, out, _ = run(["cache", "ls", "--verify"], capsys)
    assert code == 0 and "ok (4 files verified)" in out
    code, out, _ = run(["cache", "verify"], capsys)
    assert code == 0 and "ok (4 files verified)" in out

    archive = tmp_path / "exported.aot.tar.gz"
    code, out, _ = run(["cache", "export", "existing", str(archive)], capsys)
    assert code == 0 and archive.is_file()
    digest = out.split("sha256: ")[1].split()[0]

    other = tmp_path / "other-cache"
    code, out, err = run(
        ["--cache-dir", str(other), "cache", "import", str(archive), "--sha256", digest], capsys
    )
    assert code == 0, err
    key = artifacts.read_manifest(cache.path("existing")).key  # imports go under their key
    assert artifacts.verify(other / "entries" / key).ok
    code, out, _ = run(["--cache-dir", str(other), "cache", "import", str(archive)], capsys)
    assert code == 0 and "already present" in out

    code, out, _ = run(["--cache-dir", str(other), "cache", "clear", key], capsys)
    assert code == 0 and "removed 1 entry" in out
    code, _, err = run(["--cache-dir", str(other), "cache", "clear", key], capsys)
    assert code == ExitCode.ARTIFACT_CORRUPT and "no cache entry" in err


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda e: (e / "files/empty.txt").unlink(), "missing: files/empty.txt"),
        (lambda e: (e / "files/empty.txt").write_text("tampered"), "tampered"),
        (lambda e: (e / "files/planted.so").write_bytes(b"x"), "unexpected extra file"),
    ],
    ids=["missing", "tampered", "extra"],
)
def test_cache_ls_says_not_checked_unless_it_read_the_checksums(
    damage: Any,
    problem: str,
    cache: artifacts.ArtifactStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    damage(cache.path("existing"))
    code, out, _ = run(["cache", "ls"], capsys)
    row = next(line for line in out.splitlines() if line.startswith("existing"))
    assert code == 0 and row.rstrip().endswith("not checked") and " ok" not in row
    code, out, _ = run(["cache", "ls", "--verify"], capsys)
    row = next(line for line in out.splitlines() if line.startswith("existing"))
    assert code == 0 and "CORRUPT" in row and problem in row
    code, out, _ = run(["cache", "ls", "--json"], capsys)
    (entry,) = json.loads(out)
    assert entry["files_checked"] is False and entry["intact"] is None
    code, out, _ = run(["cache", "ls", "--json", "--verify"], capsys)
    (entry,) = json.loads(out)
    assert entry["files_checked"] is True and entry["intact"] is False
    assert entry["loadable_here"] is False and problem in entry["problem"]


def test_cache_verify_reports_tampering_and_incompatibility(
    tmp_path: Path, cache: artifacts.ArtifactStore, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(cache.path("foreign"), model=make_model(tmp_path / "m1"))
    rewrite_manifest(cache.path("foreign"), lambda d: d["pins"].update(torch="0.0.1"))
    code, out, _ = run(["cache", "verify", "foreign"], capsys)
    assert code == ExitCode.ARTIFACT_INCOMPATIBLE
    assert "INCOMPATIBLE" in out and "built for torch 0.0.1" in out
    code, out, _ = run(["cache", "ls"], capsys)
    assert "NOT LOADABLE: built for torch 0.0.1" in out

    with (cache.path("existing") / "files/inductor/kernels/k1.so").open("r+b") as fh:
        fh.truncate(10)
    code, out, _ = run(["cache", "verify"], capsys)
    assert code == ExitCode.ARTIFACT_CORRUPT
    assert "CORRUPT" in out and "truncated: files/inductor/kernels/k1.so (10 of 2004 bytes)" in out
    code, _, err = run(["cache", "export", "existing", str(tmp_path / "x.tar")], capsys)
    assert code == ExitCode.ARTIFACT_CORRUPT and "refusing to export" in err

    # verify suggests only what works: clear for the intact-but-incompatible entry, moving
    # it away by hand for the truncated one, which aot cannot prove it wrote
    code, out, _ = run(["cache", "verify"], capsys)
    assert "`aot cache clear foreign` removes it" in out
    assert "`aot cache clear existing`" not in out and "move it away yourself" in out
    code, out, err = run(["cache", "clear", "--invalid"], capsys)
    # until 2026-12 the truncated entry was cleared too; its bytes are no longer aot's
    assert code == ExitCode.CACHE_NOT_WRITABLE and "removed 1 entry" in out
    assert "refusing to delete" in err and "files/inductor/kernels/k1.so" in err
    assert cache.entry_keys() == ["existing"]


def test_cache_import_refusals_leave_the_cache_alone(
    tmp_path: Path, cache: artifacts.ArtifactStore, capsys: pytest.CaptureFixture[str]
) -> None:
    src = artifacts.ArtifactStore(tmp_path / "src")
    make_artifact(src.path("incoming"), model=make_model(tmp_path / "m2"))
    archive = tmp_path / "in.tar"
    artifacts.export_artifact(src.path("incoming"), archive)

    code, _, err = run(["cache", "import", str(archive), "--sha256", "ab" * 32], capsys)
    assert code == ExitCode.ARTIFACT_CORRUPT and "expected" in err

    rewrite_manifest(src.path("incoming"), lambda d: d.update(cpu_arch="sparc64"))
    artifacts.export_artifact(src.path("incoming"), archive, force=True)
    code, _, err = run(["cache", "import", str(archive)], capsys)
    assert code == ExitCode.ARTIFACT_INCOMPATIBLE and "built on a sparc64 CPU" in err

    (tmp_path / "junk.tar").write_bytes(b"\0garbage" * 100)
    code, _, err = run(["cache", "import", str(tmp_path / "junk.tar")], capsys)
    assert code == ExitCode.ARTIFACT_CORRUPT
    code, _, err = run(["cache", "import", str(tmp_path / "absent.tar")], capsys)
    assert code == ExitCode.ARTIFACT_CORRUPT and "no such file" in err
    assert_intact(cache)


def test_cache_clear_removes_leftovers_of_killed_writers(
    cache: artifacts.ArtifactStore, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = cache.entries_dir / ".existing.staging-99999999-deadbeef"
    (dead / "files").mkdir(parents=True)
    code, out, _ = run(["cache", "ls"], capsys)
    assert "1 leftover(s) of interrupted writes" in out
    code, out, _ = run(["cache", "clear", "--leftovers"], capsys)
    assert code == 0 and "1 leftover(s)" in out
    assert_intact(cache)


def test_interrupt_maps_to_130(
    cache: artifacts.ArtifactStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupted(path: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "verify", interrupted)
    code, _, err = run(["cache", "verify"], capsys)
    assert code == ExitCode.INTERRUPTED and "interrupted" in err


def test_full_disk_on_import_is_reported_and_cache_kept(tmp_path: Path) -> None:
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("needs `unshare -m` and tmpfs mounts (root in a private mount namespace)")
    src = artifacts.ArtifactStore(tmp_path / "src")
    big = {"blob.bin": os.urandom(2 << 20)}
    make_artifact(src.path("big"), model=make_model(tmp_path / "m"), files=big)
    archive = tmp_path / "big.tar"
    artifacts.export_artifact(src.path("big"), archive)
    mnt = tmp_path / "disk"
    mnt.mkdir()
    script = textwrap.dedent(
        f"""
        set -e
        mount -t tmpfs -o size=1m tmpfs {mnt}
        {sys.executable} -c "
        from pathlib import Path
        from aot_core import artifacts
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from artifact_support import make_artifact, make_model
        make_artifact(artifacts.ArtifactStore('{mnt}/cache').path('existing'),
                      model=make_model(Path('{tmp_path}/m3')))
        "
        set +e
        {sys.executable} -m aot_core.cli.app --cache-dir {mnt}/cache cache import {archive}
        echo "rc=$?"
        {sys.executable} -m aot_core.cli.app --cache-dir {mnt}/cache cache verify
        echo "rc=$?"
        """
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    assert f"rc={int(ExitCode.DISK_FULL)}" in proc.stdout, proc.stdout + proc.stderr
    assert "no space left on the device" in proc.stderr
    assert "rc=0" in proc.stdout and "existing" in proc.stdout and "ok (4 files" in proc.stdout


# --------------------------------------------------------------------------- bench plumbing


def test_bench_plot_without_matplotlib(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run(["bench", "--plot", str(tmp_path / "p.png")], capsys)
    assert code == ExitCode.MISSING_DEPENDENCY
    assert "pip install 'aot-core[plot]'" in err


def test_bench_json_into_missing_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(["bench", "--json", str(tmp_path / "no" / "such" / "r.json")], capsys)
    assert code == ExitCode.CACHE_NOT_WRITABLE and "does not exist" in err


def test_bench_without_backends(
    site: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "c"))
    code, _, err = run(["bench"], capsys)
    assert code == ExitCode.BACKEND_UNAVAILABLE
    assert "pip install aot-vllm" in err


def test_engine_output_during_compile_goes_to_stderr() -> None:
    code = textwrap.dedent(
        """
        import os, subprocess
        from aot_core.cli.app import stdout_to_stderr
        with stdout_to_stderr():
            os.write(1, b"engine log via fd 1\\n")
            print("python log via sys.stdout")
            subprocess.run(["echo", "engine child process log"], check=True)
        print("/path/to/result")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout == "/path/to/result\n"
    for line in ("engine log via fd 1", "python log via sys.stdout", "engine child process log"):
        assert line in proc.stderr
