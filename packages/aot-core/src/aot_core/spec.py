"""``CompileSpec``: the backend-neutral description of how to compile a model.

A spec is validated when it is built, so a bad value fails before any engine starts.
It round-trips through dict, JSON and TOML and has a fingerprint that is stable across
processes and key order, which is what cache directories are keyed on.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from aot_core.errors import SpecError

CompileMode = Literal["none", "default", "max-autotune"]
COMPILE_MODES: tuple[str, ...] = ("none", "default", "max-autotune")

# Canonical dtype names, with the aliases users actually type.
_DTYPES: dict[str, str] = {
    "auto": "auto",
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}

# Bumped whenever the meaning of a field changes, so old fingerprints stop matching.
SPEC_SCHEMA_VERSION = 1

FINGERPRINT_IGNORES: frozenset[str] = frozenset({"cache_dir", "kv_cache_seqs"})
"""Fields ``CompileSpec.fingerprint()`` leaves out: neither where files are kept nor how
large the KV cache is changes what is compiled, so the same spec in another directory, or
for a job of another size, has the same identity."""

ADDED_AFTER_SCHEMA_1: frozenset[str] = frozenset({"kv_cache_seqs"})
"""Fields newer than schema 1. ``to_dict`` leaves them out while at their default, so an
older aot-core still reads what this one writes (its ``from_dict`` refuses unknown keys);
the fingerprint never hashes them, so adding one changed no existing digest."""

_MAX_SIZE = 1 << 20

MAX_MODEL_LEN_LIMIT = 1 << 24
"""The largest ``max_model_len`` a spec accepts (16,777,216 tokens): above the longest
context any released model declares (10,485,760), so a larger value is a typo, and one
the backends would otherwise only find out about after loading the model."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _freeze(value: Any, where: str) -> Any:
    """Turn a JSON-like value into an immutable, JSON-serialisable one."""
    if value is None or isinstance(value, (str, bool)) or _is_int(value):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"{where}: {value!r} is not a finite number", field="backend_options")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SpecError(
                    f"{where}: keys must be strings, got {k!r}", field="backend_options"
                )
            out[k] = _freeze(v, f"{where}.{k}")
        return MappingProxyType(out)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise SpecError(
        f"{where}: {type(value).__name__} values are not allowed; use strings, numbers, "
        "booleans, lists or tables",
        field="backend_options",
    )


def thaw(value: Any) -> Any:
    """The JSON form of a frozen spec value: mappings become dicts (keys as strings),
    tuples become lists; backends use it to hand ``backend_options`` tables on."""
    if isinstance(value, Mapping):
        return {str(k): thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class CompileSpec:
    """How to compile a model, independent of the backend that does it."""

    compile_mode: CompileMode = "default"
    """torch.compile effort: "none" (eager), "default", or "max-autotune"."""

    cuda_graphs: bool = True
    """Capture CUDA graphs for decode where the device supports them."""

    cuda_graph_sizes: tuple[int, ...] | None = None
    """Batch sizes to capture CUDA graphs for; None lets the backend choose."""

    compile_sizes: tuple[int, ...] | None = None
    """Extra static batch sizes to specialise compiled code for; None for none."""

    chunked_prefill: bool = True
    """Split long prompts into chunks that share a step with decodes."""

    max_num_batched_tokens: int | None = None
    """Token budget per engine step; None lets the backend choose."""

    long_prefill_token_threshold: int = 0
    """Cap on one prompt's tokens per step when chunked prefill is on; 0 means no cap."""

    max_model_len: int | None = None
    """Longest prompt plus output, in tokens; None takes the model's own limit."""

    max_num_seqs: int | None = None
    """Most sequences decoded at once; None lets the backend choose."""

    kv_cache_seqs: int | None = None
    """Full-length sequences the KV cache is sized for where aot sizes it (vLLM on CPU),
    capped at ``max_num_seqs``; None sizes it for ``max_num_seqs``. ``aot eval`` sets it
    from its job's requests (``JobRequests.kv_sequences``), so a job does not reserve (and
    zero) a cache it cannot fill. Run-time only: not part of ``fingerprint()``
    (``FINGERPRINT_IGNORES``)."""

    dtype: str = "auto"
    """Weight and activation dtype: auto, float32, float16 or bfloat16 (aliases accepted)."""

    cache_dir: str | None = None
    """Where the backend keeps what it compiles for this spec (None: a place of its own
    choosing under aot's cache root, ``$AOT_CACHE_DIR`` else ``~/.cache/aot``).

    One meaning for every backend: what the backend compiles for this spec, and the caches
    its engine loads compiled code from, go below this directory (logs and machine-wide
    facts that are not compiled code may live in aot's cache root), and nothing compiled
    is loaded from it unverified.
    When it is an aot artifact's ``files/`` directory (``aot_core.artifacts.artifact_root``
    finds the artifact; ``aot compile`` and ``aot bench`` pass one) the artifact is the
    entry: the backend verifies it with ``verify_for_load`` before loading anything, and
    leaves the lock and the manifest to the artifact's owner. While it is being built its
    manifest lists no files (nothing to load): the backend writes its compiled files
    straight in. Once published, a backend may add to it (the owner re-seals) or copy what
    it needs elsewhere, never load unlisted files. Any other directory is the root of
    the backend's own verified entries, keyed by model, spec and versions, so one directory
    serves many compiles. Not part of ``fingerprint()`` (``FINGERPRINT_IGNORES``)."""

    tensor_parallel_size: int = 1
    """Number of devices a layer is split across."""

    pipeline_parallel_size: int = 1
    """Number of pipeline stages the layers are split into."""

    backend_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Backend-specific settings; the chosen backend validates them."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.compile_mode not in COMPILE_MODES:
            raise SpecError(
                f"compile_mode: unknown mode {self.compile_mode!r}; allowed: "
                + ", ".join(repr(m) for m in COMPILE_MODES),
                field="compile_mode",
            )
        for name in ("cuda_graphs", "chunked_prefill"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(
                    f"{name}: must be true or false, got {getattr(self, name)!r}", field=name
                )
        for name in ("cuda_graph_sizes", "compile_sizes"):
            set_(self, name, _check_sizes(name, getattr(self, name)))
        for name, low in (
            ("max_num_batched_tokens", 1),
            ("max_model_len", 1),
            ("max_num_seqs", 1),
            ("kv_cache_seqs", 1),
        ):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, low)
        if self.max_model_len is not None and self.max_model_len > MAX_MODEL_LEN_LIMIT:
            raise SpecError(
                f"max_model_len: {self.max_model_len} tokens is beyond any model's context "
                f"(aot accepts at most {MAX_MODEL_LEN_LIMIT}); set it to the longest prompt "
                "plus output you need, or leave it unset to take the model's own limit",
                field="max_model_len",
            )
        _check_int("long_prefill_token_threshold", self.long_prefill_token_threshold, 0)
        _check_int("tensor_parallel_size", self.tensor_parallel_size, 1)
        _check_int("pipeline_parallel_size", self.pipeline_parallel_size, 1)

        dtype = _DTYPES.get(str(self.dtype).lower()) if isinstance(self.dtype, str) else None
        if dtype is None:
            raise SpecError(
                f"dtype: unknown dtype {self.dtype!r}; allowed: auto, float32, float16, bfloat16",
                field="dtype",
            )
        set_(self, "dtype", dtype)

        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, (str, Path)) or not str(self.cache_dir):
                raise SpecError(
                    f"cache_dir: must be a non-empty path, got {self.cache_dir!r}",
                    field="cache_dir",
                )
            set_(self, "cache_dir", str(self.cache_dir))

        if not isinstance(self.backend_options, Mapping):
            raise SpecError(
                "backend_options: must be a mapping of option name to value, got "
                f"{type(self.backend_options).__name__}",
                field="backend_options",
            )
        set_(self, "backend_options", _freeze(self.backend_options, "backend_options"))
        self._check_contradictions()

    def _check_contradictions(self) -> None:
        """Refuse fields that are each valid but cannot hold together."""
        if not self.cuda_graphs and self.cuda_graph_sizes:
            raise SpecError(
                "cuda_graph_sizes: capture sizes were given but cuda_graphs is false; "
                "set cuda_graphs = true or drop the sizes",
                field="cuda_graph_sizes",
            )
        if self.compile_mode == "none" and self.compile_sizes:
            raise SpecError(
                "compile_sizes: compile sizes need compilation, but compile_mode is 'none'",
                field="compile_sizes",
            )
        if (
            not self.chunked_prefill
            and self.max_num_batched_tokens is not None
            and self.max_model_len is not None
            and self.max_num_batched_tokens < self.max_model_len
        ):
            raise SpecError(
                f"max_num_batched_tokens: {self.max_num_batched_tokens} is below max_model_len "
                f"{self.max_model_len} while chunked_prefill is off, so a full-length prompt "
                "could never be scheduled; raise the budget to at least max_model_len or turn "
                "chunked_prefill on",
                field="max_num_batched_tokens",
            )
        if self.long_prefill_token_threshold and not self.chunked_prefill:
            raise SpecError(
                "long_prefill_token_threshold: a per-step prefill cap needs chunked_prefill; "
                "turn chunked_prefill on or set the threshold to 0",
                field="long_prefill_token_threshold",
            )
        if (
            self.max_num_batched_tokens is not None
            and self.max_num_seqs is not None
            and self.max_num_batched_tokens < self.max_num_seqs
        ):
            raise SpecError(
                f"max_num_batched_tokens: {self.max_num_batched_tokens} is below max_num_seqs "
                f"{self.max_num_seqs}; every running sequence needs at least one token per step",
                field="max_num_batched_tokens",
            )

    # ------------------------------------------------------------------ derived values

    @property
    def compiles(self) -> bool:
        """Whether this spec asks for any compilation at all."""
        return self.compile_mode != "none"

    def replace(self, **changes: Any) -> CompileSpec:
        """A copy with ``changes`` applied and validated."""
        unknown = set(changes) - _field_names()
        if unknown:
            raise SpecError(_unknown_field_message(sorted(unknown)[0]), field=sorted(unknown)[0])
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict holding every field (lists for tuples), but the fields of
        ``ADDED_AFTER_SCHEMA_1`` left at their default."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ADDED_AFTER_SCHEMA_1 and value == f.default:
                continue
            out[f.name] = thaw(value)
        return out

    def compiled_part(self) -> CompileSpec:
        """This spec without its run-time-only ``kv_cache_seqs``: what an artifact, which
        jobs of every size share, records."""
        return self.replace(kv_cache_seqs=None) if self.kv_cache_seqs is not None else self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompileSpec:
        """Build a spec from a dict; unknown keys are errors, never dropped."""
        if not isinstance(data, Mapping):
            raise SpecError(f"a spec must be a mapping, got {type(data).__name__}")
        names = _field_names()
        for key in data:
            if key not in names:
                raise SpecError(_unknown_field_message(str(key)), field=str(key))
        kwargs: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) and key.endswith("_sizes") else value
            for key, value in data.items()
        }
        return cls(**kwargs)

    def to_json(self, *, indent: int | None = 2) -> str:
        """The spec as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CompileSpec:
        """Parse a spec from JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec JSON is not valid: {exc}", line=exc.lineno) from exc
        except ValueError as exc:  # e.g. an integer with more digits than Python converts
            raise SpecError(f"spec JSON is not valid: {exc}") from exc
        return cls.from_dict(data)

    def to_toml(self) -> str:
        """The spec as TOML text (fields left at None are omitted)."""
        lines: list[str] = []
        data = self.to_dict()
        options = data.pop("backend_options")
        for key, value in data.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        if options:
            lines.append("")
            lines.append("[backend_options]")
            for key, value in sorted(options.items()):
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> CompileSpec:
        """Parse a spec from TOML text; errors name the field and, where known, the line."""
        try:
            data = tomllib.loads(text)
        except ValueError as exc:  # TOMLDecodeError, or an integer too long to convert
            match = re.search(r"line (\d+)", str(exc))
            raise SpecError(
                f"spec TOML is not valid: {exc}", line=int(match.group(1)) if match else None
            ) from exc
        try:
            return cls.from_dict(data)
        except SpecError as exc:
            if exc.field is not None and exc.line is None:
                line = _find_key_line(text, exc.field)
                if line is not None:
                    raise SpecError(f"line {line}: {exc}", field=exc.field, line=line) from None
            raise

    @classmethod
    def load(cls, path: str | Path) -> CompileSpec:
        """Read a spec file (.toml or .json), naming the file in any error."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read spec file {p}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise SpecError(
                f"spec file {p} is not UTF-8 text ({exc.reason} at byte {exc.start}); a spec "
                "is a .toml or .json text file"
            ) from exc
        try:
            if p.suffix.lower() == ".json":
                return cls.from_json(text)
            return cls.from_toml(text)
        except SpecError as exc:
            raise SpecError(f"{p}: {exc}", field=exc.field, line=exc.line) from None

    def save(self, path: str | Path) -> None:
        """Write the spec to a .toml or .json file."""
        p = Path(path)
        p.write_text(self.to_json() if p.suffix.lower() == ".json" else self.to_toml())

    # ------------------------------------------------------------------ identity

    def fingerprint(self) -> str:
        """A hex digest identifying what this spec compiles: equal specs give equal digests
        in any process. Fields in ``FINGERPRINT_IGNORES`` do not count: those of schema 1 are
        hashed as None, later ones (``ADDED_AFTER_SCHEMA_1``) left out, so digests match
        those of older specs."""
        data = self.to_dict()
        for name in FINGERPRINT_IGNORES:
            if name in ADDED_AFTER_SCHEMA_1:
                data.pop(name, None)
            else:
                data[name] = None
        payload = {"schema": SPEC_SCHEMA_VERSION, "spec": data}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def __hash__(self) -> int:
        return hash(self.fingerprint())


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(CompileSpec)}


def _unknown_field_message(key: str) -> str:
    names = sorted(_field_names())
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{key}: unknown spec field{hint} Known fields: {', '.join(names)}"


def _check_int(name: str, value: object, low: int) -> None:
    if not _is_int(value):
        raise SpecError(f"{name}: must be an integer >= {low}, got {value!r}", field=name)
    if cast(int, value) < low:
        raise SpecError(f"{name}: must be >= {low}, got {value}", field=name)


def _check_sizes(name: str, value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise SpecError(f"{name}: must be a list of positive integers, got {value!r}", field=name)
    seen: set[int] = set()
    for item in value:
        if not _is_int(item) or not 1 <= item <= _MAX_SIZE:
            raise SpecError(
                f"{name}: every size must be an integer from 1 to {_MAX_SIZE}, got {item!r}",
                field=name,
            )
        if item in seen:
            raise SpecError(f"{name}: size {item} appears more than once", field=name)
        seen.add(item)
    return tuple(sorted(seen))


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in sorted(value.items()))
        return "{" + inner + "}"
    raise SpecError(f"cannot write {value!r} to TOML")


def _find_key_line(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None
