"""Example inputs for ``compile_model_aot``: parsing them and filling open spec fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aot_core.compiler import GenerationParams, Prompt, check_prompts
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec
from aot_core.start_config import declared_model_len, examples_model_len, examples_need

from aot_vllm.model_source import ModelSource
from aot_vllm.shapes import next_pow2, pow2_ladder


@dataclass(frozen=True, kw_only=True)
class ExampleInputs:
    """Prompts the compiled model must serve, and how they will be generated from."""

    prompts: tuple[Prompt, ...]
    """Token-id lists or strings."""

    params: GenerationParams
    """Generation settings (max_new_tokens decides the room needed after a prompt)."""

    @property
    def batch_size(self) -> int:
        """How many prompts run together."""
        return len(self.prompts)

    def longest(self) -> int:
        """The longest prompt in tokens (characters + a margin for text prompts)."""
        return examples_need(self.prompts, 0)


def parse_example_inputs(value: Any) -> ExampleInputs:
    """Accept a list of prompts, one token-id prompt, or a mapping.

    The mapping form is ``{"prompts": [...], "max_new_tokens": n}`` (or ``"params"``).
    """
    params = GenerationParams()
    if isinstance(value, Mapping):
        unknown = set(value) - {"prompts", "max_new_tokens", "params"}
        if unknown:
            raise SpecError(
                f"example_inputs: unknown key(s) {sorted(unknown)}; use 'prompts' and "
                "optionally 'max_new_tokens' or 'params'",
                field="example_inputs",
            )
        if "params" in value:
            p = value["params"]
            params = p if isinstance(p, GenerationParams) else GenerationParams(**dict(p))
        if "max_new_tokens" in value:
            params = dataclasses.replace(params, max_new_tokens=value["max_new_tokens"])
        value = value.get("prompts")
    if isinstance(value, str):
        value = [value]
    elif (
        isinstance(value, Sequence)
        and value
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    ):
        value = [list(value)]
    if value is None or not isinstance(value, Sequence):
        raise SpecError(
            "example_inputs: pass a list of prompts (token-id lists or strings), or "
            "{'prompts': [...], 'max_new_tokens': n}",
            field="example_inputs",
        )
    try:
        check_prompts(value)
    except SpecError as exc:
        raise SpecError(f"example_inputs: {exc}", field="example_inputs") from None
    return ExampleInputs(prompts=tuple(value), params=params)


def inform_spec(
    spec: CompileSpec, examples: ExampleInputs, source: ModelSource
) -> tuple[CompileSpec, list[str]]:
    """Fill the fields the user left open from the examples; returns the spec and notes.

    - ``max_model_len``: the next power of two (at least 128) above the longest prompt plus
      ``max_new_tokens``, capped at the model's ``max_position_embeddings``; a smaller
      context means less KV cache per sequence and a cache key shared by equal workloads.
    - ``cuda_graph_sizes`` (when CUDA graphs are on): 1, 2, 4, ... up to the next power of
      two above the batch size, so every batch size seen replays a captured graph.
    Fields the user set are never changed; an example that does not fit them is an error.
    """
    notes: list[str] = []
    changes: dict[str, Any] = {}
    need = examples_need(examples.prompts, examples.params.max_new_tokens)
    limit = declared_model_len(source.local_dir)
    if spec.max_model_len is None:
        if limit is not None and need > limit:
            raise SpecError(
                f"example_inputs: the longest prompt plus max_new_tokens needs {need} "
                f"tokens, more than the model's max_position_embeddings {limit}",
                field="example_inputs",
            )
        # aot-core's rule, so a command that resolves its start first gets the same value.
        value = examples_model_len(spec, need, limit)
        changes["max_model_len"] = value
        notes.append(f"max_model_len={value} from the examples (longest needs {need} tokens)")
    elif need > spec.max_model_len:
        raise SpecError(
            f"example_inputs: the longest prompt plus max_new_tokens needs {need} tokens, more "
            f"than the spec's max_model_len {spec.max_model_len}; raise max_model_len",
            field="example_inputs",
        )
    if spec.cuda_graphs and spec.compiles and spec.cuda_graph_sizes is None:
        top = next_pow2(examples.batch_size)
        if spec.max_num_seqs is not None:
            top = min(top, spec.max_num_seqs)
        sizes = pow2_ladder(top)
        changes["cuda_graph_sizes"] = sizes
        notes.append(
            f"cuda_graph_sizes={sizes} from the examples (batch size {examples.batch_size})"
        )
    if spec.max_num_seqs is not None and examples.batch_size > spec.max_num_seqs:
        notes.append(
            f"the examples run {examples.batch_size} prompts at once, more than max_num_seqs "
            f"{spec.max_num_seqs}; vLLM queues the rest"
        )
    return (spec.replace(**changes) if changes else spec), notes
