"""The backend registry: discovers ``Compiler`` classes through the ``aot.backends``
entry-point group and is the one place that chooses among them.

A backend package declares itself in its ``pyproject.toml``, under the same name as its
class's ``Compiler.name``::

    [project.entry-points."aot.backends"]
    vllm = "aot_vllm.backend:VllmBackend"

Discovery runs once per process and is cached (``refresh()`` forgets it, and every
availability verdict with it). "Usable" has one meaning everywhere: the backend's cheap
``availability()`` passes and, when ``deep=True``, so does its ``check_engine()`` (the
engine imports and has a device here); deep verdicts are cached per process too.
``choose(preferred, fallback)`` applies it: ``get_backend``, ``aot backends``, ``aot bench``
and aot-compat all choose through it. Nothing installed (``NoBackendInstalledError``) and
nothing usable (``NoUsableBackendError``) are different errors.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType

from aot_core.compiler import Availability, Compiler
from aot_core.errors import BackendUnavailableError, NoBackendInstalledError, NoUsableBackendError

ENTRY_POINT_GROUP = "aot.backends"
ENV_VAR = "AOT_BACKEND"

KNOWN_DISTRIBUTIONS: Mapping[str, str] = MappingProxyType(
    {"vllm": "aot-vllm", "legacy": "aot-legacy"}
)
"""Install hints only: what to ``pip install`` for the backends this project ships, named
in messages when they are missing. No choice depends on it."""


class BackendWarning(UserWarning):
    """A backend entry point is broken, misnamed or duplicated and was skipped."""


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

    description: str = ""
    """What it compiles with (``Compiler.description``)."""


@dataclass(frozen=True, kw_only=True)
class Choice:
    """The backend ``choose`` picked, and what it passed over on the way."""

    name: str
    """Registry name of the chosen backend."""

    compiler: type[Compiler]
    """Its Compiler class."""

    source: str
    """Why this one: "requested", "named by $AOT_BACKEND", "preferred", "priority" or
    "fallback"."""

    passed_over: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Candidates tried before it, each with why it could not be used, in order."""

    @property
    def fallback_from(self) -> str | None:
        """The preferred backend that could not be used, when this is a fallback."""
        return next(iter(self.passed_over), None) if self.source == "fallback" else None


class _Cache:
    """What this process has learned: the discovered backends and availability verdicts."""

    def __init__(self) -> None:
        self.backends: dict[str, type[Compiler]] | None = None
        self.verdicts: dict[tuple[type[Compiler], bool], Availability] = {}


_cache = _Cache()


def _entry_points() -> list[EntryPoint]:
    return list(entry_points(group=ENTRY_POINT_GROUP))


def refresh() -> None:
    """Forget discovered backends and every availability verdict (after installing one)."""
    _cache.backends = None
    _cache.verdicts.clear()


def install_hint(names: Sequence[str] | None = None) -> str:
    """What to pip install to get a backend (the shipped ones, or ``names``)."""
    dists = [
        KNOWN_DISTRIBUTIONS[n] for n in (names or KNOWN_DISTRIBUTIONS) if n in KNOWN_DISTRIBUTIONS
    ]
    return "install a backend: " + " or ".join(f"`pip install {d}`" for d in dists)


def _not_installed(name: str) -> str:
    dist = KNOWN_DISTRIBUTIONS.get(name)
    if dist is None:
        return f"no installed package provides a backend named {name!r}"
    return f"{dist} is not installed (pip install {dist})"


def _load(ep: EntryPoint) -> type[Compiler] | None:
    """The class an entry point names, or None (with a warning) when it is unusable."""
    where = f"{ep.value} from {ep.dist.name if ep.dist is not None else '?'}"
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not break the registry
        problem = f"failed to load and was skipped: {type(exc).__name__}: {exc}"
    else:
        if not (isinstance(obj, type) and issubclass(obj, Compiler)):
            problem = "is not an aot_core.Compiler subclass and was skipped"
        elif getattr(obj, "name", None) != ep.name:
            problem = (
                f"names a backend called {getattr(obj, 'name', None)!r}; the entry point must "
                "use the class's Compiler.name, so it was skipped"
            )
        else:
            return obj
    warnings.warn(f"aot backend {ep.name!r} ({where}) {problem}", BackendWarning, stacklevel=4)
    return None


def installed_backends() -> dict[str, type[Compiler]]:
    """Every registered backend class by name (discovered once, then cached).

    Broken, misnamed and duplicate entries warn with ``BackendWarning`` and are skipped.
    """
    if _cache.backends is None:
        found: dict[str, type[Compiler]] = {}
        origins: dict[str, str] = {}
        for ep in _entry_points():
            if ep.name in found:
                if origins[ep.name] != ep.value:  # else: one distribution seen twice
                    warnings.warn(
                        f"aot backend {ep.name!r} is registered twice ({origins[ep.name]} and "
                        f"{ep.value}); keeping the first. Uninstall one of them.",
                        BackendWarning,
                        stacklevel=2,
                    )
                continue
            cls = _load(ep)
            if cls is not None:
                found[ep.name] = cls
                origins[ep.name] = ep.value
        _cache.backends = found
    return dict(_cache.backends)


def availability(backend: str | type[Compiler], *, deep: bool = False) -> Availability:
    """Whether ``backend`` can run here: its cheap check, then (``deep``) its engine check.

    Verdicts are cached per process; a check that crashes means "not usable", with why.
    """
    cls = installed_backends().get(backend) if isinstance(backend, str) else backend
    if cls is None:
        return Availability(usable=False, reason=_not_installed(str(backend)))
    for step, is_deep in (("availability", False), ("check_engine", True)):
        if is_deep and not deep:
            break
        verdict = _cache.verdicts.get((cls, is_deep))
        if verdict is None:
            try:
                verdict = getattr(cls, step)()
            except Exception as exc:  # a probe that crashes means "not usable"
                verdict = Availability(
                    usable=False, reason=f"{step} check failed: {type(exc).__name__}: {exc}"
                )
            _cache.verdicts[(cls, is_deep)] = verdict
        if not verdict.usable:
            return verdict
    return Availability(usable=True)


def list_backends(*, deep: bool = False) -> list[BackendInfo]:
    """Every installed backend with its version and availability, best first."""
    infos = [
        BackendInfo(
            name=name,
            compiler=cls,
            version=cls.version(),
            distribution=cls.distribution,
            priority=cls.priority,
            availability=availability(cls, deep=deep),
            description=cls.description,
        )
        for name, cls in installed_backends().items()
    ]
    return sorted(infos, key=lambda i: (-i.priority, i.name))


def requested_backend() -> str | None:
    """The backend ``$AOT_BACKEND`` names, or None."""
    return os.environ.get(ENV_VAR, "").strip() or None


def by_priority() -> list[str]:
    """Names of the installed backends, best priority first."""
    found = installed_backends()
    return sorted(found, key=lambda n: (-found[n].priority, n))


def choose(
    preferred: str | None = None,
    fallback: Sequence[str] | None = None,
    *,
    deep: bool = False,
    honour_env: bool = False,
    label: str | None = None,
) -> Choice:
    """Choose a usable backend: ``preferred`` if it can run here, else the first of
    ``fallback`` that can (None: every installed backend, best priority first; ``()``: no
    fallback). With ``honour_env``, a backend named by ``$AOT_BACKEND`` replaces both and
    must be usable. ``label`` says how ``preferred`` was named (default "preferred"); it
    becomes the choice's ``source`` and appears in messages.

    Raises ``NoBackendInstalledError`` when nothing is installed, ``BackendUnavailableError``
    when a backend named with no fallback is not installed, else ``NoUsableBackendError``;
    each carries ``reasons`` (candidate -> why not) and says what to pip install.
    """
    named = requested_backend() if honour_env else None
    if named is not None:
        preferred, fallback, label = named, (), f"named by ${ENV_VAR}"
    found = installed_backends()
    order = list(
        dict.fromkeys(
            [
                *([preferred] if preferred is not None else []),
                *(by_priority() if fallback is None else fallback),
            ]
        )
    )
    reasons: dict[str, str] = {}
    for name in order:
        verdict = availability(name, deep=deep)
        if verdict.usable:
            if name == preferred:
                source = label or "preferred"
            else:
                source = "fallback" if preferred is not None else "priority"
            return Choice(
                name=name,
                compiler=found[name],
                source=source,
                passed_over=MappingProxyType(reasons),
            )
        reasons[name] = verdict.reason or "its availability check failed without a reason"
    alone = fallback is not None and not fallback
    raise _no_choice(found, order, reasons, preferred=preferred, alone=alone, label=label)


def _no_choice(
    found: Mapping[str, type[Compiler]],
    order: Sequence[str],
    reasons: dict[str, str],
    *,
    preferred: str | None,
    alone: bool,
    label: str | None,
) -> BackendUnavailableError:
    label = label or "preferred"
    if not found:
        return NoBackendInstalledError(
            f"no aot backend is installed (entry-point group {ENTRY_POINT_GROUP!r} is empty); "
            + install_hint(),
            reasons=reasons,
        )
    if preferred is not None and alone:
        if preferred not in found:
            dist = KNOWN_DISTRIBUTIONS.get(preferred)
            hint = f"; `pip install {dist}`" if dist else ""
            return BackendUnavailableError(
                f"aot backend {preferred!r} ({label}) is not installed{hint}. "
                f"Installed: {', '.join(sorted(found))}",
                reasons=reasons,
            )
        return NoUsableBackendError(
            f"aot backend {preferred!r} ({label}) cannot run here: {reasons[preferred]}",
            reasons=reasons,
        )
    summary = "; ".join(f"{n}: {r}" for n, r in reasons.items())
    missing = [d for n, d in KNOWN_DISTRIBUTIONS.items() if n not in found]
    hint = f" Or install another backend: pip install {' '.join(missing)}." if missing else ""
    error = NoUsableBackendError if any(n in found for n in order) else NoBackendInstalledError
    return error(
        f"aot backends are installed but none can run here ({summary}).{hint}", reasons=reasons
    )


def get_backend(
    name: str | None = None, *, require_usable: bool = True, deep: bool = False
) -> type[Compiler]:
    """Choose a backend class: ``name`` wins; otherwise ``$AOT_BACKEND``; otherwise the
    usable backend with the highest priority (``choose``). ``deep`` adds the engine check.

    With ``require_usable=False`` an installed backend is returned even when it cannot run
    here (for listing, or to let it report its own error).
    """
    try:
        if name:
            return choose(name, (), deep=deep, label="requested").compiler
        return choose(None, None, deep=deep, honour_env=True).compiler
    except NoUsableBackendError:
        if require_usable:
            raise
        found = installed_backends()
        wanted = name or requested_backend()
        if wanted is not None:
            return found[wanted]
        return found[by_priority()[0]]


def create_compiler(name: str | None = None, **kwargs: object) -> Compiler:
    """Instantiate the backend ``get_backend(name)`` chooses."""
    return get_backend(name)(**kwargs)  # type: ignore[arg-type]
