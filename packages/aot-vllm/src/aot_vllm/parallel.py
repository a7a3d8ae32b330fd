"""One model over several processes: the checks before a tensor- or pipeline-parallel start.

vLLM splits attention heads, KV heads, the MLP and the (padded) vocabulary across
tensor-parallel ranks, and layers across pipeline stages. A model that does not split that
way fails inside an engine process, minutes into the start, with a bare assertion from
vLLM's ``divide``; a world bigger than the cores or devices there are fails the same way or
hangs. ``check_model_split`` (config.json only, before vLLM is imported) and
``check_resources`` (after the platform is known, before any engine starts) refuse both
with the numbers. The rules are vLLM's own, the same in every release 0.10.2-0.33:
``QKVParallelLinear`` (heads divide; KV heads divide or are replicated),
``MergedColumnParallelLinear`` (intermediate size divides), ``VocabParallelEmbedding``
(the vocabulary padded to a multiple of 64 divides) and ``get_pp_indices`` (every stage gets
at least one layer; an uneven split gives the extra layers to the stages before the last).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

__all__ = [
    "VOCAB_PADDING",
    "World",
    "allowed_cores",
    "check_model_split",
    "check_resources",
    "layer_split",
    "model_split_problems",
    "numa_nodes",
]

VOCAB_PADDING = 64
"""vLLM pads the vocabulary to a multiple of this before splitting it (every release)."""


@dataclass(frozen=True, kw_only=True)
class World:
    """How many processes one model runs in, and how a rank maps to its place."""

    tensor_parallel_size: int
    """Ranks a layer is split across."""

    pipeline_parallel_size: int
    """Pipeline stages the layers are split into."""

    @classmethod
    def of(cls, spec: CompileSpec) -> World:
        """The world a spec asks for."""
        return cls(
            tensor_parallel_size=spec.tensor_parallel_size,
            pipeline_parallel_size=spec.pipeline_parallel_size,
        )

    @property
    def size(self) -> int:
        """Number of ranks (worker processes)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def coords(self, rank: int) -> tuple[int, int]:
        """(tensor-parallel rank, pipeline stage) of a global rank, as vLLM numbers them."""
        return rank % self.tensor_parallel_size, rank // self.tensor_parallel_size

    def describe(self) -> str:
        """e.g. "tensor_parallel_size=2 x pipeline_parallel_size=1 (2 ranks)"."""
        return (
            f"tensor_parallel_size={self.tensor_parallel_size} x "
            f"pipeline_parallel_size={self.pipeline_parallel_size} ({self.size} ranks)"
        )


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def _int(config: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def layer_split(layers: int, stages: int) -> list[int]:
    """Layers per pipeline stage as vLLM's ``get_pp_indices`` splits them by default."""
    parts = [layers // stages] * stages
    for i in range(2, layers % stages + 2):
        parts[-i] += 1
    return parts


def _tp_problems(config: Mapping[str, Any], tp: int) -> list[str]:
    problems = []
    heads = _int(config, "num_attention_heads", "n_head")
    kv = _int(config, "num_key_value_heads", "n_head_kv") or heads
    if heads is not None and heads % tp:
        problems.append(f"its {heads} attention heads do not divide into {tp} ranks")
    if kv is not None and kv % tp and tp % kv:
        problems.append(
            f"its {kv} KV heads neither divide into {tp} ranks nor replicate evenly over them"
        )
    inter = _int(config, "intermediate_size", "ffn_dim", "n_inner")
    if inter is not None and inter % tp:
        problems.append(f"its MLP width (intermediate_size {inter}) does not divide by {tp}")
    vocab = _int(config, "vocab_size")
    if vocab is not None:
        padded = -(-vocab // VOCAB_PADDING) * VOCAB_PADDING
        if padded % tp:
            problems.append(
                f"its vocabulary ({vocab}, padded to {padded}, a multiple of {VOCAB_PADDING}) "
                f"does not divide by {tp}"
            )
    return problems


def model_split_problems(config: Mapping[str, Any], world: World) -> list[str]:
    """Why the model of ``config`` cannot be split into ``world``; empty when it can."""
    config = _text_config(config)
    problems = []
    if world.tensor_parallel_size > 1:
        problems.extend(_tp_problems(config, world.tensor_parallel_size))
    layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
    pp = world.pipeline_parallel_size
    if pp > 1 and layers is not None and layers < pp:
        problems.append(f"its {layers} layer(s) cannot fill {pp} pipeline stages")
    return problems


def check_model_split(spec: CompileSpec, model_dir: Path | None) -> str:
    """Refuse a spec whose world the model cannot be split into; returns a note (or "").

    Reads only ``config.json``, so it runs before vLLM is imported. A model that is not a
    local directory is left to vLLM (its config is not read here).
    """
    world = World.of(spec)
    if world.size == 1 or model_dir is None:
        return ""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    problems = model_split_problems(config, world)
    if problems:
        raise SpecError(
            f"tensor_parallel_size/pipeline_parallel_size: {model_dir.name} cannot be split "
            f"into {world.describe()}: " + "; ".join(problems) + ". Pick sizes that divide "
            "these numbers",
            field="tensor_parallel_size" if world.tensor_parallel_size > 1 else None,
        )
    layers = _int(_text_config(config), "num_hidden_layers", "n_layer", "num_layers")
    if world.pipeline_parallel_size > 1 and layers is not None:
        split = layer_split(layers, world.pipeline_parallel_size)
        if len(set(split)) > 1:
            return f"pipeline stages hold {split} of the {layers} layers (vLLM's uneven split)"
    return ""


def allowed_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity mask), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def check_resources(world: World, *, is_cpu: bool, cores: int, devices: int | None) -> None:
    """Refuse a world that needs more cores (CPU: one per rank at least) or devices than
    this machine gives the process. ``devices`` None: unknown (a cluster executor), no check."""
    if world.size == 1:
        return
    if is_cpu and cores < world.size:
        raise SpecError(
            f"tensor_parallel_size/pipeline_parallel_size: {world.describe()} needs one CPU "
            f"core per rank, and this process may use {cores} "
            f"(os.sched_getaffinity); lower the sizes or run on a machine with more cores",
            field="tensor_parallel_size",
        )
    if not is_cpu and devices is not None and devices < world.size:
        raise SpecError(
            f"tensor_parallel_size/pipeline_parallel_size: {world.describe()} needs one device "
            f"per rank, and {devices} are visible here; lower the sizes, make more devices "
            "visible, or use backend_options.distributed_executor_backend = 'ray' with a "
            "cluster",
            field="tensor_parallel_size",
        )


def numa_nodes(cores: list[int]) -> int:
    """How many NUMA nodes hold ``cores`` (1 where the machine does not say)."""
    root = Path("/sys/devices/system/node")
    wanted = set(cores)
    found = 0
    for node in root.glob("node[0-9]*"):
        try:
            text = (node / "cpulist").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if wanted & set(_parse_cpulist(text)):
            found += 1
    return max(found, 1)


def _parse_cpulist(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            out.extend(range(int(low), int(high or low) + 1))
    return out
