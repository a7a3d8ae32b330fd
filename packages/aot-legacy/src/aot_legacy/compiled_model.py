"""``LegacyCompiledModel``: the aot-core compiled-model interface over a static-KV generator."""

from __future__ import annotations

import gc
import resource
import sys
from collections.abc import Sequence
from typing import Any

import torch
from aot_core.compiler import CompiledModel, Generation, GenerationParams, Prompt, check_prompts
from aot_core.errors import AOTError, SpecError
from aot_core.scoring import Score, ScoreRequest, check_score_requests
from aot_core.stats import OptimizationStats

from aot_legacy.cuda_graphs import CUDAGraphOptimizer
from aot_legacy.generation import GenerateTimings, StaticKVGenerator, StopFn, score_requests
from aot_legacy.step_compiler import StepCompiler


def _cut(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first stop string in it, as vLLM returns a stopped text."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text


def peak_host_memory_bytes() -> int:
    """Peak resident memory of this process."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class LegacyCompiledModel(CompiledModel):
    """A model compiled by the legacy backend, ready to ``generate``."""

    def __init__(
        self,
        *,
        generator: StaticKVGenerator,
        stats: OptimizationStats,
        tokenizer: Any | None,
        owned: list[Any],
        graphs: CUDAGraphOptimizer | None,
        compiler: StepCompiler | None,
        module_name: str | None = None,
    ) -> None:
        self._generator: StaticKVGenerator | None = generator
        self._stats = stats
        self.tokenizer = tokenizer
        self._owned = owned
        self.graphs = graphs
        self._compiler = compiler
        self.last_timings: GenerateTimings | None = None
        """Timings of the most recent generate call (decode seconds, token counts)."""
        self.module_name = module_name
        """The transformers module class this was compiled from, when the caller passed one:
        then the compiled model is called like it (``module_call``); else None."""

    @property
    def stats(self) -> OptimizationStats:
        return self._stats

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._generator is None

    def encode(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Token ids of each prompt; text needs the tokenizer saved beside the model."""
        out: list[list[int]] = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise SpecError(
                        f"prompts[{i}]: text prompts need a tokenizer, and this model has "
                        "none; pass token ids, or a model directory with tokenizer files",
                        field="prompts",
                    )
                ids = list(self.tokenizer(p)["input_ids"])
                if not ids:
                    raise SpecError(f"prompts[{i}]: the text encodes to no tokens")
                out.append(ids)
            else:
                out.append([int(t) if not isinstance(t, bool) else t for t in p])
        return out

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams | None = None
    ) -> list[Generation]:
        if self._generator is None:
            raise AOTError("this compiled model is closed; compile the model again to generate")
        check_prompts(prompts)
        params = params if params is not None else GenerationParams()
        token_prompts = self.encode(prompts)
        results, timings = self._generator.generate(token_prompts, params, self._stop_fn(params))
        self.last_timings = timings
        generations = []
        for prompt, (tokens, reason) in zip(token_prompts, results, strict=True):
            text = None
            if self.tokenizer is not None:
                text = _cut(self.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
            generations.append(
                Generation(
                    prompt_token_ids=tuple(prompt),
                    token_ids=tuple(tokens),
                    text=text,
                    finish_reason=reason,
                )
            )
        self._update_stats(timings)
        return generations

    def _stop_fn(self, params: GenerationParams) -> StopFn | None:
        """Ends a row once its text holds a stop string; None without stop strings or a
        tokenizer (the caller cuts then, as GenerationParams.stop says)."""
        if not params.stop or self.tokenizer is None:
            return None
        decode, stops = self.tokenizer.decode, params.stop

        def reached(tokens: Sequence[int]) -> bool:
            # Special tokens kept: ``aot eval`` cuts the text decoded this way, so a row
            # ends exactly where its cut text can no longer change.
            text = decode(tokens, skip_special_tokens=False)
            return any(s in text for s in stops)

        return reached

    @property
    def max_model_len(self) -> int | None:
        """Positions in the static KV cache: the longest context plus continuation to score."""
        return self._generator.max_seq if self._generator is not None else None

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        """Log-likelihood of each continuation given its context, from this model's own
        prefill step: one forward per batch of full sequences, longest first."""
        if self._generator is None:
            raise AOTError("this compiled model is closed; compile the model again to score")
        check_score_requests(requests, self.max_model_len)
        vocab = self._generator.vocab_size
        pairs: list[tuple[list[int], list[int]]] = []
        for i, (context, continuation) in enumerate(requests):
            ids = [list(context), list(continuation)]
            for tok in ids[0] + ids[1]:
                if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok < vocab:
                    raise SpecError(
                        f"requests[{i}]: token id {tok!r} is outside the vocabulary [0, {vocab})",
                        field="requests",
                    )
            pairs.append((ids[0], ids[1]))
        return [
            Score(logprob=sum(lps), is_greedy=all(greedy), token_logprobs=tuple(lps))
            for lps, greedy in score_requests(self._generator, pairs)
        ]

    def __call__(self, input_ids: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Called like the transformers module it was compiled from: ``input_ids``,
        ``attention_mask``, ``labels``; returns its output type, logits computed by the
        compiled steps (``aot_legacy.module_call``)."""
        if self.module_name is None:
            raise TypeError(
                "this compiled model was not compiled from a transformers module, so it is not "
                "called like one; use generate(prompts, params) (or score) instead"
            )
        if self._generator is None:
            raise AOTError("this compiled model is closed; compile the model again to call it")
        from aot_legacy.module_call import module_call

        if args:  # forward(input_ids, attention_mask, ...) positionally, as modules allow
            names = ("attention_mask", "position_ids", "past_key_values")
            for name, value in zip(names, args, strict=False):
                if name in kwargs:
                    raise TypeError(f"compiled model got {name!r} twice")
                kwargs[name] = value
            if len(args) > len(names):
                raise TypeError("compiled model takes input_ids and keywords; pass keywords")
        return module_call(self._generator, input_ids, **kwargs)

    def _update_stats(self, t: GenerateTimings) -> None:
        device_peak = None
        if self._generator is not None and self._generator.device.type == "cuda":
            device_peak = int(torch.cuda.max_memory_allocated(self._generator.device))
        self._stats = self._stats.replace(
            prompt_tokens_per_s=t.prompt_tokens / t.prefill_s if t.prefill_s > 0 else None,
            output_tokens_per_s=t.output_tokens / t.total_s if t.total_s > 0 else None,
            time_to_first_token_s=(
                sum(t.first_token_s) / len(t.first_token_s) if t.first_token_s else None
            ),
            peak_host_memory_bytes=peak_host_memory_bytes(),
            peak_device_memory_bytes=device_peak or self._stats.peak_device_memory_bytes,
        )

    def close(self) -> None:
        if self._generator is None:
            return
        device = self._generator.device
        self._generator = None
        if self.graphs is not None:
            self.graphs.close()
            self.graphs = None
        if self._compiler is not None:
            self._compiler.close()
        self._owned.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
