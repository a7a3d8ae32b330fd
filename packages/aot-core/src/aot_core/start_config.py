"""One resolved start configuration per command: decided once, before eager and compiled part.

A command that runs a model eagerly and compiled (``aot eval --eager`` and ``aot eval``, the
two runs of ``aot eval --parity``, ``aot compile`` and a later ``aot eval`` of its entry,
``aot bench``, ``aot serve``) calls ``resolve_start`` once with the user's spec and gives
every run ``StartConfig.apply``'s spec, so every engine gets the same dtype, context length,
batch limits, KV-cache sequences (``aot eval``: its request count) and cache root, and so the
same KV cache (the backends size it from those).
Each value says where it came from; the record goes into the results
(``StartConfig.to_dict``).

This is where dtype "auto" is decided for a command (``dtype_choice.resolve_dtype``, the
one rule): ``apply`` writes the answer into the spec, so the backends run it instead of
deciding again, and artifact keys name the dtype that runs. A backend resolves "auto"
itself, with the same function, only when it is used directly with an unresolved spec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from aot_core.compiler import GenerationParams, Prompt
from aot_core.dtype_choice import resolve_dtype
from aot_core.spec import CompileSpec

MIN_EXAMPLES_MODEL_LEN = 128
"""The smallest ``max_model_len`` example prompts resolve to."""


class JobSize(Protocol):
    """What a command's job sends, as far as its start needs to know; its ``str`` says so
    in the record. The contract names no job type: ``aot eval``'s is
    ``aot_core.evaluation.workload.JobRequests``."""

    @property
    def kv_sequences(self) -> int:
        """Sequences worth a KV cache for this job."""
        ...


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One resolved value and where it came from."""

    value: Any
    """The value (None: the backend's engine decides, as ``source`` says)."""

    source: str
    """Where it came from: "spec", "model config", "machine", "examples", "command default",
    "aot cache root" or "backend default"."""

    reason: str = ""
    """Why, in one line, where the rule needs saying (the dtype's), for notes and headers."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"value": self.value, "source": self.source}


@dataclass(frozen=True, kw_only=True)
class StartConfig:
    """What one command's starts run with, decided once for its eager and compiled runs."""

    dtype: Setting
    """Weight and activation dtype (``resolve_dtype``'s answer for this machine)."""

    max_model_len: Setting
    """Longest prompt plus output."""

    max_num_seqs: Setting
    """Most sequences decoded at once."""

    max_num_batched_tokens: Setting
    """Token budget per engine step."""

    cache_dir: Setting
    """Where the backend keeps its compile caches (an artifact's files, or a store root)."""

    kv_cache_seqs: Setting = Setting(value=None, source="max_num_seqs")
    """Sequences the KV cache is sized for (a job's request count; None: ``max_num_seqs``).
    Run-time only: it changes no compiled code, so no artifact key."""

    def apply(self, spec: CompileSpec) -> CompileSpec:
        """``spec`` with every value it left open resolved: what each backend then runs."""
        changes: dict[str, Any] = {}
        if spec.dtype == "auto" and self.dtype.value != "auto":
            changes["dtype"] = self.dtype.value  # "auto" stays only where the engine decides
        for name in self._names():
            if name == "dtype":
                continue
            value = getattr(self, name).value
            if value is not None and getattr(spec, name) is None:
                changes[name] = value
        return spec.replace(**changes) if changes else spec

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-compatible form: each field as {"value", "source"}."""
        return {name: getattr(self, name).to_dict() for name in self._names()}

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        # Each field is named for the CompileSpec field it resolves, so a new one is
        # applied and recorded without another list to keep in step.
        return tuple(field.name for field in fields(cls))


def declared_model_len(model_dir: Path | None) -> int | None:
    """The model's ``max_position_embeddings`` from its config.json, or None."""
    if model_dir is None:
        return None
    try:
        data = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("max_position_embeddings") if isinstance(data, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def examples_need(prompts: Sequence[Prompt], max_new_tokens: int) -> int:
    """Tokens the longest example needs (a text prompt: its bytes and a margin of 2)."""
    lengths = [len(p.encode()) + 2 if isinstance(p, str) else len(p) for p in prompts]
    return max(lengths, default=0) + max_new_tokens


def examples_model_len(spec: CompileSpec, need: int, model_limit: int | None) -> int:
    """The ``max_model_len`` examples needing ``need`` tokens resolve to: the next power of two
    (at least 128) above it, capped at the model's limit and, with chunked prefill off, at
    the step budget. A smaller context means less KV cache per sequence, and equal
    workloads share a cache key."""
    value = max(MIN_EXAMPLES_MODEL_LEN, 1 << max(0, need - 1).bit_length())
    if model_limit is not None:
        value = min(value, model_limit)
    if spec.max_num_batched_tokens is not None and not spec.chunked_prefill:
        value = min(value, spec.max_num_batched_tokens)
    return value


def resolve_start(
    spec: CompileSpec,
    model_dir: Path | None,
    *,
    examples: Sequence[Prompt] | None = None,
    max_new_tokens: int = GenerationParams().max_new_tokens,
    defaults: Mapping[str, Any] | None = None,
    cache_root: Path | None = None,
    gpu: bool | None = None,
    requests: JobSize | None = None,
) -> StartConfig:
    """Decide ``spec``'s open fields once for a command's starts.

    Precedence: the spec, then the command's ``defaults`` (``aot bench``'s small engine),
    then, for ``max_model_len``, the ``examples`` a compiled run precompiles with (the
    rule ``compile_model_aot`` applies), else the backend's default. ``cache_dir``: the
    spec's, else ``cache_root``. ``gpu``: None reads it from nvidia-smi. ``requests``: what
    the command's job sends (``aot eval`` counts it), which sizes the KV cache
    (``JobSize.kv_sequences``) unless the spec does.
    """
    if gpu is None:
        from aot_core.artifacts import cuda_capabilities

        gpu = bool(cuda_capabilities())
    defaults = defaults or {}
    dtype = resolve_dtype(spec.dtype, model_dir, gpu=gpu)
    return StartConfig(
        dtype=Setting(value=dtype.dtype, source=dtype.source, reason=dtype.reason),
        max_model_len=_model_len(spec, model_dir, examples, max_new_tokens, defaults),
        max_num_seqs=_limit(spec, "max_num_seqs", defaults),
        max_num_batched_tokens=_limit(spec, "max_num_batched_tokens", defaults),
        cache_dir=(
            Setting(value=spec.cache_dir, source="spec")
            if spec.cache_dir is not None
            else Setting(
                value=str(cache_root) if cache_root is not None else None,
                source="aot cache root" if cache_root is not None else "backend default",
            )
        ),
        kv_cache_seqs=_kv_cache_seqs(spec, requests),
    )


def _kv_cache_seqs(spec: CompileSpec, requests: JobSize | None) -> Setting:
    if spec.kv_cache_seqs is not None:
        return Setting(value=spec.kv_cache_seqs, source="spec")
    if requests is not None:
        return Setting(value=requests.kv_sequences, source=f"job ({requests})")
    return Setting(value=None, source="max_num_seqs")


def _limit(spec: CompileSpec, name: str, defaults: Mapping[str, Any]) -> Setting:
    if getattr(spec, name) is not None:
        return Setting(value=getattr(spec, name), source="spec")
    if defaults.get(name) is not None:
        return Setting(value=defaults[name], source="command default")
    return Setting(value=None, source="backend default")


def _model_len(
    spec: CompileSpec,
    model_dir: Path | None,
    examples: Sequence[Prompt] | None,
    max_new_tokens: int,
    defaults: Mapping[str, Any],
) -> Setting:
    if spec.max_model_len is not None or defaults.get("max_model_len") is not None:
        return _limit(spec, "max_model_len", defaults)
    if examples:
        need = examples_need(examples, max_new_tokens)
        limit = declared_model_len(model_dir)
        if limit is None or need <= limit:  # too long: the backend refuses it, naming both
            return Setting(
                value=examples_model_len(spec, need, limit),
                source=f"examples (longest needs {need} tokens)",
            )
    return Setting(value=None, source="backend default (the model's own limit)")
