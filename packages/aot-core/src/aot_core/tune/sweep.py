"""What ``aot tune`` tries: the knobs, their values, and the trials they expand to.

Knob values come from ``--knob name=v1,v2`` (repeatable), a ``--sweep`` TOML file (one key
per knob, a list of values), or the defaults. Which spec fields a backend acts on is the
backend's own answer (``Compiler.tunable``); a knob a backend ignores is not swept for it.
A compiled configuration is two trials, cold (compile into a fresh cache) then warm
(start from what the cold one wrote); an eager one is one trial.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Any

from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

MODES: tuple[str, ...] = ("eager", "compiled")
"""``mode`` knob values: no compilation, or compiled (measured cold, then warm)."""

PHASES: Mapping[str, tuple[str, ...]] = {"eager": ("eager",), "compiled": ("cold", "warm")}
"""The trials one configuration of each mode runs, in order."""

SPEC_KNOBS: tuple[str, ...] = ("dtype", "max_num_seqs", "max_num_batched_tokens")
"""Knobs that are spec fields; a backend sweeps those in its ``Compiler.tunable``."""

KNOBS: tuple[str, ...] = ("backend", "mode", *SPEC_KNOBS)
"""Every knob ``--knob`` and ``--sweep`` accept."""

_NONE_WORDS = ("default", "none", "auto")


class KnobError(ValueError):
    """A knob or one of its values is not accepted; the message says what is."""


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """One configuration: a backend and a value for every knob."""

    backend: str
    """Registry name of the backend."""

    mode: str
    """"eager" or "compiled"."""

    dtype: str
    """float32, bfloat16 or float16."""

    max_num_seqs: int | None = None
    """Most sequences decoded at once (the batch size); None: the backend's default."""

    max_num_batched_tokens: int | None = None
    """Chunked prefill's token budget per step; None: the backend's default."""

    def spec(self, base: CompileSpec) -> CompileSpec:
        """``base`` with this configuration's values (a compiled one keeps base's mode)."""
        mode = base.compile_mode if base.compiles else "default"
        changes: dict[str, Any] = {
            "compile_mode": "none" if self.mode == "eager" else mode,
            "dtype": self.dtype,
        }
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        return base.replace(**changes)

    def setup(self) -> tuple[Any, ...]:
        """Everything but the mode: eager and compiled runs of one setup are compared."""
        return (self.backend, self.dtype, self.max_num_seqs, self.max_num_batched_tokens)

    def label(self) -> str:
        """Short text for tables and progress lines."""
        parts = [self.backend, self.dtype]
        if self.max_num_seqs is not None:
            parts.append(f"seqs {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None:
            parts.append(f"budget {self.max_num_batched_tokens}")
        return " ".join(parts)


@dataclass(frozen=True, kw_only=True)
class Trial:
    """One fresh-process run of a configuration."""

    config: TrialConfig
    """The configuration."""

    phase: str
    """"eager", "cold" (compiles into a fresh cache) or "warm" (starts from the cold's)."""

    def identity(self) -> dict[str, Any]:
        """What the trial is, as JSON (its results key adds model, workload and versions)."""
        return {**asdict(self.config), "phase": self.phase}

    def key(self, context: Mapping[str, Any]) -> str:
        """The results key: this trial in ``context`` (model, workload, versions). Of
        ``context["backends"]`` only this trial's backend counts, so a sweep of other
        backends (or an upgrade of one) keeps this trial's result."""
        mine = {k: v for k, v in context.items() if k != "backends"}
        mine["backend_versions"] = context.get("backends", {}).get(self.config.backend)
        text = json.dumps({"trial": self.identity(), **mine}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def parse_knob(text: str) -> tuple[str, tuple[Any, ...]]:
    """``name=v1,v2`` -> (name, values), checked; a ``KnobError`` says what is wrong."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep:
        raise KnobError(f"--knob {text!r}: write name=value[,value...], e.g. dtype=float32")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    return name, knob_values(name, values)


def knob_values(name: str, values: Sequence[Any]) -> tuple[Any, ...]:
    """``values`` of knob ``name``, each checked and in its canonical form."""
    if name not in KNOBS:
        close = difflib.get_close_matches(name, KNOBS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KnobError(f"unknown knob {name!r}{hint}; aot tune knows {', '.join(KNOBS)}")
    if not values:
        raise KnobError(f"knob {name!r} has no values: the sweep would be empty; give at least one")
    out = tuple(dict.fromkeys(_value(name, v) for v in values))
    return out


def _value(name: str, value: Any) -> Any:
    if name == "backend":
        if not isinstance(value, str) or not value.strip():
            raise KnobError(f"backend: {value!r} is not a backend name (see `aot backends`)")
        return value.strip()
    if name == "mode":
        if value not in MODES:
            raise KnobError(f"mode: {value!r} is not one of {', '.join(MODES)}")
        return value
    if name == "dtype":
        try:
            dtype = CompileSpec(dtype=value).dtype if isinstance(value, str) else None
        except SpecError:
            dtype = None
        if dtype in (None, "auto"):
            raise KnobError(
                f"dtype: {value!r} is not float32, bfloat16 or float16 (tune measures a "
                "named dtype, so its parity can be reported)"
            )
        return dtype
    return _size(name, value)


def _size(name: str, value: Any) -> int | None:
    if isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
        return None  # the backend's own default, measured as one value
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < 1:
        raise KnobError(f"{name}: {value!r} is not a whole number >= 1 (or 'default')")
    return number


def load_sweep_file(path: Path) -> dict[str, tuple[Any, ...]]:
    """The knobs of a ``--sweep`` TOML file (``name = [values]``); its errors are
    ``SpecError``s naming the key and line, as for a spec file."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"--sweep {path}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"--sweep {path}: not valid TOML: {exc}") from exc
    out: dict[str, tuple[Any, ...]] = {}
    for name, raw in data.get("sweep", data).items():
        values = list(raw) if isinstance(raw, list) else [raw]
        try:
            out[name] = knob_values(name, values)
        except KnobError as exc:
            raise SpecError(
                f"--sweep {path}: {exc}", field=name, line=_line_of(text, name)
            ) from None
    if not out:
        raise SpecError(f"--sweep {path}: names no knob, so the sweep would be empty")
    return out


def _line_of(text: str, key: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(f"{key} ") or line.strip().startswith(f"{key}="):
            return number
    return None


def expand(
    chosen: Mapping[str, tuple[Any, ...]],
    *,
    defaults: Mapping[str, tuple[Any, ...]],
    tunable: Mapping[str, Iterable[str]],
) -> tuple[list[Trial], list[str]]:
    """Every trial of the sweep, and notes on knobs a backend does not act on.

    ``chosen``: the user's knobs; ``defaults``: every knob's values otherwise;
    ``tunable``: per backend, the spec fields it acts on (``Compiler.tunable``).
    """
    values = {name: chosen.get(name, defaults[name]) for name in KNOBS}
    trials: list[Trial] = []
    notes: list[str] = []
    for backend in values["backend"]:
        acts_on = set(tunable.get(backend, ()))
        per_knob = []
        for name in SPEC_KNOBS:
            if name == "dtype" or name in acts_on:
                per_knob.append(values[name])
                continue
            per_knob.append((None,))
            if name in chosen and chosen[name] != (None,):
                notes.append(f"{name} is not swept for {backend}: that backend does not act on it")
        for dtype, seqs, budget in product(*per_knob):
            for mode in values["mode"]:
                config = TrialConfig(
                    backend=backend,
                    mode=mode,
                    dtype=dtype,
                    max_num_seqs=seqs,
                    max_num_batched_tokens=budget,
                )
                trials += [Trial(config=config, phase=p) for p in PHASES[mode]]
    return trials, notes
