"""``VLLMCompiledModel``: a running ``vllm.LLM`` behind the aot-core ``CompiledModel`` interface."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aot_core.compiler import (
    CompiledModel,
    Generation,
    GenerationParams,
    Prompt,
    check_prompts,
)
from aot_core.errors import AOTError, SpecError
from aot_core.scoring import Score, ScoreRequest, check_score_requests
from aot_core.spec import CompileSpec
from aot_core.stats import OptimizationStats

from aot_vllm import engine as engine_mod
from aot_vllm import process_tree
from aot_vllm.engine_env import EnvPatch
from aot_vllm.model_source import ModelSource
from aot_vllm.vllm_logs import LogCapture


class VLLMCompiledModel(CompiledModel):
    """A model compiled and served by vLLM; generate with token ids (or text with a tokenizer)."""

    def __init__(
        self,
        *,
        running: engine_mod.RunningEngine,
        source: ModelSource,
        stats: OptimizationStats,
        env: EnvPatch,
        log_capture: LogCapture,
        memory: process_tree.PeakMemory,
        has_tokenizer: bool,
        vocab_size: int | None,
        eos_token_ids: tuple[int, ...],
        llm_kwargs: dict[str, Any],
        engine_env: dict[str, str] | None = None,
        spec: CompileSpec | None = None,
    ) -> None:
        self._running: engine_mod.RunningEngine | None = running
        self.source = source
        self._stats = stats
        self._env = env
        self._log_capture = log_capture
        self._memory = memory
        self.has_tokenizer = has_tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.llm_kwargs = dict(llm_kwargs)
        """The keyword arguments the engine was built with (``model`` excluded)."""
        self.spec = spec
        """The spec this model was built from (after ``compile_model_aot`` filled it in)."""
        self.engine_env = dict(engine_env or {})
        """Environment variables set for this engine (restored on ``close``)."""
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ engine access

    @property
    def llm(self) -> Any:
        """The underlying ``vllm.LLM`` (raises after ``close``)."""
        if self._running is None or self._running.llm is None:
            raise AOTError("this compiled model is closed; compile the model again to use it")
        return self._running.llm

    @property
    def closed(self) -> bool:
        """Whether ``close`` has run."""
        return self._running is None

    @property
    def engine_pids(self) -> set[int]:
        """Pids of the engine processes this model started (empty for an in-process engine)."""
        return set(self._running.spawned) if self._running is not None else set()

    # ------------------------------------------------------------------ generation

    def _prompts(self, prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
        check_prompts(prompts)
        out: list[dict[str, Any]] = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                if not self.has_tokenizer:
                    raise SpecError(
                        f"prompts[{i}]: a text prompt needs a tokenizer, and this model was "
                        "started without one; pass token ids instead",
                        field="prompts",
                    )
                out.append({"prompt": prompt})
                continue
            ids = list(prompt)
            for j, tok in enumerate(ids):
                if (
                    isinstance(tok, bool)
                    or not isinstance(tok, int)
                    or tok < 0
                    or (self.vocab_size is not None and tok >= self.vocab_size)
                ):
                    limit = f" below {self.vocab_size}" if self.vocab_size is not None else ""
                    raise SpecError(
                        f"prompts[{i}][{j}]: token id {tok!r} is not an integer >= 0{limit}",
                        field="prompts",
                    )
            out.append({"prompt_token_ids": ids})
        return out

    def sampling_params(self, params: GenerationParams) -> Any:
        """The ``vllm.SamplingParams`` for ``params``."""
        from vllm import SamplingParams

        kwargs: dict[str, Any] = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            # -1 means "all tokens" in every release; 0 is rejected by older ones.
            "top_k": params.top_k if params.top_k > 0 else -1,
            "ignore_eos": not params.stop_on_eos,
            "detokenize": self.has_tokenizer,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.stop and self.has_tokenizer:
            # Text stops need the tokenizer; without one the caller cuts the text itself.
            kwargs["stop"] = list(params.stop)
        if params.stop_on_eos and not self.has_tokenizer and self.eos_token_ids:
            # Without a tokenizer vLLM does not know the EOS id; the model config does.
            kwargs["stop_token_ids"] = list(self.eos_token_ids)
        return SamplingParams(**kwargs)

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams | None = None
    ) -> list[Generation]:
        """Generate for each prompt (greedy unless ``params.temperature > 0``)."""
        params = params or GenerationParams()
        inputs = self._prompts(prompts)
        sampling = self.sampling_params(params)
        with self._lock:
            llm = self.llm
            t0 = time.perf_counter()
            outputs = llm.generate(inputs, sampling, use_tqdm=False)
            elapsed = time.perf_counter() - t0
            self._memory.sample()
        results: list[Generation] = []
        n_prompt = n_out = 0
        ttfts: list[float] = []
        for out in outputs:
            completion = out.outputs[0]
            prompt_ids = tuple(int(t) for t in (out.prompt_token_ids or ()))
            token_ids = tuple(int(t) for t in completion.token_ids)
            n_prompt += len(prompt_ids)
            n_out += len(token_ids)
            metrics = getattr(out, "metrics", None)
            latency = getattr(metrics, "first_token_latency", None)
            if isinstance(latency, (int, float)) and latency > 0:
                ttfts.append(float(latency))
            reason = completion.finish_reason or ""
            results.append(
                Generation(
                    prompt_token_ids=prompt_ids,
                    token_ids=token_ids,
                    text=completion.text if self.has_tokenizer else None,
                    finish_reason=str(reason),
                )
            )
        ttft = sum(ttfts) / len(ttfts) if ttfts else None
        # Prefill of the whole batch ends by the last first token; that bounds prompt speed.
        prefill_s = max(ttfts) if ttfts else None
        self._stats = self._stats.replace(
            output_tokens_per_s=n_out / elapsed if elapsed > 0 else None,
            prompt_tokens_per_s=(n_prompt / prefill_s) if prefill_s else None,
            time_to_first_token_s=ttft,
            peak_host_memory_bytes=self._memory.peak,
        )
        return results

    # ------------------------------------------------------------------ scoring

    @property
    def max_model_len(self) -> int | None:
        """Longest context plus continuation ``score`` accepts: the engine's max_model_len
        less one, because vLLM needs room for one generated token after any prompt."""
        if self._running is None:
            return None
        limit = self._stats.resolved_config.get("max_model_len")  # what the engine resolved
        return limit - 1 if isinstance(limit, int) else None

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        """Log-likelihood of each continuation given its context, from vLLM's prompt
        log-probabilities (one engine call for the whole batch)."""
        check_score_requests(requests, self.max_model_len)
        inputs = self._prompts([[*context, *continuation] for context, continuation in requests])
        from vllm import SamplingParams

        # Every supported release (0.10.2-0.33) spells this the same: prompt_logprobs=k
        # returns, per prompt position after the first, a {token id: Logprob} dict holding
        # the prompt's own token and the k most likely ones; k=1 is enough for is_greedy.
        # Prefix-cache hits would skip positions, so vLLM itself bypasses reading the
        # prefix cache for such requests (0.10.2-0.11.0 in the KV-cache manager, 0.11.1+
        # through SamplingParams.skip_reading_prefix_cache).
        sampling = SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False
        )
        with self._lock:
            outputs = self.llm.generate(inputs, sampling, use_tqdm=False)
            self._memory.sample()
        return [
            _score_from_prompt_logprobs(
                out.prompt_logprobs, [*context, *continuation], len(context)
            )
            for out, (context, continuation) in zip(outputs, requests, strict=True)
        ]

    # ------------------------------------------------------------------ stats and close

    @property
    def stats(self) -> OptimizationStats:
        """Build and run stats; throughput fields describe the last ``generate`` call."""
        return self._stats

    def _set_stats(self, stats: OptimizationStats) -> None:
        self._stats = stats

    def close(self) -> None:
        """Stop the engine: no engine process survives and its memory is released."""
        running, self._running = self._running, None
        if running is None:
            return
        try:
            signalled = engine_mod.stop(running)
            if signalled:
                self._stats = self._stats.replace(
                    notes=(
                        *self._stats.notes,
                        f"engine processes {sorted(signalled)} had to be terminated on close",
                    )
                )
        finally:
            self._log_capture.detach()
            self._env.restore()

    def __del__(self) -> None:
        # A model dropped without close() must not leave engine processes behind.
        try:
            if getattr(self, "_running", None) is not None:
                self.close()
        except Exception:
            pass


def _score_from_prompt_logprobs(prompt_logprobs: Any, ids: Sequence[int], start: int) -> Score:
    """The score of ``ids[start:]`` from one request's ``RequestOutput.prompt_logprobs``."""
    if prompt_logprobs is None or len(prompt_logprobs) != len(ids):
        got = "none" if prompt_logprobs is None else len(prompt_logprobs)
        raise AOTError(
            f"vLLM returned {got} prompt log-probabilities for a {len(ids)}-token request; "
            "scoring needs one per position"
        )
    values: list[float] = []
    greedy = True
    for position in range(start, len(ids)):
        entry = prompt_logprobs[position]
        # Logprob objects (every supported release), or bare floats from older ones.
        ranked = {int(t): float(getattr(lp, "logprob", lp)) for t, lp in entry.items()}
        value = ranked[int(ids[position])]
        values.append(value)
        greedy = greedy and value >= max(ranked.values())
    return Score(logprob=sum(values), is_greedy=greedy, token_logprobs=tuple(values))


def model_token_facts(local_dir: Path | None) -> tuple[int | None, tuple[int, ...]]:
    """(vocab size, EOS ids) read from a local model's config files."""
    if local_dir is None:
        return None, ()
    vocab: int | None = None
    eos: list[int] = []
    for name in ("config.json", "generation_config.json"):
        try:
            data = json.loads((local_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if name == "config.json" and isinstance(data.get("vocab_size"), int):
            vocab = data["vocab_size"]
        value = data.get("eos_token_id")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and item not in eos:
                eos.append(item)
    return vocab, tuple(eos)
