"""Fixtures shared by aot-core's tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint, distributions
from pathlib import Path

import pytest
from aot_core import registry


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private site dir; only backends installed into it are visible to the registry.

    Tests install real distributions here (a ``.dist-info`` with ``entry_points.txt`` and
    the module it names), so discovery goes through ``importlib.metadata`` exactly as for
    aot-vllm and aot-legacy, while a developer's own installed backends stay out.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("AOT_BACKEND", raising=False)

    def _entry_points() -> list[EntryPoint]:
        return [
            ep
            for d in distributions(path=[str(site)])
            for ep in d.entry_points
            if ep.group == registry.ENTRY_POINT_GROUP
        ]

    monkeypatch.setattr(registry, "_entry_points", _entry_points)
    registry.refresh()  # discovery is cached per process; start from this site only
    yield site
    registry.refresh()
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(site)):
            del sys.modules[name]
