"""Skip where a backend is not installed, fail where the session installed it.

A nox session that installs a backend names it in ``AOT_REQUIRE_BACKENDS`` (comma
separated): there, a backend that cannot run is a broken environment, and a test that
would skip for it fails instead, naming why. Run by hand without the variable, the same
tests skip as before.
"""

from __future__ import annotations

import os

import pytest
from aot_core.errors import BackendUnavailableError
from aot_core.registry import get_backend

REQUIRE_ENV = "AOT_REQUIRE_BACKENDS"


def required_backends() -> frozenset[str]:
    """The backends this session installed and must be able to run."""
    return frozenset(n.strip() for n in os.environ.get(REQUIRE_ENV, "").split(",") if n.strip())


def skip_or_fail(name: str, why: str) -> None:
    """Fail when ``name`` is required here, else skip; never returns."""
    if name in required_backends():
        pytest.fail(f"{REQUIRE_ENV} names {name}, but it is not usable: {why}", pytrace=False)
    pytest.skip(f"backend {name} not usable here: {why}", allow_module_level=True)


def require_usable(name: str) -> None:
    """Return when backend ``name`` can run here; else skip, or fail where required."""
    try:
        get_backend(name)
    except BackendUnavailableError as exc:
        skip_or_fail(name, str(exc))
