"""One configurable fake backend for tests of backend discovery and choice.

A fake backend only for registry logic (the developers' guide): it says whether it can run
and compiles nothing. Test distributions name classes made here in their entry points, so
discovery still goes through ``importlib.metadata`` as it does for the real backends.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aot_core.compiler import Availability, Compiler


def fake_backend(
    name: str,
    *,
    priority: int = 0,
    usable: bool = True,
    reason: str = "",
    probe_error: str | None = None,
    engine_reason: str | None = None,
    engine_calls: list[int] | None = None,
    pins: dict[str, str | None] | None = None,
    distribution: str = "",
    description: str = "",
    double: str = "registry test double",
) -> type[Compiler]:
    """A ``Compiler`` subclass registered as ``name`` that compiles nothing.

    ``usable``/``reason``: what ``availability`` says; ``probe_error``: ``availability``
    raises ``RuntimeError`` with it instead; ``engine_reason``: ``check_engine`` fails with
    it (each call appended to ``engine_calls``); ``pins``: what ``pins`` returns;
    ``double``: who refuses to compile, in the error a compile would raise.
    """

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError(f"{double}: compiles nothing")

    def availability(cls: type[Compiler]) -> Availability:
        if probe_error is not None:
            raise RuntimeError(probe_error)
        return Availability(usable=usable, reason=reason)

    def check_engine(cls: type[Compiler]) -> Availability:
        if engine_calls is not None:
            engine_calls.append(1)
        if engine_reason is None:
            return Availability(usable=True)
        return Availability(usable=False, reason=engine_reason)

    def pinned(cls: type[Compiler]) -> dict[str, str | None]:
        return dict(pins or {})

    namespace = {
        "name": name,
        "priority": priority,
        "distribution": distribution,
        "description": description,
        "compile_model": refuse,
        "compile_model_aot": refuse,
        "availability": classmethod(availability),
        "check_engine": classmethod(check_engine),
        "pins": classmethod(pinned),
    }
    return type(f"Fake_{name}", (Compiler,), namespace)


CLI_TEST_BACKENDS = textwrap.dedent(
    """
    from fake_backend import fake_backend

    DIST = "aot-cli-test-backends"
    DOUBLE = "CLI test double: must never be asked to compile"
    Ready = fake_backend("ready", distribution=DIST, double=DOUBLE)
    NeedsGpu = fake_backend(
        "needsgpu",
        priority=5,
        usable=False,
        reason="needs a CUDA device; none found",
        distribution=DIST,
        double=DOUBLE,
    )
    BrokenEngine = fake_backend(
        "brokenengine",
        description="installed, but its engine fails on import",
        engine_reason="engine failed to import: ABI mismatch",
        distribution=DIST,
        double=DOUBLE,
    )
    """
)
"""The module the CLI tests install as ``aot_cli_test_backends``: a ready backend, one that
needs a GPU, and one whose engine fails on import."""


def install_distribution(
    site: Path,
    *,
    dist: str,
    version: str,
    entry_points: Mapping[str, str],
    module: str | None = None,
    source: str = "",
) -> None:
    """Install a real test distribution into ``site`` as pip lays one out: ``module``.py
    holding ``source`` (when ``module`` is given) and ``dist``'s ``.dist-info``, whose
    ``aot.backends`` entry points are ``entry_points`` (name -> "module:Class")."""
    if module is not None:
        (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text("[aot.backends]\n" + lines)


def install_cli_test_backends(site: Path, *classes: str) -> None:
    """Install ``CLI_TEST_BACKENDS`` into ``site`` as the distribution aot-cli-test-backends,
    registering each of ``classes`` ("Ready", "NeedsGpu", ...) under its lower-cased name."""
    install_distribution(
        site,
        dist="aot-cli-test-backends",
        version="0.0.7",
        module="aot_cli_test_backends",
        source=CLI_TEST_BACKENDS,
        entry_points={cls.lower(): f"aot_cli_test_backends:{cls}" for cls in classes},
    )
