"""``ToyCompiledModel``: greedy decoding through a next-token lookup."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from aot_core.compiler import CompiledModel, Generation, GenerationParams, Prompt, check_prompts
from aot_core.errors import AOTError, SpecError
from aot_core.stats import OptimizationStats


class ToyCompiledModel(CompiledModel):
    """Generates by following ``next_token`` from each prompt's last token."""

    def __init__(
        self,
        *,
        next_token: Callable[[int], int],
        vocab_size: int,
        eos_ids: frozenset[int],
        stats: OptimizationStats,
        fail_on_close: bool = False,
    ) -> None:
        self._fail_on_close = fail_on_close  # backend_options.fail = "close" (ToyOptions)
        self._next = next_token
        self._vocab = vocab_size
        self._eos = eos_ids
        self._stats = stats
        self._closed = False

    def _ids(self, prompt: Prompt, index: int) -> tuple[int, ...]:
        ids = tuple(prompt.encode()) if isinstance(prompt, str) else tuple(prompt)
        if any(not 0 <= t < self._vocab for t in ids):
            raise SpecError(f"prompts[{index}]: token ids must be in [0, {self._vocab})")
        return ids

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams | None = None
    ) -> list[Generation]:
        """Greedy continuation of each prompt (text prompts are read as UTF-8 bytes)."""
        if self._closed:
            raise AOTError("the toy model was closed; compile it again to generate")
        params = params if params is not None else GenerationParams()
        if not params.greedy:
            raise SpecError("temperature: the toy backend decodes greedily only; use 0")
        check_prompts(prompts)
        start = time.perf_counter()
        out = []
        for i, prompt in enumerate(prompts):
            ids = self._ids(prompt, i)
            token, generated, reason = ids[-1], [], "length"
            for _ in range(params.max_new_tokens):
                token = self._next(token)
                generated.append(token)
                if params.stop_on_eos and token in self._eos:
                    reason = "stop"
                    break
            out.append(
                Generation(prompt_token_ids=ids, token_ids=tuple(generated), finish_reason=reason)
            )
        elapsed = max(time.perf_counter() - start, 1e-9)
        self._stats = self._stats.replace(
            output_tokens_per_s=sum(len(g.token_ids) for g in out) / elapsed,
            prompt_tokens_per_s=sum(len(g.prompt_token_ids) for g in out) / elapsed,
        )
        return out

    @property
    def stats(self) -> OptimizationStats:
        """How this model was built, and the throughput of the last generate call."""
        return self._stats

    def close(self) -> None:
        """Nothing to release but the table; calling it twice is harmless."""
        self._closed = True
        if self._fail_on_close:
            raise RuntimeError("toy backend: close failure asked for (backend_options.fail)")
