"""What the nox `compat` session installed, and so what its tests must see.

Each combination names the backends it installed (``AOT_REQUIRE_BACKENDS``, comma
separated) and the backend the old API must choose there (``AOT_COMPAT_EXPECT_CHOICE``:
"vllm", "legacy", or "none" when it must raise). The tests assert those rather than
deciding from whatever is found installed, so a backend that stopped working fails its
combination instead of turning it into another combination's skips. Run by hand without
the variables, the expectations come from what is installed, as before.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ENV = "AOT_REQUIRE_BACKENDS"
CHOICE_ENV = "AOT_COMPAT_EXPECT_CHOICE"


def required_backends() -> frozenset[str]:
    """The backends this session installed and must be able to run."""
    return frozenset(n.strip() for n in os.environ.get(REQUIRE_ENV, "").split(",") if n.strip())


def expected_choice() -> str | None:
    """The backend the old API must choose ("none": it must raise); None when not given."""
    return os.environ.get(CHOICE_ENV) or None


def skip_or_fail(name: str, why: str) -> None:
    """Fail when backend ``name`` is required here, else skip with ``why``; never returns."""
    if name in required_backends():
        pytest.fail(f"{REQUIRE_ENV} names {name}, but it is not usable: {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)
