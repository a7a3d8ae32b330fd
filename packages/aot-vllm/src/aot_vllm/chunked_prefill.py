"""Chunked prefill: the settings, and a planner that picks the per-step token budget.

With chunked prefill vLLM splits a long prompt into chunks that share an engine step
with the decodes of running sequences. Two knobs decide the trade-off:
``max_num_batched_tokens`` (the step's token budget: larger means faster prefill but
longer steps, so running sequences wait longer between tokens) and ``max_num_seqs``
(how many sequences decode together).

``plan_chunked_prefill(workload)`` recommends both, either by a documented rule (no
engine) or by a measured sweep on the real engine (``measure=True``); the plan says
which it did and carries every measurement.

The rule:

* ``max_num_seqs`` = the next power of two at or above the number of requests that run
  together, capped at 256 (vLLM's CPU default, and its GPU default for smaller cards):
  more slots than requests buys nothing, and fewer makes requests queue.
* ``max_num_batched_tokens`` = the next power of two at or above
  ``p90(prompt length) + max_num_seqs``, at least 256 and at most 16384: one step then
  holds a decode token for every running sequence plus a typical prompt whole, so most
  prompts prefill in one step and only the long tail is chunked.
* with chunked prefill off the budget must also cover the longest prompt plus its output
  (vLLM refuses a budget below ``max_model_len``), so it is raised to that.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aot_core.compiler import GenerationParams, Prompt
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

from aot_vllm.shapes import next_pow2
from aot_vllm.translate import scheduler_args

RULE_MIN_BUDGET = 256
RULE_MAX_BUDGET = 16384
RULE_MAX_SEQS = 256


@dataclass(frozen=True, kw_only=True)
class ChunkedPrefillSettings:
    """The chunked-prefill part of a ``CompileSpec``."""

    enabled: bool = True
    """Split long prompts into chunks scheduled beside decodes."""

    max_num_batched_tokens: int | None = None
    """Token budget per engine step; None keeps vLLM's default."""

    max_num_seqs: int | None = None
    """Most sequences per step; None keeps vLLM's default."""

    long_prefill_token_threshold: int = 0
    """Cap on one prompt's tokens per step (0: no cap)."""

    def apply(self, spec: CompileSpec) -> CompileSpec:
        """``spec`` with these settings (validated by ``CompileSpec``)."""
        return spec.replace(
            chunked_prefill=self.enabled,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_num_seqs=self.max_num_seqs,
            long_prefill_token_threshold=self.long_prefill_token_threshold,
        )

    def engine_kwargs(self) -> dict[str, Any]:
        """The vLLM engine arguments these settings become (None values left out)."""
        return scheduler_args(self.apply(CompileSpec()))


def chunked_prefill_settings(
    *,
    enabled: bool = True,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    long_prefill_token_threshold: int = 0,
    max_model_len: int | None = None,
) -> ChunkedPrefillSettings:
    """Validated chunked-prefill settings; errors name the setting and the fix.

    ``CompileSpec`` checks these fields (and ``max_model_len``, which is only checked
    against the budget, not kept); nothing about them is vLLM-specific.
    """
    CompileSpec(
        chunked_prefill=enabled,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        long_prefill_token_threshold=long_prefill_token_threshold,
        max_model_len=max_model_len,
    )
    return ChunkedPrefillSettings(
        enabled=enabled,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        long_prefill_token_threshold=long_prefill_token_threshold,
    )


@dataclass(frozen=True, kw_only=True)
class Workload:
    """Requests to serve together: their prompt and output lengths (and prompts, if known)."""

    prompt_lengths: tuple[int, ...]
    """Prompt length of each request, in tokens."""

    output_lengths: tuple[int, ...]
    """Tokens generated for each request."""

    prompts: tuple[Prompt, ...] | None = None
    """The prompts themselves, when given (a sweep runs them as they are)."""

    def __post_init__(self) -> None:
        if not self.prompt_lengths:
            raise SpecError("workload: no requests")
        if len(self.prompt_lengths) != len(self.output_lengths):
            raise SpecError("workload: prompt_lengths and output_lengths differ in length")
        if min(self.prompt_lengths) < 1 or min(self.output_lengths) < 1:
            raise SpecError("workload: every prompt and output length must be >= 1")

    @classmethod
    def from_prompts(cls, prompts: Sequence[Prompt], *, max_new_tokens: int = 16) -> Workload:
        """A workload of these prompts, each generating ``max_new_tokens``."""
        lengths = tuple(len(p.encode()) if isinstance(p, str) else len(p) for p in prompts)
        return cls(
            prompt_lengths=lengths,
            output_lengths=(max_new_tokens,) * len(lengths),
            prompts=tuple(prompts),
        )

    @classmethod
    def from_distribution(
        cls,
        *,
        num_requests: int,
        prompt_mean: float,
        prompt_max: int,
        output_mean: float,
        output_max: int | None = None,
    ) -> Workload:
        """A deterministic workload with these means and maxima (no randomness)."""
        if num_requests < 1:
            raise SpecError("workload: num_requests must be >= 1")
        if not 1 <= prompt_mean <= prompt_max:
            raise SpecError("workload: need 1 <= prompt_mean <= prompt_max")
        out_max = output_max if output_max is not None else max(1, round(output_mean))
        if not 1 <= output_mean <= out_max:
            raise SpecError("workload: need 1 <= output_mean <= output_max")

        def spread(mean: float, top: int) -> tuple[int, ...]:
            # A linear ramp up to the max keeps the mean when it can (mean >= max / 2);
            # otherwise one request at the max (the long tail) and the rest equal.
            n = num_requests
            if n == 1:
                return (max(1, round(mean)),)
            low = 2 * mean - top
            if low >= 1:
                return tuple(round(low + (top - low) * i / (n - 1)) for i in range(n))
            rest = max(1, round((mean * n - top) / (n - 1)))
            return (*([rest] * (n - 1)), top)

        return cls(
            prompt_lengths=spread(prompt_mean, prompt_max),
            output_lengths=spread(output_mean, out_max),
        )

    def percentile(self, q: float, *, of: Literal["prompt", "output"] = "prompt") -> int:
        """The q-th percentile (0-100) of prompt or output lengths (nearest rank)."""
        data = sorted(self.prompt_lengths if of == "prompt" else self.output_lengths)
        rank = max(1, math.ceil(q / 100 * len(data)))
        return data[rank - 1]


@dataclass(frozen=True, kw_only=True)
class SweepPoint:
    """One measured setting of a sweep."""

    max_num_batched_tokens: int
    """Token budget tried."""

    max_num_seqs: int
    """Sequence slots tried."""

    wall_s: float
    """Seconds to serve the whole workload (after start-up)."""

    total_tokens_per_s: float
    """(prompt + output tokens) / wall_s."""

    output_tokens_per_s: float
    """output tokens / wall_s."""

    time_to_first_token_s: float | None
    """Mean time to first token reported by vLLM."""


@dataclass(frozen=True, kw_only=True)
class PrefillPlan:
    """A recommendation, how it was reached, and what was measured on the way."""

    max_num_batched_tokens: int
    """Recommended token budget per step."""

    max_num_seqs: int
    """Recommended sequence slots."""

    enabled: bool
    """Chunked prefill on (the planner keeps the caller's choice)."""

    method: Literal["rule", "measured sweep"]
    """How the numbers were chosen."""

    rationale: str
    """Why, in words (the rule applied, or the winning measurement)."""

    measurements: tuple[SweepPoint, ...] = field(default_factory=tuple)
    """Every sweep point, in the order measured (empty for the rule)."""

    def settings(self) -> ChunkedPrefillSettings:
        """The plan as settings ready to ``apply`` to a spec."""
        return chunked_prefill_settings(
            enabled=self.enabled,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_num_seqs=self.max_num_seqs,
        )

    def describe(self) -> str:
        """A few lines for people."""
        lines = [
            f"chunked prefill plan ({self.method}): max_num_batched_tokens="
            f"{self.max_num_batched_tokens}, max_num_seqs={self.max_num_seqs}",
            f"  why: {self.rationale}",
        ]
        for p in self.measurements:
            ttft = f"{p.time_to_first_token_s:.3f} s" if p.time_to_first_token_s else "-"
            lines.append(
                f"  measured budget={p.max_num_batched_tokens:>6} seqs={p.max_num_seqs:>4}: "
                f"{p.total_tokens_per_s:9.1f} tok/s total, {p.output_tokens_per_s:8.1f} "
                f"output tok/s, TTFT {ttft}, {p.wall_s:.2f} s"
            )
        return "\n".join(lines)


def rule_plan(workload: Workload, *, enabled: bool = True) -> PrefillPlan:
    """The documented rule (see the module docstring); no engine is started."""
    seqs = min(RULE_MAX_SEQS, next_pow2(len(workload.prompt_lengths)))
    p90 = workload.percentile(90)
    budget = min(RULE_MAX_BUDGET, max(RULE_MIN_BUDGET, next_pow2(p90 + seqs)))
    why = (
        f"{len(workload.prompt_lengths)} requests -> {seqs} sequence slots; p90 prompt "
        f"{p90} tokens + {seqs} decode tokens -> budget {budget}"
    )
    if not enabled:
        need = max(
            p + o for p, o in zip(workload.prompt_lengths, workload.output_lengths, strict=True)
        )
        if budget < need:
            budget = need
            why += f"; chunked prefill is off, so the budget covers the longest request ({need})"
    return PrefillPlan(
        max_num_batched_tokens=budget,
        max_num_seqs=seqs,
        enabled=enabled,
        method="rule",
        rationale=why,
    )


def _prompts_for(workload: Workload, vocab: int) -> list[Prompt]:
    if workload.prompts is not None:
        return list(workload.prompts)
    # Deterministic token ids below the vocabulary (and below 256 for byte tokenizers).
    top = max(2, min(vocab, 256))
    return [
        [(7 * i + 3 * j) % (top - 1) + 1 for j in range(n)]
        for i, n in enumerate(workload.prompt_lengths)
    ]


def plan_chunked_prefill(
    workload: Workload,
    *,
    measure: bool = False,
    model: Any = None,
    spec: CompileSpec | None = None,
    budgets: Sequence[int] | None = None,
    objective: Literal["throughput", "ttft"] = "throughput",
) -> PrefillPlan:
    """Recommend ``max_num_batched_tokens`` and ``max_num_seqs`` for ``workload``.

    Without ``measure`` the rule decides. With ``measure=True`` the real engine serves the
    workload once per candidate budget (``budgets``, default: the rule's budget, half and
    double it), each in a fresh engine built from ``spec`` (chunked prefill on), and the
    best by ``objective`` wins: total tokens/s, or mean time to first token. Each candidate
    is a separate start (and, with compilation on, a separate compile cache entry): use
    ``compile_mode='none'`` in ``spec`` for a quick sweep.
    """
    base = spec if spec is not None else CompileSpec()
    rule = rule_plan(workload, enabled=base.chunked_prefill)
    if not measure:
        return rule
    if model is None:
        raise SpecError("plan_chunked_prefill: measure=True needs the model to run", field="model")
    if not base.chunked_prefill:
        raise SpecError(
            "plan_chunked_prefill: a sweep of chunk budgets needs chunked_prefill on in the spec",
            field="chunked_prefill",
        )
    candidates = _candidate_budgets(rule, budgets)
    points = [_measure(workload, model, base, budget, rule.max_num_seqs) for budget in candidates]
    if objective == "ttft" and all(p.time_to_first_token_s for p in points):
        best = min(points, key=lambda p: (p.time_to_first_token_s, p.max_num_batched_tokens))
        metric = f"lowest mean TTFT {best.time_to_first_token_s:.3f} s"
    else:
        best = max(points, key=lambda p: (p.total_tokens_per_s, -p.max_num_batched_tokens))
        metric = f"highest throughput {best.total_tokens_per_s:.1f} tok/s"
    return PrefillPlan(
        max_num_batched_tokens=best.max_num_batched_tokens,
        max_num_seqs=rule.max_num_seqs,
        enabled=True,
        method="measured sweep",
        rationale=f"{metric} of {len(points)} budgets measured on the engine "
        f"(rule alone would pick {rule.max_num_batched_tokens})",
        measurements=tuple(points),
    )


def _candidate_budgets(rule: PrefillPlan, budgets: Sequence[int] | None) -> list[int]:
    seqs, budget = rule.max_num_seqs, rule.max_num_batched_tokens
    default = {max(seqs, budget // 2), budget, min(RULE_MAX_BUDGET, budget * 2)}
    candidates = sorted(set(budgets) if budgets else default)
    if any(b < seqs for b in candidates):
        raise SpecError(
            f"plan_chunked_prefill: every budget must be >= max_num_seqs {seqs}",
            field="max_num_batched_tokens",
        )
    return candidates


def _measure(
    workload: Workload, model: Any, base: CompileSpec, budget: int, seqs: int
) -> SweepPoint:
    """Serve ``workload`` once on a fresh engine with this budget (after a short warm-up)."""
    from aot_vllm.backend import VllmBackend
    from aot_vllm.compiled_model import model_token_facts
    from aot_vllm.model_source import resolve_model

    vocab, _ = model_token_facts(resolve_model(model).local_dir)
    prompts = _prompts_for(workload, vocab or 256)
    params = GenerationParams(max_new_tokens=max(workload.output_lengths), stop_on_eos=False)
    need = max(workload.prompt_lengths) + params.max_new_tokens
    trial = base.replace(
        max_num_batched_tokens=budget,
        max_num_seqs=seqs,
        max_model_len=base.max_model_len or max(need, 16),
    )
    with VllmBackend().compile_model(model, trial) as compiled:
        compiled.generate(prompts[:1], GenerationParams(max_new_tokens=2))  # warm-up
        t0 = time.perf_counter()
        gens = compiled.generate(prompts, params)
        wall = time.perf_counter() - t0
        ttft = compiled.stats.time_to_first_token_s
    out_tokens = sum(len(g.token_ids) for g in gens)
    return SweepPoint(
        max_num_batched_tokens=budget,
        max_num_seqs=seqs,
        wall_s=wall,
        total_tokens_per_s=(sum(workload.prompt_lengths) + out_tokens) / wall,
        output_tokens_per_s=out_tokens / wall,
        time_to_first_token_s=ttft,
    )
