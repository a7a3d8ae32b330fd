"""Settings of the legacy backend: its ``backend_options`` and the plan resolved from a spec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from aot_core.errors import SpecError
from aot_core.options import BackendOptions, OptionPath
from aot_core.spec import CompileSpec

from aot_legacy.migration import MIGRATIONS

DEFAULT_MAX_BATCH = 8
"""Largest decode batch when neither the spec nor example inputs say."""

DEFAULT_MAX_SEQ = 1024
"""KV-cache length when the spec leaves max_model_len open (capped by the model's limit)."""

STEP_FORMAT = 2
"""The version of the graphs ``decoder.py`` traces, pinned into every artifact and step
cache key: a change to them gets new entries instead of serving what an older aot-legacy
compiled. 2: grouped-query attention reads the KV heads in place."""

MIN_BUCKET = 2
"""Smallest batch bucket: exported graphs specialise size-1 dims (0/1 specialisation), so
batches are padded to at least 2 everywhere."""

_OPTION_DOCS: dict[str, str] = {
    "device": '"auto" (CUDA when available), "cpu" or "cuda[:N]"',
    "batch_buckets": "list of batch sizes to pad decode batches to (each >= 2)",
    "aoti": "true/false: load AOTInductor packages in compile_model when a compatible one exists",
    "package_dir": "directory of AOTInductor packages to load (or build, in compile_model_aot)",
    "persistent_cache": "true/false: keep torch.compile's caches in the keyed cache directory",
    "threads": "torch intra-op threads (1 is fastest on small CPUs)",
}


@dataclass(frozen=True, kw_only=True)
class LegacyOptions(BackendOptions):
    """The ``backend_options`` the legacy backend understands, validated; its options class
    (``Compiler.options_class``)."""

    migrations: ClassVar[Mapping[str, OptionPath]] = MIGRATIONS

    device: str = "auto"
    """Where to run: "auto", "cpu" or "cuda[:N]"."""

    batch_buckets: tuple[int, ...] | None = None
    """Batch sizes decode batches are padded to; None derives them from the spec."""

    aoti: bool = True
    """Whether compile_model loads a compatible AOTInductor package when one exists."""

    package_dir: str | None = None
    """An explicit directory of AOTInductor packages; None uses the keyed cache directory."""

    persistent_cache: bool = True
    """Whether torch.compile's caches live in the keyed cache directory."""

    threads: int | None = None
    """torch intra-op thread count to set; None leaves torch's setting alone."""

    @classmethod
    def validate(cls, spec: CompileSpec) -> Self:
        """Validate ``spec.backend_options``; unknown keys are errors, never ignored."""
        return cls.from_spec(spec)

    @classmethod
    def from_spec(cls, spec: CompileSpec) -> Self:
        """Validate ``spec.backend_options``; unknown keys are errors, never ignored."""
        opts: Mapping[str, Any] = spec.backend_options
        unknown = sorted(set(opts) - set(_OPTION_DOCS))
        if unknown:
            allowed = "; ".join(f"{k}: {v}" for k, v in _OPTION_DOCS.items())
            raise SpecError(
                f"backend_options: the legacy backend does not understand {', '.join(unknown)}; "
                f"it accepts {allowed}",
                field="backend_options",
            )
        kw: dict[str, Any] = {}
        if "device" in opts:
            dev = opts["device"]
            if not isinstance(dev, str) or not (
                dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())
            ):
                raise SpecError(
                    f"backend_options.device: {dev!r} is not one of {_OPTION_DOCS['device']}",
                    field="backend_options",
                )
            kw["device"] = dev
        if "batch_buckets" in opts:
            kw["batch_buckets"] = _check_buckets(
                opts["batch_buckets"], "backend_options.batch_buckets"
            )
        for name in ("aoti", "persistent_cache"):
            if name in opts:
                if not isinstance(opts[name], bool):
                    raise SpecError(
                        f"backend_options.{name}: must be true or false, got {opts[name]!r}",
                        field="backend_options",
                    )
                kw[name] = opts[name]
        if "package_dir" in opts:
            if not isinstance(opts["package_dir"], str) or not opts["package_dir"]:
                raise SpecError(
                    "backend_options.package_dir: must be a non-empty path",
                    field="backend_options",
                )
            kw["package_dir"] = opts["package_dir"]
        if "threads" in opts:
            t = opts["threads"]
            if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
                raise SpecError(
                    f"backend_options.threads: must be an integer >= 1, got {t!r}",
                    field="backend_options",
                )
            kw["threads"] = t
        return cls(**kw)


def _check_buckets(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(
            f"{where}: must be a non-empty list of batch sizes", field="backend_options"
        )
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < MIN_BUCKET:
            raise SpecError(
                f"{where}: {v!r} is not a batch size >= {MIN_BUCKET} (batch 1 is padded to 2)",
                field="backend_options",
            )
        out.append(v)
    if len(set(out)) != len(out):
        raise SpecError(f"{where}: sizes must not repeat", field="backend_options")
    return tuple(sorted(out))


@dataclass(frozen=True, kw_only=True)
class StepPlan:
    """Static shapes and modes that a model's compiled steps are built for."""

    max_batch: int
    """Rows of the static KV cache; larger batches run in chunks."""

    max_seq: int
    """Positions of the static KV cache (prompt plus output)."""

    buckets: tuple[int, ...]
    """Batch sizes decode batches are padded to; the last equals max_batch."""

    compile_mode: str
    """"none", "default" or "max-autotune"."""

    dtype: str
    """Weight and cache dtype name, e.g. "float32"."""


def resolve_plan(
    spec: CompileSpec,
    options: LegacyOptions,
    *,
    max_positions: int,
    dtype: str,
    example_batch: int | None = None,
    example_len: int | None = None,
) -> tuple[StepPlan, list[str]]:
    """Turn a spec (and example inputs) into static shapes; returns the plan and notes."""
    notes: list[str] = []
    sizes = options.batch_buckets
    if sizes is None and spec.cuda_graph_sizes:
        sizes = tuple(sorted({max(MIN_BUCKET, s) for s in spec.cuda_graph_sizes}))
        if 1 in spec.cuda_graph_sizes:
            notes.append("batch size 1 is padded to 2 (exported graphs need batch >= 2)")
    if spec.max_num_seqs is not None:
        max_batch = max(spec.max_num_seqs, MIN_BUCKET)
    elif sizes:
        max_batch = max(sizes)
    elif example_batch:
        max_batch = max(MIN_BUCKET, 1 << (example_batch - 1).bit_length())
    else:
        max_batch = DEFAULT_MAX_BATCH
    if sizes is None:
        sizes = tuple(b for b in _powers_of_two(max_batch))
    sizes = tuple(s for s in sizes if s <= max_batch)
    if not sizes or sizes[-1] != max_batch:
        sizes = (*sizes, max_batch)
    if spec.max_model_len is not None:
        max_seq = spec.max_model_len
        if max_seq > max_positions:
            raise SpecError(
                f"max_model_len: {max_seq} exceeds the model's max_position_embeddings "
                f"{max_positions}; set max_model_len <= {max_positions}",
                field="max_model_len",
            )
    else:
        max_seq = min(max_positions, DEFAULT_MAX_SEQ)
    if max_seq < 2:
        raise SpecError("max_model_len: must be at least 2 tokens", field="max_model_len")
    if example_len is not None and example_len >= max_seq:
        raise SpecError(
            f"example_inputs: a prompt of {example_len} tokens does not fit max_model_len "
            f"{max_seq}; raise max_model_len",
            field="max_model_len",
        )
    if spec.tensor_parallel_size != 1 or spec.pipeline_parallel_size != 1:
        raise SpecError(
            "tensor_parallel_size/pipeline_parallel_size: the legacy backend runs on one "
            "device; set both to 1 or use the vllm backend",
            field="tensor_parallel_size",
        )
    if spec.compile_sizes:
        notes.append(
            "compile_sizes are not used: the legacy backend compiles graphs dynamic in batch "
            "and prompt length"
        )
    if spec.max_num_batched_tokens is not None:
        notes.append(
            "max_num_batched_tokens is not used: the legacy backend prefills each batch whole"
        )
    if spec.chunked_prefill:
        notes.append(
            "chunked prefill is not implemented by the legacy backend; prompts are prefilled whole"
        )
    plan = StepPlan(
        max_batch=max_batch,
        max_seq=max_seq,
        buckets=sizes,
        compile_mode=spec.compile_mode,
        dtype=dtype,
    )
    return plan, notes


def _powers_of_two(limit: int) -> list[int]:
    out, b = [], MIN_BUCKET
    while b < limit:
        out.append(b)
        b *= 2
    return [*out, limit]
