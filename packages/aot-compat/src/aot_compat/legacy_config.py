"""Translate the old dict-style configuration (and old constructor keywords) to a CompileSpec.

Old callers passed a loose dict (``{"tensor_parallel_size": 1, "max_seq_len_to_capture":
8192, ...}``) or a model-config object, plus keywords such as ``batch_sizes`` and
``compilation_level``. Every key ends in exactly one of four places:

* a ``CompileSpec`` field (renamed where the old name differs);
* ``backend_options`` of the backend that understands it, where that backend's options
  class says (``Compiler.options_class.migrate``: ``gpu_memory_utilization`` for vLLM), or
  a ``LegacyConfigWarning`` when the chosen backend has no such setting. The backends'
  tables are the only lists of such keys: they are read from the installed backends
  through the registry, so a key added to a table reaches the old API with no second
  list here;
* a ``LegacyConfigWarning`` naming a key whose feature is gone (``max_seq_len_to_capture``,
  removed from vLLM in 0.11.0), so nothing is dropped without a word;
* for a key no installed backend understands, an ``UnknownConfigKeyWarning`` that names it
  (with a did-you-mean, and the backends this package can run on that are not installed,
  whose setting it may be) and the compile goes on, as old scripts that carried such keys
  did; with ``strict=True`` (or ``AOT_COMPAT_STRICT=1``) a ``LegacyConfigError`` instead.
  A value a known key cannot take is always a ``LegacyConfigError``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from aot_core import registry
from aot_core.errors import SpecError
from aot_core.options import OptionPath
from aot_core.spec import CompileSpec

from aot_compat.errors import LegacyConfigError, LegacyConfigWarning, UnknownConfigKeyWarning

STRICT_ENV = "AOT_COMPAT_STRICT"
"""Environment variable that makes unknown old config keys an error (``1``) when the caller
did not pass ``strict=``."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")

# Keys whose feature no longer exists anywhere, with the reason given in the warning.
OBSOLETE_KEYS: dict[str, str] = {
    "max_seq_len_to_capture": (
        "vLLM removed it in 0.11.0; CUDA graphs are now captured per batch size "
        "(set cuda_graph_sizes, or batch_sizes)"
    ),
    "max_compilation_time": "aot backends have no compile-time limit",
    "warmup_iterations": "warm-up runs are chosen by the backend",
    "disable_chunked_mm_input": "it concerns multimodal inputs, which aot does not compile",
    "auto_detect_threshold": (
        "the old threshold guess is replaced by aot_vllm's chunked-prefill planner"
    ),
    "size_gb": "the old size limit on AOT compilation is gone; every size is attempted",
    "enable_advanced_fusion": "fusion passes are chosen by the backend's compile mode",
}

# Keys that identify the model rather than configure compilation.
MODEL_ID_KEYS = ("model_id", "model_name", "model_path", "name")

TOKENIZER_KEY = "tokenizer"
"""The old config key that carries the model's tokenizer object (saved with an in-memory
model on the vLLM path, used for text prompts on the legacy path)."""

_SPEC_FIELDS = {f.name for f in dataclasses.fields(CompileSpec)} - {"backend_options"}

_MODE_NAMES: dict[str, tuple[str, bool | None]] = {
    # old torch.compile / aot mode name -> (compile_mode, cuda_graphs or None to keep)
    "default": ("default", None),
    "max-autotune": ("max-autotune", None),
    "max-autotune-no-cudagraphs": ("max-autotune", False),
    # torch's "reduce-overhead" is torch.compile plus CUDA graphs
    "reduce-overhead": ("default", True),
    "none": ("none", None),
    "eager": ("none", None),
}
# The old vLLM wrapper's `mode` argument defaulted to "eval" and was never read.
_NO_OP_MODES = ("eval", "", None)


@dataclass(frozen=True, kw_only=True)
class LegacyTranslation:
    """An old configuration translated: the spec it gives and what else was learned."""

    spec: CompileSpec
    """The CompileSpec the old settings amount to."""

    model_id: str | None = None
    """The model name/id the old config carried, if any (used for old get_model_info)."""

    tokenizer: Any = None
    """The tokenizer object the old config carried (``tokenizer``), handed to the backend
    with the model (``aot_core.models.cache.ModelWithTokenizer``), or None."""

    notes: tuple[str, ...] = ()
    """Every warning issued while translating, in order."""


@dataclass(kw_only=True)
class _Collector:
    """Accumulates translated settings and remembers which old key set each field."""

    backend: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    strict: bool = False
    model_id: str | None = None
    tokenizer: Any = None
    notes: list[str] = field(default_factory=list)
    categories: list[type[Warning]] = field(default_factory=list)

    def set(self, name: str, value: Any, key: str) -> None:
        if name in self.fields and self.fields[name] != value:
            raise LegacyConfigError(
                f"config keys {self.sources[name]!r} and {key!r} both set {name} but disagree "
                f"({self.fields[name]!r} vs {value!r}); keep one of them",
                field=key,
            )
        self.fields[name] = value
        self.sources[name] = key

    def note(self, message: str, category: type[Warning] = LegacyConfigWarning) -> None:
        self.notes.append(message)
        self.categories.append(category)

    def put(self, path: OptionPath, value: Any) -> None:
        """Set ``value`` at ``path`` in the backend options (tables created as needed)."""
        target = self.options
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value


def _sizes(value: Any, key: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise LegacyConfigError(
            f"{key}: expected a list of batch sizes, got {value!r}", field=key
        ) from None


def _dtype(value: Any) -> str:
    # torch.float16 prints as "torch.float16"; strings pass through for CompileSpec to check
    text = str(value)
    return text.removeprefix("torch.")


def _compilation_level(c: _Collector, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
        raise LegacyConfigError(
            f"{key}: expected 0 (no compilation) to 3, got {value!r}; "
            "levels 1-3 all mean compile_mode='default' now",
            field=key,
        )
    c.set("compile_mode", "none" if value == 0 else "default", key)


def apply_compilation_mode(c: _Collector, key: str, value: Any) -> None:
    """Map an old compilation-mode name ("reduce-overhead", "max-autotune", ...)."""
    if value in _NO_OP_MODES:
        return
    if not isinstance(value, str) or value.lower() not in _MODE_NAMES:
        allowed = ", ".join(repr(m) for m in _MODE_NAMES)
        raise LegacyConfigError(
            f"{key}: unknown compilation mode {value!r}; allowed: {allowed}", field=key
        )
    mode, graphs = _MODE_NAMES[value.lower()]
    c.set("compile_mode", mode, key)
    if graphs is not None:
        c.set("cuda_graphs", graphs, key)


def _batch_sizes(c: _Collector, key: str, value: Any) -> None:
    sizes = _sizes(value, key)
    if sizes is None:
        return
    c.set("cuda_graph_sizes", sizes, key)


def _partial_prefills(c: _Collector, key: str, value: Any) -> None:
    if value in (None, 1):
        return  # 1 is the only value vLLM's V1 engine ever ran with
    c.note(
        f"config key {key!r}={value!r} has no effect: vLLM's V1 engine never supported "
        "concurrent partial prefills (it raises from 0.11.1 and the argument is gone in "
        "0.27); chunked prefill still splits long prompts"
    )


def _use_inductor(c: _Collector, key: str, value: Any) -> None:
    if value:
        return  # Inductor is what compiles whenever compile_mode is not "none"
    c.note(
        f"config key {key!r}=False has no effect: a compiled model always uses Inductor "
        "(vLLM removed use_inductor in 0.12); use compilation_level=0 for no compilation"
    )


def _enable_aot(c: _Collector, key: str, value: Any) -> None:
    if not value:
        c.set("compile_mode", "none", key)


def _enforce_eager(c: _Collector, key: str, value: Any) -> None:
    # "eager" meant no compilation and no CUDA graphs; spelled with spec fields so that
    # every backend honours it (and vLLM 0.17+'s stronger enforce_eager is not relied on)
    if value:
        c.set("compile_mode", "none", key)
        c.set("cuda_graphs", False, key)


def _backend_options(c: _Collector, key: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise LegacyConfigError(f"{key}: expected a mapping, got {value!r}", field=key)
    for k, v in value.items():
        current = c.options.get(k)
        c.options[k] = (
            {**current, **v} if isinstance(current, dict) and isinstance(v, Mapping) else v
        )


def _base_compiler(c: _Collector, key: str, value: Any) -> None:
    if value is not None:
        c.note(
            f"{key!r} has no effect: aot backends compile models themselves and no longer "
            "wrap an existing compiler"
        )


def _graph_config(c: _Collector, key: str, value: Any) -> None:
    # the old CudaGraphConfig(enabled=..., batch_sizes=...), or a dict of the same
    if value is None:
        return
    data = value if isinstance(value, Mapping) else vars(value)
    for sub, target in (("enabled", "cuda_graphs"), ("batch_sizes", "cuda_graph_sizes")):
        if data.get(sub) is not None:
            v = data[sub] if target == "cuda_graphs" else _sizes(data[sub], f"{key}.{sub}")
            c.set(target, v, f"{key}.{sub}")
    rest = sorted(set(data) - {"enabled", "batch_sizes"})
    if rest:
        c.note(
            f"{key} fields {rest} have no effect: CUDA-graph warm-up and memory pools are "
            "managed by the backend"
        )


def _tokenizer(c: _Collector, key: str, value: Any) -> None:
    if value is None:
        return
    if callable(getattr(value, "save_pretrained", None)):
        c.tokenizer = value
        return
    c.note(
        f"config key {key!r}={value!r} has no effect: the tokenizer files beside the model are "
        "used; pass a tokenizer object to have it go with an in-memory model"
    )


def _field(name: str, convert: Callable[[Any], Any] | None = None) -> Callable[..., None]:
    def handler(c: _Collector, key: str, value: Any) -> None:
        c.set(name, convert(value) if convert is not None else value, key)

    return handler


def _field_sizes(name: str) -> Callable[..., None]:
    def handler(c: _Collector, key: str, value: Any) -> None:
        c.set(name, _sizes(value, key), key)

    return handler


# Old (or new) key -> how to translate it.
_HANDLERS: dict[str, Callable[[_Collector, str, Any], None]] = {
    "enable_cuda_graphs": _field("cuda_graphs"),
    "use_cudagraph": _field("cuda_graphs"),
    "batch_sizes": _batch_sizes,
    "cuda_graph_batch_sizes": _field_sizes("cuda_graph_sizes"),
    "cudagraph_capture_sizes": _field_sizes("cuda_graph_sizes"),
    "compilation_level": _compilation_level,
    "level": _compilation_level,
    "compilation_mode": apply_compilation_mode,
    "mode": apply_compilation_mode,
    "enable_chunked_prefill": _field("chunked_prefill"),
    "chunking_threshold": _field("long_prefill_token_threshold"),
    "max_seq_len": _field("max_model_len"),
    "max_seq_length": _field("max_model_len"),
    "max_length": _field("max_model_len"),
    "torch_dtype": _field("dtype", _dtype),
    "dtype": _field("dtype", _dtype),
    "max_num_partial_prefills": _partial_prefills,
    "max_long_partial_prefills": _partial_prefills,
    "max_chunks_per_request": _partial_prefills,
    "use_inductor": _use_inductor,
    "enable_aot": _enable_aot,
    "enforce_eager": _enforce_eager,
    "backend_options": _backend_options,
    "graph_config": _graph_config,
    "cuda_graph_config": _graph_config,
    "base_compiler": _base_compiler,
}


def _owners(key: str) -> dict[str, OptionPath]:
    """Installed backends (best first) whose options class takes the old ``key``, and where."""
    found = registry.installed_backends()
    owners = {}
    for name in registry.by_priority():
        path = found[name].options_class.migrate(key)
        if path:
            owners[name] = path
    return owners


def _known_keys() -> list[str]:
    migrated = {
        key
        for cls in registry.installed_backends().values()
        for key in cls.options_class.migrations
    }
    return sorted(
        set(_HANDLERS)
        | _SPEC_FIELDS
        | migrated
        | set(OBSOLETE_KEYS)
        | set(MODEL_ID_KEYS)
        | {TOKENIZER_KEY}
    )


def _backend_setting(c: _Collector, key: str, value: Any, owners: dict[str, OptionPath]) -> None:
    """Put a backend's own setting where the chosen backend (or, with none chosen, the best
    installed one that has it) says; warn when the chosen backend has no such setting."""
    target = c.backend if c.backend is not None else next(iter(owners))
    path = owners.get(target)
    if path is not None:
        c.put(path, value)
    else:
        c.note(
            f"config key {key!r} has no effect: it is a setting of the {next(iter(owners))} "
            f"backend, and the {c.backend} backend was chosen"
        )


def _translate_key(c: _Collector, key: str, value: Any, *, lenient: bool) -> None:
    owners = _owners(key) if key not in _HANDLERS and key not in _SPEC_FIELDS else {}
    if value is None and (key in OBSOLETE_KEYS or owners):
        return  # None is how old signatures spelled "not set"
    if key in _HANDLERS:
        _HANDLERS[key](c, key, value)
    elif key in _SPEC_FIELDS:
        if key in ("cuda_graph_sizes", "compile_sizes"):
            value = _sizes(value, key)
        elif key == "dtype":
            value = _dtype(value)
        c.set(key, value, key)
    elif key == TOKENIZER_KEY:
        _tokenizer(c, key, value)
    elif key in MODEL_ID_KEYS:
        if value is not None and c.model_id is None:
            c.model_id = str(value)
    elif owners:
        _backend_setting(c, key, value, owners)
    elif key in OBSOLETE_KEYS:
        c.note(f"config key {key!r} has no effect: {OBSOLETE_KEYS[key]}")
    elif lenient:
        # attributes of an old model-config object that are not compile settings
        c.note(f"model-config attribute {key!r} is not a compile setting; ignored")
    else:
        _unknown_key(c, key)


def _missing_backends() -> list[tuple[str, str]]:
    """The backends this package can run on that are not installed, as (distribution,
    extra) pairs, read from this package's own extras (``aot-compat[vllm]``)."""
    try:
        requires = metadata.requires("aot-compat") or []
    except metadata.PackageNotFoundError:  # run from a source tree with no metadata
        return []
    missing: list[tuple[str, str]] = []
    for line in requires:
        name = re.match(r"[A-Za-z0-9._-]+", line)
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", line)
        if name is None or extra is None or not name[0].startswith("aot-"):
            continue
        if extra[1] == "all" or any(name[0] == m for m, _ in missing):
            continue
        try:
            metadata.distribution(name[0])
        except metadata.PackageNotFoundError:
            missing.append((name[0], extra[1]))
    return missing


def _not_installed(missing: list[tuple[str, str]]) -> str:
    """Says which backends are not installed and how to install them ("" when none)."""
    if not missing:
        return ""
    names = " and ".join(name for name, _ in missing)
    extras = " or ".join(f"'aot-compat[{extra}]'" for _, extra in missing)
    verb = "is" if len(missing) == 1 else "are"
    return f"{names} {verb} not installed here: if it is a backend's setting, pip install {extras}"


def _unknown_key(c: _Collector, key: str) -> None:
    """An old key no installed backend understands: a warning (old scripts carried such
    keys and ran), or an error under ``strict``. Each backend's table of its old keys is
    in its own package, so the key may be a setting of a backend not installed here: the
    message then names those backends and how to install them."""
    close = difflib.get_close_matches(key, _known_keys(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    absent = _not_installed(_missing_backends())
    which = "installed " if absent else ""
    if c.strict:
        raise LegacyConfigError(
            f"config key {key!r} is not understood by any {which}aot backend{hint} "
            + (f"({absent}.) " if absent else "")
            + "Fix or remove it; a backend-specific setting goes in config['backend_options']."
            " Known keys: " + ", ".join(_known_keys()),
            field=key,
        )
    c.note(
        f"config key {key!r} is not understood by any {which}aot backend and was ignored{hint} "
        + (f"({absent}; " if absent else "(")
        + f"pass strict=True or set {STRICT_ENV}=1 to make this an error)",
        UnknownConfigKeyWarning,
    )


def strict_from_env() -> bool:
    """Whether ``$AOT_COMPAT_STRICT`` asks for unknown config keys to be errors."""
    raw = os.environ.get(STRICT_ENV, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise LegacyConfigError(
        f"{STRICT_ENV}={raw!r} is not understood; set it to 1 (unknown config keys are "
        "errors) or 0 (they warn), or unset it",
        field=STRICT_ENV,
    )


def _items(config: Any) -> tuple[list[tuple[str, Any]], bool]:
    """The (key, value) pairs of a config, and whether unknown keys are tolerated."""
    if isinstance(config, Mapping):
        for key in config:
            if not isinstance(key, str):
                raise LegacyConfigError(f"config keys must be strings, got {key!r}")
        return list(config.items()), False
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)], True
    if hasattr(config, "__dict__"):
        # an old model-config object: its attributes describe the model, most are not
        # compile settings, so unknown ones are reported but tolerated
        return [(k, v) for k, v in vars(config).items() if not k.startswith("_")], True
    raise LegacyConfigError(
        f"config must be a dict, a CompileSpec or a model-config object, got "
        f"{type(config).__name__}"
    )


def translate(
    config: Any = None,
    *,
    base: CompileSpec | None = None,
    backend: str | None = None,
    compilation_mode: Any = None,
    extra: Mapping[str, Any] | None = None,
    strict: bool | None = None,
    stacklevel: int = 2,
) -> LegacyTranslation:
    """Translate an old configuration into a ``CompileSpec`` on top of ``base``.

    ``config`` may be None, a ``CompileSpec`` (used as is), a dict of old or new keys, or an
    old model-config object. ``extra`` holds old constructor keywords, translated the same
    way. ``backend`` is the chosen backend's name, which decides where backend-only keys go.
    Each key with no effect issues one ``LegacyConfigWarning``; a key no backend
    understands issues an ``UnknownConfigKeyWarning`` and is ignored, or raises
    ``LegacyConfigError`` when ``strict`` (None: ``$AOT_COMPAT_STRICT`` decides).
    """
    base = base if base is not None else CompileSpec()
    c = _Collector(backend=backend, strict=strict_from_env() if strict is None else strict)
    if isinstance(config, CompileSpec):
        spec_from_config: CompileSpec | None = config
    else:
        spec_from_config = None
        if config is not None:
            items, lenient = _items(config)
            for key, value in items:
                _translate_key(c, key, value, lenient=lenient)
    for key, value in (extra or {}).items():
        _translate_key(c, key, value, lenient=False)
    if compilation_mode is not None:
        apply_compilation_mode(c, "compilation_mode", compilation_mode)

    start = spec_from_config if spec_from_config is not None else base
    fields = dict(c.fields)
    if not fields.get("cuda_graphs", start.cuda_graphs):
        # Old code passed batch sizes (default [1, 2, 4, 8]) even with graphs off; they
        # only ever chose capture sizes, so with graphs off they mean nothing.
        sizes_key = c.sources.get("cuda_graph_sizes")
        if sizes_key is not None:
            del fields["cuda_graph_sizes"]
            c.note(
                f"config key {sizes_key!r} has no effect: it chooses CUDA-graph capture "
                "sizes and CUDA graphs are off"
            )
        if start.cuda_graph_sizes and "cuda_graph_sizes" not in fields:
            fields["cuda_graph_sizes"] = None
            c.note(
                f"CUDA-graph capture sizes {list(start.cuda_graph_sizes)} were dropped "
                f"because {c.sources.get('cuda_graphs', 'the config')!r} turned CUDA graphs off"
            )
    if c.options:
        merged = {k: v for k, v in start.backend_options.items()}
        for k, v in c.options.items():
            if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
                merged[k] = {**merged[k], **v}  # engine_args / compilation_config sections
            else:
                merged[k] = v
        fields["backend_options"] = merged
    try:
        spec = start.replace(**fields) if fields else start
    except SpecError as exc:
        old = c.sources.get(exc.field or "", exc.field)
        where = f"config key {old!r}: " if old and old != exc.field else ""
        raise LegacyConfigError(f"{where}{exc}", field=old or exc.field) from None
    for message, category in zip(c.notes, c.categories, strict=True):
        warnings.warn(message, category, stacklevel=stacklevel + 1)
    return LegacyTranslation(
        spec=spec, model_id=c.model_id, tokenizer=c.tokenizer, notes=tuple(c.notes)
    )
