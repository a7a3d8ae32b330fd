"""``aot --cache-dir X bench`` writes everything under X, and checks X, not $HOME.

$HOME points below a regular file, so nothing can be created there, not even by root. The
first test needs no backend. The second runs the real bench workers with a backend-free
test double that, like aot-vllm's shared model-inspection results, keeps files under the
aot cache root it sees; what is under test is aot-core passing that root down. The same
run with the real legacy backend is in test_cli_e2e.py.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from aot_core.cli.app import ExitCode, main
from fake_backend import install_distribution

ECHO_BACKEND = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from aot_core.artifacts import default_cache_root
    from aot_core.compiler import Availability, CompiledModel, Compiler, Generation
    from aot_core.stats import OptimizationStats

    class _Echo(CompiledModel):
        def generate(self, prompts, params=None):
            n = params.max_new_tokens if params is not None else 4
            return [
                Generation(prompt_token_ids=tuple(p), token_ids=tuple(p[:1]) * n)
                for p in prompts
            ]
        @property
        def stats(self):
            return OptimizationStats(backend="echo", output_tokens_per_s=1.0, startup_s=0.1)
        def close(self):
            pass

    class Echo(Compiler):
        name = "echo"
        distribution = "aot-echo-test-backend"
        @classmethod
        def availability(cls):
            return Availability(usable=True)
        def _keep_machine_wide(self):
            shared = default_cache_root() / "shared" / "echo"
            shared.mkdir(parents=True, exist_ok=True)
            (shared / str(os.getpid())).write_text(os.environ.get("HOME", ""))
        def compile_model(self, model, spec=None):
            self._keep_machine_wide()
            return _Echo()
        def compile_model_aot(self, model, example_inputs, spec=None):
            spec = spec or self.spec
            self._keep_machine_wide()
            (Path(spec.cache_dir) / "kernel.bin").write_bytes(b"echo")
            return _Echo()
    """
)


@pytest.fixture
def no_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("HOME cannot be created below a regular file, even by root")
    home = blocker / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("AOT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return home


def test_bench_checks_and_fills_the_cache_dir_it_was_given(
    site: Path, no_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "x"
    code = main(["--cache-dir", str(cache), "bench"])
    err = capsys.readouterr().err
    # it gets as far as looking for a backend (there is none here), past every write
    assert code == ExitCode.BACKEND_UNAVAILABLE, err
    assert "cannot write" not in err and ".cache/aot" not in err
    (model,) = (cache / "models").iterdir()
    assert model.name.startswith("tiny-llama-") and (model / "config.json").is_file()
    assert not no_home.exists()


def test_bench_workers_and_backends_write_under_the_cache_dir(
    site: Path,
    no_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    install_distribution(
        site,
        dist="aot-echo-test-backend",
        version="0.0.1",
        module="aot_echo_test_backend",
        source=ECHO_BACKEND,
        entry_points={"echo": "aot_echo_test_backend:Echo"},
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    cache = tmp_path / "x"
    result = tmp_path / "bench.json"
    code = main(
        ["--cache-dir", str(cache), "bench", "--backend", "echo", "--repeats", "1",
         "--max-new-tokens", "2", "--json", str(result)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == ExitCode.OK, err
    data = json.loads(result.read_text())
    assert data["failures"] == []
    # every worker (cold, warm, eager) kept its machine-wide files under the cache dir
    assert len(list((cache / "shared" / "echo").iterdir())) == 3
    # the run's own work directory was a temporary one under it, and is gone
    assert list((cache / "tmp").iterdir()) == []
    assert not no_home.exists()
