"""Hostile input to the ``aot`` command: every failure gets its documented exit code.

Each case feeds the real command (in-process, as the console script runs it) input a
careless or hostile user might give: files that are not UTF-8, directories where files
are expected, FIFOs, symbolic-link loops, empty strings, absurdly long names and values,
archives with linked manifests. None may end in a traceback or exit 1 ("unexpected
internal error"); each must exit with the code ``aot --help`` documents for its class,
say what was wrong, and leave the cache as it was.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from aot_core import artifacts
from aot_core.cli.app import ExitCode, main
from aot_core.errors import ArtifactCorruptError
from artifact_support import make_artifact, make_model
from cli_support import aot, run_aot

Case = Callable[[Path, str], list[str]]


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _loop(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path.name)
    return path


def _compile(t: Path, *extra: str) -> list[str]:
    # the backend is never reached: every case fails on its input first
    return ["compile", str(make_model(t / "m")), "--backend", "vllm", *extra]


def _linked_manifest_archive(t: Path) -> Path:
    """An export whose manifest.json member is a symbolic link (the issue's case)."""
    src = artifacts.ArtifactStore(t / "src")
    make_artifact(src.path("a"), model=make_model(t / "m"))
    good = t / "good.tar"
    artifacts.export_artifact(src.path("a"), good)
    bad = t / "linked.tar"
    with tarfile.open(good) as tin, tarfile.open(bad, "w") as tout:
        for member in tin.getmembers():
            if member.name == artifacts.MANIFEST_NAME:
                link = tarfile.TarInfo(member.name)
                link.type = tarfile.SYMTYPE
                link.linkname = "/etc/passwd"
                tout.addfile(link)
            else:
                tout.addfile(member, tin.extractfile(member))
    return bad


def _nested_manifest_entry(t: Path, key: str) -> str:
    store = artifacts.ArtifactStore(t / "cache")
    make_artifact(store.path(key), model=make_model(t / "m"))
    (store.path(key) / artifacts.MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)
    return key


LONG = "x" * 5000

CASES: list[tuple[str, Case, ExitCode, str]] = [
    # spec files
    (
        "spec-not-utf8",
        lambda t, c: _compile(t, "--spec", str(_write(t / "s.toml", b"\xff\xfe mode"))),
        ExitCode.SPEC_ERROR,
        "is not UTF-8 text",
    ),
    (
        "spec-is-a-directory",
        lambda t, c: _compile(t, "--spec", str(_write(t / "spec.d" / "x", "").parent)),
        ExitCode.SPEC_ERROR,
        "is a directory",
    ),
    (
        "spec-is-a-fifo",
        lambda t, c: _compile(t, "--spec", str(_fifo(t / "s.toml"))),
        ExitCode.SPEC_ERROR,
        "not a regular file",
    ),
    (
        "spec-symlink-loop",
        lambda t, c: _compile(t, "--spec", str(_loop(t / "s.toml"))),
        ExitCode.SPEC_ERROR,
        "not a regular file",
    ),
    (
        "spec-integer-too-long",
        lambda t, c: _compile(t, "--spec", str(_write(t / "s.toml", "max_model_len = " + LONG))),
        ExitCode.SPEC_ERROR,
        "spec TOML is not valid",
    ),
    (
        "spec-json-integer-too-long",
        lambda t, c: _compile(
            t, "--spec", str(_write(t / "s.json", '{"max_model_len": 9' + LONG + "}"))
        ),
        ExitCode.SPEC_ERROR,
        "spec JSON is not valid",
    ),
    (
        "spec-absurd-max-model-len",
        lambda t, c: _compile(t, "--spec", str(_write(t / "s.toml", "max_model_len = 1000000000"))),
        ExitCode.SPEC_ERROR,
        "beyond any model's context",
    ),
    (
        "spec-empty-string",
        lambda t, c: _compile(t, "--spec", ""),
        ExitCode.USAGE,
        "must not be empty",
    ),
    # model directories
    (
        "model-path-too-long",
        lambda t, c: ["compile", str(t / LONG), "--backend", "vllm"],
        ExitCode.USAGE,
        "File name too long",
    ),
    (
        "model-empty-string",
        lambda t, c: ["compile", "", "--backend", "vllm"],
        ExitCode.USAGE,
        "must not be empty",
    ),
    (
        "model-config-integer-too-long",
        lambda t, c: [
            "compile",
            str(
                _write(t / "m" / "config.json", '{"architectures": [], "x": 9' + LONG + "}").parent
            ),
            "--backend",
            "vllm",
        ],
        ExitCode.NOT_A_CAUSAL_LM,
        "cannot be read as JSON",
    ),
    (
        "model-config-absurdly-nested",
        lambda t, c: [
            "compile",
            str(_write(t / "m" / "config.json", "[" * 100_000 + "]" * 100_000).parent),
            "--backend",
            "vllm",
        ],
        ExitCode.NOT_A_CAUSAL_LM,
        "cannot be read as JSON",
    ),
    (
        "backend-empty-string",
        lambda t, c: ["compile", str(make_model(t / "m")), "--backend", ""],
        ExitCode.USAGE,
        "must not be empty",
    ),
    # the cache directory
    (
        "cache-dir-empty-string",
        lambda t, c: ["--cache-dir", "", "cache", "ls"],
        ExitCode.USAGE,
        "must not be empty",
    ),
    (
        "cache-dir-is-a-file",
        lambda t, c: ["--cache-dir", str(_write(t / "f", "x")), "cache", "ls"],
        ExitCode.CACHE_NOT_WRITABLE,
        "is not a directory",
    ),
    (
        "cache-dir-too-long",
        lambda t, c: ["--cache-dir", str(t / LONG), "cache", "ls"],
        ExitCode.USAGE,
        "File name too long",
    ),
    (
        "cache-entry-manifest-absurdly-nested",
        lambda t, c: [
            "--cache-dir",
            str(t / "cache"),
            "cache",
            "verify",
            _nested_manifest_entry(t, "n"),
        ],
        ExitCode.ARTIFACT_CORRUPT,
        "CORRUPT",
    ),
    # export
    (
        "export-into-proc",
        lambda t, c: ["cache", "export", c, "/proc/x.tar"],
        ExitCode.CACHE_NOT_WRITABLE,
        "cannot write /proc/x.tar",
    ),
    (
        "export-name-too-long",
        lambda t, c: ["cache", "export", c, str(t / LONG)],
        ExitCode.USAGE,
        "File name too long",
    ),
    (
        "export-onto-a-fifo",
        lambda t, c: ["cache", "export", c, str(_fifo(t / "o.tar"))],
        ExitCode.CACHE_NOT_WRITABLE,
        "not a regular file",
    ),
    # import
    (
        "import-linked-manifest",
        lambda t, c: ["cache", "import", str(_linked_manifest_archive(t))],
        ExitCode.ARTIFACT_CORRUPT,
        "manifest.json is not a plain file",
    ),
    (
        "import-a-directory",
        lambda t, c: ["cache", "import", str(_write(t / "d" / "x", "").parent)],
        ExitCode.ARTIFACT_CORRUPT,
        "is not a regular file",
    ),
    (
        "import-a-fifo",
        lambda t, c: ["cache", "import", str(_fifo(t / "a.tar"))],
        ExitCode.ARTIFACT_CORRUPT,
        "is not a regular file",
    ),
    (
        "import-bad-sha256",
        lambda t, c: ["cache", "import", str(_write(t / "a.tar", "x")), "--sha256", "zz"],
        ExitCode.USAGE,
        "is not a sha256",
    ),
    # bench outputs are checked before minutes of measuring, not after
    (
        "bench-json-is-a-directory",
        lambda t, c: ["bench", "--json", str(_write(t / "d" / "x", "").parent)],
        ExitCode.CACHE_NOT_WRITABLE,
        "is not a regular file",
    ),
    (
        "bench-json-is-a-fifo",
        lambda t, c: ["bench", "--json", str(_fifo(t / "r.json"))],
        ExitCode.CACHE_NOT_WRITABLE,
        "is not a regular file",
    ),
    (
        "bench-json-into-proc",
        lambda t, c: ["bench", "--json", "/proc/r.json"],
        ExitCode.CACHE_NOT_WRITABLE,
        "cannot write",
    ),
    (
        "bench-work-dir-is-a-file",
        lambda t, c: ["bench", "--work-dir", str(_write(t / "w", "x"))],
        ExitCode.CACHE_NOT_WRITABLE,
        "is not a directory",
    ),
    (
        "bench-backend-empty-string",
        lambda t, c: ["bench", "--backend", ""],
        ExitCode.USAGE,
        "must not be empty",
    ),
]


@pytest.mark.parametrize(("name", "make", "code", "phrase"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input_gets_its_documented_exit_code(
    name: str,
    make: Case,
    code: ExitCode,
    phrase: str,
    *,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if "proc" in name and not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "cache"))
    store = artifacts.ArtifactStore()
    make_artifact(store.path("kept"), model=make_model(tmp_path / "m0"))
    before = sorted(p.name for p in store.entries_dir.iterdir() if not p.name.endswith(".lock"))
    argv = make(tmp_path / "in", "kept")
    ran = run_aot(argv)
    assert "Traceback" not in ran.err, ran.err
    assert ran.code == code, ran.err
    assert phrase in ran.out + ran.err, ran.err
    assert artifacts.verify(store.path("kept")).ok
    after = sorted(p.name for p in store.entries_dir.iterdir() if not p.name.endswith(".lock"))
    assert after == before or name == "cache-entry-manifest-absurdly-nested"


def test_every_exit_code_in_the_help_is_in_the_readme() -> None:
    from aot_core.cli import app as cli

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} | {cli.EXIT_CODE_HELP[code]} |" in readme, code


def test_archive_member_reading_survives_a_linked_manifest(tmp_path: Path) -> None:
    """The library call the command makes refuses it the same way (no KeyError)."""
    bad = _linked_manifest_archive(tmp_path)
    with pytest.raises(ArtifactCorruptError, match="not a plain file"):
        artifacts.import_artifact(bad, artifacts.ArtifactStore(tmp_path / "dst"))
    assert artifacts.ArtifactStore(tmp_path / "dst").entry_keys() == []
    with tarfile.open(bad) as tar:  # the archive really holds a link there
        assert tar.getmember(artifacts.MANIFEST_NAME).issym()


# ------------------------------------------------------------------ issue 23


def _aot(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed command's code path in a fresh process, with exactly ``env``'s paths."""
    base = {k: v for k, v in os.environ.items() if k not in artifacts.PATH_ENV_VARS}
    return aot(argv, {**base, **env}, timeout=120)


@pytest.mark.parametrize("variable", ["AOT_CACHE_DIR", "XDG_CACHE_HOME", "HOME"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_variable_is_refused_like_an_empty_cache_dir(
    variable: str, value: str, tmp_path: Path
) -> None:
    """Issue 23 item 2: `AOT_CACHE_DIR=$UNSET aot cache clear` cleared the real cache."""
    home = tmp_path / "home"
    real = artifacts.ArtifactStore(home / ".cache" / "aot")
    make_artifact(real.path("precious"), model=make_model(tmp_path / "m"))
    env = {"HOME": str(home), variable: value}
    for argv in (["cache", "clear"], ["cache", "ls"], ["cache", "verify"]):
        proc = _aot(argv, env)
        assert proc.returncode == ExitCode.USAGE, (argv, proc.stdout, proc.stderr)
        assert f"${variable} is set but empty" in proc.stderr and "Traceback" not in proc.stderr
    assert real.entry_keys() == ["precious"] and artifacts.verify(real.path("precious")).ok
    # the same refusal as the option's
    proc = _aot(["--cache-dir", "", "cache", "ls"], {"HOME": str(home)})
    assert proc.returncode == ExitCode.USAGE


@pytest.mark.parametrize("action", ["verify", "clear", "export"])
def test_an_invalid_key_is_a_bad_command_line(
    action: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 item 5: an invalid KEY exited 8 (artifact corrupt)."""
    store = artifacts.ArtifactStore(tmp_path / "cache")
    make_artifact(store.path("kept"), model=make_model(tmp_path / "m"))
    extra = [str(tmp_path / "x.tar")] if action == "export" else []
    for key in ("bad key!", "x" * 201, "-dash-first"):
        code = main(["--cache-dir", str(store.root), "cache", action, "--", key, *extra])
        err = capsys.readouterr().err
        assert code == ExitCode.USAGE, (key, err)
        assert "is not a valid entry name" in err
    assert store.entry_keys() == ["kept"]


def _safetensors(path: Path, *, cut: int = 0, header: bytes | None = None) -> Path:
    body = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    data = struct.pack("<Q", len(header if header is not None else body))
    data += (header if header is not None else body) + bytes(64)
    path.write_bytes(data[: len(data) - cut])
    return path


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "empty", "header-beyond-file", "padded"],
)
@pytest.mark.parametrize("backend", ["legacy", "vllm", "writer"])
def test_a_corrupt_safetensors_file_is_one_exit_code_for_every_backend(
    damage: str, backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 item 5: legacy exited 5 and vLLM 7 on the same damaged weights; the check
    now runs before any backend is looked up, so the backend named does not matter."""
    model = make_model(tmp_path / "m")
    weights = model / "model.safetensors"
    if damage == "truncated":
        _safetensors(weights, cut=20)
    elif damage == "garbage":
        weights.write_bytes(b"\x00\x01not a safetensors file" * 10)
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "header-beyond-file":
        weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    else:
        weights.write_bytes(_safetensors(weights).read_bytes() + b"junk")
    argv = ["--cache-dir", str(tmp_path / "c"), "compile", str(model), "--backend", backend]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == ExitCode.NOT_A_CAUSAL_LM, err
    assert "model.safetensors" in err and "cannot be loaded" in err and "Traceback" not in err


def test_intact_safetensors_headers_pass_the_weights_check(tmp_path: Path) -> None:
    from aot_core.weights_check import weights_problem

    model = make_model(tmp_path / "m")
    assert weights_problem(model) is None  # no weights: allowed (placeholder weights)
    _safetensors(model / "model.safetensors")
    assert weights_problem(model) is None
