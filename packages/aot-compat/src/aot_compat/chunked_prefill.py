"""The old chunked-prefill helper on top of ``CompileSpec`` and aot-vllm's planner.

The old ``VLLMChunkedPrefillConfig`` handed vLLM ``max_num_partial_prefills=4``, which no
V1 release ever ran with (it raises from 0.11.1 and is gone in 0.27), and guessed the
threshold from dataset statistics. Here the config becomes ``CompileSpec`` settings, and
recommendations come from ``aot_vllm.plan_chunked_prefill`` (a measured sweep or a
documented rule, and it says which), loaded only when asked for.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aot_compat.errors import LegacyConfigWarning
from aot_compat.facade import CompatCompiler


@dataclass(kw_only=True)
class VLLMChunkedPrefillConfig:
    """The old chunked-prefill settings; ``to_config()`` gives keys ``compile_model_aot`` takes."""

    enable_chunked_prefill: bool = True
    """Split long prompts into chunks that share engine steps with decodes."""

    long_prefill_token_threshold: int = 0
    """Most prompt tokens of one request per engine step; 0 lets vLLM decide (no cap)."""

    max_num_batched_tokens: int | None = None
    """Token budget of one engine step; None lets the backend choose."""

    max_num_partial_prefills: int = 1
    """Kept for old callers; vLLM's V1 engine only ever ran with 1 (others warn)."""

    max_long_partial_prefills: int = 1
    """Kept for old callers; vLLM's V1 engine only ever ran with 1 (others warn)."""

    auto_detect_threshold: bool = False
    """Kept for old callers; use ``plan()`` for a recommendation."""

    def to_config(self) -> dict[str, Any]:
        """The settings as a config dict for ``compile_model_aot(model, inputs, config)``."""
        config: dict[str, Any] = {
            "enable_chunked_prefill": self.enable_chunked_prefill,
            "max_num_partial_prefills": self.max_num_partial_prefills,
            "max_long_partial_prefills": self.max_long_partial_prefills,
        }
        if self.enable_chunked_prefill:
            config["long_prefill_token_threshold"] = self.long_prefill_token_threshold
        if self.max_num_batched_tokens is not None:
            config["max_num_batched_tokens"] = self.max_num_batched_tokens
        if self.auto_detect_threshold:
            config["auto_detect_threshold"] = True
        return config

    def to_engine_args(self) -> dict[str, Any]:
        """Deprecated: vLLM keywords that every supported release accepts.

        Partial-prefill values other than 1 are left out with a ``LegacyConfigWarning``; the
        backend builds the real engine arguments for the installed release.
        """
        warnings.warn(
            "VLLMChunkedPrefillConfig.to_engine_args() is deprecated: pass to_config() to "
            "compile_model_aot, and aot-vllm spells it for the installed vLLM",
            DeprecationWarning,
            stacklevel=2,
        )
        for name in ("max_num_partial_prefills", "max_long_partial_prefills"):
            if getattr(self, name) != 1:
                warnings.warn(
                    f"{name}={getattr(self, name)} left out: vLLM's V1 engine never supported "
                    "concurrent partial prefills (raises from 0.11.1, gone in 0.27)",
                    LegacyConfigWarning,
                    stacklevel=2,
                )
        args: dict[str, Any] = {"enable_chunked_prefill": self.enable_chunked_prefill}
        if self.enable_chunked_prefill:
            args["long_prefill_token_threshold"] = self.long_prefill_token_threshold
        if self.max_num_batched_tokens is not None:
            args["max_num_batched_tokens"] = self.max_num_batched_tokens
        return args


def _length(item: Any) -> int:
    if hasattr(item, "shape") and len(item.shape) > 0:
        return int(item.shape[-1])
    return len(item) if hasattr(item, "__len__") else 0


class VLLMChunkedPrefillOptimizer:
    """The old optimizer object: decides whether prompts are long enough to chunk, and asks
    aot-vllm's planner for settings."""

    def __init__(self, config: VLLMChunkedPrefillConfig | None = None) -> None:
        self.config = config if config is not None else VLLMChunkedPrefillConfig()
        self.stats: dict[str, Any] = {"sequences_analyzed": 0, "chunked_sequences": 0}

    def should_enable_for_model(
        self, example_inputs: Sequence[Any], dataset_info: Mapping[str, Any] | None = None
    ) -> bool:
        """Whether any example (or the dataset's longest prompt) exceeds the threshold.

        With no threshold set (0) chunking is always on, as vLLM does by default.
        """
        longest = max((_length(x) for x in example_inputs), default=0)
        if dataset_info and "max_tokens_est" in dataset_info:
            longest = max(longest, int(dataset_info["max_tokens_est"]))
        self.stats["sequences_analyzed"] += len(example_inputs)
        threshold = self.config.long_prefill_token_threshold
        enabled = self.config.enable_chunked_prefill and (threshold == 0 or longest > threshold)
        self.stats["chunked_sequences"] += int(enabled)
        return enabled

    def get_vllm_engine_config(
        self, base_config: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``base_config`` with the chunked-prefill keys added (old config-dict form)."""
        return {**(base_config or {}), **self.config.to_config()}

    def plan(
        self, prompts: Sequence[Sequence[int] | str], *, max_new_tokens: int = 16, **kwargs: Any
    ) -> Any:
        """aot-vllm's recommendation (``max_num_batched_tokens``, ``max_num_seqs``) for
        serving ``prompts`` together: its documented rule, or a measured sweep with
        ``measure=True, model=...`` (see ``aot_vllm.plan_chunked_prefill``)."""
        try:
            from aot_vllm import chunked_prefill
        except ImportError as exc:
            raise ImportError(
                f"chunked-prefill planning needs aot-vllm: pip install aot-vllm ({exc})"
            ) from exc
        workload = chunked_prefill.Workload.from_prompts(
            list(prompts), max_new_tokens=max_new_tokens
        )
        return chunked_prefill.plan_chunked_prefill(workload, **kwargs)

    def analyze_dataset_for_optimal_threshold(self, dataset_stats: Sequence[Any]) -> int:
        """Deprecated: returns the configured threshold unchanged.

        The old method guessed a threshold from dataset statistics with a fixed rule; use
        ``plan()`` for a recommendation that says how it was reached.
        """
        warnings.warn(
            "analyze_dataset_for_optimal_threshold() no longer guesses a threshold; use "
            "VLLMChunkedPrefillOptimizer.plan(prompts) (aot_vllm.plan_chunked_prefill)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.config.long_prefill_token_threshold

    def get_statistics(self) -> dict[str, Any]:
        """Old statistics dict: what was analysed and the current settings."""
        return {
            **self.stats,
            "current_threshold": self.config.long_prefill_token_threshold,
            "chunking_enabled": self.config.enable_chunked_prefill,
        }


def create_vllm_enhanced_compiler(
    enable_chunked_prefill: bool = True,
    chunking_threshold: int | None = None,
    max_chunks_per_request: int | None = None,
    **other_kwargs: Any,
) -> CompatCompiler:
    """The old factory: ``create_enhanced_compiler`` with chunked-prefill settings.

    ``chunking_threshold=None`` lets vLLM decide (it used to mean a guess of 2048);
    ``max_chunks_per_request`` other than 1 warns, since V1 vLLM never honoured it.
    """
    from engines.shared import create_enhanced_compiler

    options: dict[str, Any] = {"enable_chunked_prefill": enable_chunked_prefill}
    if chunking_threshold is not None:
        options["chunking_threshold"] = chunking_threshold
    if max_chunks_per_request is not None:
        options["max_chunks_per_request"] = max_chunks_per_request
    return create_enhanced_compiler(**options, **other_kwargs)
