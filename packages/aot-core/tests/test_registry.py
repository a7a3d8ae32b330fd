"""The backend registry, driven by real entry points from a test-only distribution.

Each test writes a small installed distribution (a ``.dist-info`` with
``entry_points.txt``) plus the module it points at, so discovery goes through
``importlib.metadata`` exactly as it does for aot-vllm and aot-legacy.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from aot_core import (
    BackendUnavailableError,
    NoBackendInstalledError,
    NoUsableBackendError,
    get_backend,
    list_backends,
    registry,
)
from fake_backend import install_distribution

BACKENDS_MODULE = textwrap.dedent(
    """
    from fake_backend import fake_backend

    Fast = fake_backend(
        "fast", priority=100, usable=False, reason="needs a GPU; none found", distribution="{dist}"
    )
    Slow = fake_backend("slow", priority=10, distribution="{dist}")
    SlowToo = fake_backend("slow", priority=10, distribution="{dist}")
    Other = fake_backend("other", priority=50, distribution="{dist}")
    Crashing = fake_backend(
        "crashing", priority=200, probe_error="probe exploded", distribution="{dist}"
    )
    NotACompiler = object()
    """
)

Installer = Callable[..., None]


@pytest.fixture
def install(site: Path) -> Installer:
    """Install test distributions into the private site dir the registry scans."""
    counter = iter(range(1000))

    def _install(entries: dict[str, str], *, dist: str | None = None) -> None:
        n = next(counter)
        dist = dist or f"aot-test-backends-{n}"
        module = f"aot_test_backends_{n}"
        install_distribution(
            site,
            dist=dist,
            version="1.2.3",
            module=module,
            source=BACKENDS_MODULE.format(dist=dist),
            entry_points={name: value.format(module=module) for name, value in entries.items()},
        )
        registry.refresh()  # discovery is cached per process

    return _install


def test_nothing_installed_says_what_to_install(install: Installer) -> None:
    with pytest.raises(NoBackendInstalledError) as info:
        get_backend()
    assert "pip install aot-vllm" in str(info.value)
    assert "pip install aot-legacy" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_installed_but_unusable_is_a_different_error(install: Installer) -> None:
    install({"fast": "{module}:Fast"})
    with pytest.raises(NoUsableBackendError) as info:
        get_backend()
    message = str(info.value)
    assert "none can run here" in message
    assert "fast: needs a GPU; none found" in message
    assert "pip install aot-vllm aot-legacy" in message


def test_listing_reports_version_and_reason_best_first(install: Installer) -> None:
    install(
        {"fast": "{module}:Fast", "slow": "{module}:Slow", "other": "{module}:Other"},
        dist="aot-test-dist",
    )
    infos = list_backends()
    assert [i.name for i in infos] == ["fast", "other", "slow"]
    assert {i.version for i in infos} == {"1.2.3"}
    assert infos[0].availability.usable is False
    assert infos[0].availability.reason == "needs a GPU; none found"


def test_priority_picks_best_usable(install: Installer) -> None:
    install({"fast": "{module}:Fast", "slow": "{module}:Slow", "other": "{module}:Other"})
    assert get_backend().name == "other"


def test_explicit_name_beats_env_beats_priority(
    install: Installer, monkeypatch: pytest.MonkeyPatch
) -> None:
    install({"slow": "{module}:Slow", "other": "{module}:Other"})
    monkeypatch.setenv("AOT_BACKEND", "slow")
    assert get_backend().name == "slow"
    assert get_backend("other").name == "other"


def test_unknown_or_unusable_name(install: Installer, monkeypatch: pytest.MonkeyPatch) -> None:
    install({"fast": "{module}:Fast", "slow": "{module}:Slow"})
    with pytest.raises(
        BackendUnavailableError,
        match=r"'vllm' \(requested\) is not installed; "
        r"`pip install aot-vllm`",
    ):
        get_backend("vllm")
    monkeypatch.setenv("AOT_BACKEND", "fast")
    with pytest.raises(NoUsableBackendError, match=r"named by \$AOT_BACKEND.*needs a GPU"):
        get_backend()


def test_broken_entry_points_warn_and_are_skipped(install: Installer) -> None:
    install(
        {
            "missing": "aot_no_such_module_anywhere:Thing",
            "notcls": "{module}:NotACompiler",
            "slow": "{module}:Slow",
        }
    )
    with pytest.warns(registry.BackendWarning) as record:
        found = registry.installed_backends()
    assert list(found) == ["slow"]
    messages = " ".join(str(w.message) for w in record)
    assert "'missing'" in messages and "failed to load" in messages
    assert "'notcls'" in messages and "not an aot_core.Compiler subclass" in messages


def test_duplicate_names_warn_and_keep_first(install: Installer) -> None:
    install({"slow": "{module}:Slow"}, dist="aot-test-a")
    install({"slow": "{module}:SlowToo"}, dist="aot-test-b")
    with pytest.warns(registry.BackendWarning, match="registered twice"):
        found = registry.installed_backends()
    assert list(found) == ["slow"]


def test_crashing_availability_probe_means_unusable(install: Installer) -> None:
    install({"crashing": "{module}:Crashing", "slow": "{module}:Slow"})
    infos = {i.name: i for i in list_backends()}
    assert infos["crashing"].availability.usable is False
    assert "probe exploded" in infos["crashing"].availability.reason
    assert get_backend().name == "slow"


def test_entry_point_name_must_match_the_class_name(install: Installer) -> None:
    install({"speedy": "{module}:Slow", "other": "{module}:Other"})
    with pytest.warns(registry.BackendWarning, match=r"'speedy'.*called 'slow'"):
        found = registry.installed_backends()
    assert list(found) == ["other"]


def test_discovery_is_cached_until_refreshed(install: Installer, site: Path) -> None:
    install({"slow": "{module}:Slow"})
    assert list(registry.installed_backends()) == ["slow"]
    install_distribution(
        site, dist="late", version="1.0", entry_points={"other": "aot_test_backends_0:Other"}
    )
    assert list(registry.installed_backends()) == ["slow"]  # the cached discovery
    registry.refresh()
    assert sorted(registry.installed_backends()) == ["other", "slow"]


def test_choose_prefers_then_falls_back_in_order(install: Installer) -> None:
    install({"fast": "{module}:Fast", "slow": "{module}:Slow", "other": "{module}:Other"})
    choice = registry.choose("fast", ["slow", "other"])
    assert (choice.name, choice.source, choice.fallback_from) == ("slow", "fallback", "fast")
    assert choice.passed_over == {"fast": "needs a GPU; none found"}
    assert registry.choose("other", ()).source == "preferred"
    assert registry.choose().name == "other"  # no preference: best priority that can run
    with pytest.raises(NoUsableBackendError) as info:
        registry.choose("fast", ())
    assert info.value.reasons == {"fast": "needs a GPU; none found"}


def test_deep_check_runs_once_and_only_when_asked(install: Installer, site: Path) -> None:
    module = site / "aot_test_deep.py"
    module.write_text(
        textwrap.dedent(
            """
            from fake_backend import fake_backend

            CALLS = []
            Deep = fake_backend(
                "deep", engine_reason="engine failed to import: boom", engine_calls=CALLS
            )
            """
        )
    )
    install({"deep": "aot_test_deep:Deep", "slow": "{module}:Slow"})
    import aot_test_deep  # type: ignore[import-not-found]

    assert registry.availability("deep").usable  # the cheap half alone
    assert aot_test_deep.CALLS == []
    choice = registry.choose("deep", deep=True)
    assert choice.name == "slow" and choice.passed_over["deep"] == "engine failed to import: boom"
    assert registry.availability("deep", deep=True).reason == "engine failed to import: boom"
    assert [i.availability.usable for i in registry.list_backends(deep=True)] == [True, False]
    assert aot_test_deep.CALLS == [1]  # cached for the process
    with pytest.raises(NoUsableBackendError, match="engine failed to import"):
        get_backend("deep", deep=True)
