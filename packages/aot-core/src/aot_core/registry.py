"""The backend registry: discovers ``Compiler`` classes through the ``aot.backends``
entry-point group and chooses one by name, by ``AOT_BACKEND``, or by priority.

A backend package declares itself in its ``pyproject.toml``::

    [project.entry-points."aot.backends"]
    vllm = "aot_vllm.backend:VLLMNativeAOTCompiler"
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from aot_core.compiler import Availability, Compiler
from aot_core.errors import BackendUnavailableError, NoBackendInstalledError, NoUsableBackendError

ENTRY_POINT_GROUP = "aot.backends"
ENV_VAR = "AOT_BACKEND"

# Install hints for the backends this project ships, shown when nothing is installed.
KNOWN_DISTRIBUTIONS: dict[str, str] = {
    "vllm": "aot-vllm",
    "legacy": "aot-legacy",
}


class BackendWarning(UserWarning):
    """A backend entry point is broken or duplicated and was skipped."""


@dataclass(frozen=True, kw_only=True)
class BackendInfo:
    """One installed backend as the registry sees it."""

    name: str
    """Registry name."""

    compiler: type[Compiler]
    """The Compiler class."""

    version: str
    """Version of the distribution that provides it."""

    distribution: str
    """The distribution that provides it."""

    priority: int
    """Higher is preferred when no backend is named."""

    availability: Availability
    """Whether it can run here, with the reason when not."""


def _entry_points() -> list[EntryPoint]:
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _install_hint() -> str:
    names = " or ".join(f"`pip install {d}`" for d in KNOWN_DISTRIBUTIONS.values())
    return f"install a backend: {names}"


def installed_backends() -> dict[str, type[Compiler]]:
    """Load every registered backend class; broken and duplicate entries warn and are skipped."""
    found: dict[str, type[Compiler]] = {}
    origins: dict[str, str] = {}
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else "?"
        if ep.name in found:
            if origins[ep.name] == ep.value:
                continue  # the same distribution seen twice on sys.path
            warnings.warn(
                f"aot backend {ep.name!r} is registered twice ({origins[ep.name]} and "
                f"{ep.value} from {dist}); keeping the first. Uninstall one of them.",
                BackendWarning,
                stacklevel=2,
            )
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the registry
            warnings.warn(
                f"aot backend {ep.name!r} ({ep.value} from {dist}) failed to load and was "
                f"skipped: {type(exc).__name__}: {exc}",
                BackendWarning,
                stacklevel=2,
            )
            continue
        if not (isinstance(obj, type) and issubclass(obj, Compiler)):
            warnings.warn(
                f"aot backend {ep.name!r} ({ep.value} from {dist}) is not an "
                "aot_core.Compiler subclass and was skipped",
                BackendWarning,
                stacklevel=2,
            )
            continue
        found[ep.name] = obj
        origins[ep.name] = ep.value
    return found


def _availability(cls: type[Compiler]) -> Availability:
    try:
        return cls.availability()
    except Exception as exc:  # an availability probe that crashes means "not usable"
        return Availability(usable=False, reason=f"availability check failed: {exc}")


def list_backends() -> list[BackendInfo]:
    """Every installed backend with its version and availability, best first."""
    infos = [
        BackendInfo(
            name=name,
            compiler=cls,
            version=cls.version(),
            distribution=cls.distribution,
            priority=cls.priority,
            availability=_availability(cls),
        )
        for name, cls in installed_backends().items()
    ]
    return sorted(infos, key=lambda i: (-i.priority, i.name))


def get_backend(name: str | None = None, *, require_usable: bool = True) -> type[Compiler]:
    """Choose a backend class.

    ``name`` wins; otherwise ``$AOT_BACKEND``; otherwise the usable backend with the
    highest priority. Raises ``NoBackendInstalledError`` when nothing is installed and
    ``NoUsableBackendError`` when backends are installed but none can run here.
    """
    requested = name or os.environ.get(ENV_VAR) or None
    infos = list_backends()
    if not infos:
        raise NoBackendInstalledError(
            f"no aot backend is installed (entry-point group {ENTRY_POINT_GROUP!r} is empty); "
            + _install_hint()
        )
    if requested is not None:
        source = "requested" if name else f"named by ${ENV_VAR}"
        by_name = {i.name: i for i in infos}
        if requested not in by_name:
            dist = KNOWN_DISTRIBUTIONS.get(requested)
            hint = f"; `pip install {dist}`" if dist else ""
            raise BackendUnavailableError(
                f"aot backend {requested!r} ({source}) is not installed{hint}. "
                f"Installed: {', '.join(sorted(by_name))}"
            )
        info = by_name[requested]
        if require_usable and not info.availability.usable:
            raise NoUsableBackendError(
                f"aot backend {requested!r} ({source}) cannot run here: {info.availability.reason}"
            )
        return info.compiler
    usable = [i for i in infos if i.availability.usable]
    if not usable:
        if not require_usable:
            return infos[0].compiler
        reasons = "; ".join(f"{i.name}: {i.availability.reason}" for i in infos)
        missing = [d for n, d in KNOWN_DISTRIBUTIONS.items() if n not in {i.name for i in infos}]
        hint = f" Or install another backend: pip install {' '.join(missing)}." if missing else ""
        raise NoUsableBackendError(
            f"aot backends are installed but none can run here ({reasons}).{hint}"
        )
    return usable[0].compiler


def create_compiler(name: str | None = None, **kwargs: object) -> Compiler:
    """Instantiate the backend ``get_backend(name)`` chooses."""
    return get_backend(name)(**kwargs)  # type: ignore[arg-type]
