"""The generate loop over a static KV cache: prefill each batch, then decode token by token.

Prompts of different lengths share a batch: each row starts at position 0 of its own KV
row, prompts are right-padded, and the step returns logits at each row's own last prompt
token. Padded prompt positions write cache slots that a row overwrites before it ever
attends to them, so padding never changes the result.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from aot_core.compiler import GenerationParams
from aot_core.errors import SpecError

from aot_legacy.options import MIN_BUCKET

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GenerateTimings:
    """Where the time of one generate call went."""

    prompt_tokens: int = 0
    """Real (unpadded) prompt tokens processed."""

    output_tokens: int = 0
    """Tokens generated."""

    decode_steps_tokens: int = 0
    """Tokens produced by decode steps (all but the first token of each row)."""

    prefill_s: float = 0.0
    """Seconds in prefill (including sampling the first token)."""

    decode_s: float = 0.0
    """Seconds in decode steps."""

    total_s: float = 0.0
    """Wall seconds of the call."""

    first_token_s: list[float] = field(default_factory=list)
    """Per chunk: seconds from the call's start to its first token."""


def sample(
    logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token per row: argmax when greedy, else temperature / top-k / top-p sampling."""
    if params.greedy:
        return logits.argmax(dim=-1)
    scores = logits / params.temperature
    if params.top_k:
        k = min(params.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = sorted_scores.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first always stays).
        drop = (probs.cumsum(dim=-1) - probs) >= params.top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class StaticKVGenerator:
    """Runs batches of token-id prompts through prefill and decode callables."""

    def __init__(
        self,
        *,
        prefill: StepFn,
        decode: StepFn,
        buckets: Sequence[int],
        max_seq: int,
        vocab_size: int,
        pad_token_id: int,
        eos_token_ids: Sequence[int],
        device: torch.device,
    ) -> None:
        self.prefill = prefill
        self.decode = decode
        self.buckets = tuple(sorted(buckets))
        self.max_batch = self.buckets[-1]
        self.max_seq = max_seq
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.eos_token_ids = frozenset(eos_token_ids)
        self.device = device

    def check(self, prompts: Sequence[Sequence[int]]) -> None:
        """Reject prompts that cannot run, before any work starts."""
        for i, p in enumerate(prompts):
            if len(p) >= self.max_seq:
                raise SpecError(
                    f"prompts[{i}]: {len(p)} tokens do not fit the static KV cache of "
                    f"{self.max_seq} positions (max_model_len) with room to generate; raise "
                    "max_model_len in the spec or shorten the prompt",
                    field="max_model_len",
                )
            for t in p:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size:
                    raise SpecError(
                        f"prompts[{i}]: token id {t!r} is outside the vocabulary "
                        f"[0, {self.vocab_size})",
                        field="prompts",
                    )

    def generate(
        self, prompts: Sequence[Sequence[int]], params: GenerationParams
    ) -> tuple[list[tuple[list[int], str]], GenerateTimings]:
        """Generate for every prompt; returns (tokens, finish_reason) per prompt and timings."""
        self.check(prompts)
        timings = GenerateTimings()
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.device)
            if params.seed is not None:
                generator.manual_seed(params.seed)
            else:
                generator.seed()
        results: list[tuple[list[int], str]] = []
        t_start = time.perf_counter()
        with torch.no_grad():
            for lo in range(0, len(prompts), self.max_batch):
                chunk = prompts[lo : lo + self.max_batch]
                results.extend(self._run_chunk(chunk, params, generator, timings, t_start))
        timings.total_s = time.perf_counter() - t_start
        return results, timings

    def _run_chunk(
        self,
        prompts: Sequence[Sequence[int]],
        params: GenerationParams,
        generator: torch.Generator | None,
        timings: GenerateTimings,
        t_start: float,
    ) -> list[tuple[list[int], str]]:
        n = len(prompts)
        size = self.buckets[bisect.bisect_left(self.buckets, n)]
        lens = [len(p) for p in prompts] + [1] * (size - n)
        seq = max(*lens, MIN_BUCKET)
        rows = [list(p) for p in prompts] + [[self.pad_token_id]] * (size - n)
        ids = torch.tensor(
            [r + [self.pad_token_id] * (seq - len(r)) for r in rows], dtype=torch.long
        ).to(self.device)
        pos = torch.arange(seq, device=self.device).expand(size, seq).contiguous()
        last = torch.tensor([ln - 1 for ln in lens], dtype=torch.long).to(self.device)

        t0 = time.perf_counter()
        logits = self.prefill(ids, pos, last)
        token = sample(logits[:n], params, generator)
        token_list = token.tolist()  # syncs the device, so the timing is real
        t1 = time.perf_counter()
        timings.prefill_s += t1 - t0
        timings.first_token_s.append(t1 - t_start)
        timings.prompt_tokens += sum(lens[:n])

        out: list[list[int]] = [[] for _ in range(n)]
        reasons = [""] * n
        cur_pos = list(lens[:n])
        decode_tokens = 0
        for step_i in range(params.max_new_tokens):
            for r in range(n):
                if reasons[r]:
                    continue
                tok = token_list[r]
                out[r].append(tok)
                if params.stop_on_eos and tok in self.eos_token_ids:
                    reasons[r] = "stop"
                # max_model_len bounds prompt plus output, as in vLLM.
                elif len(out[r]) >= params.max_new_tokens or cur_pos[r] + 1 >= self.max_seq:
                    reasons[r] = "length"
            if all(reasons) or step_i == params.max_new_tokens - 1:
                break
            feed = [token_list[r] if not reasons[r] else self.pad_token_id for r in range(n)]
            feed += [self.pad_token_id] * (size - n)
            # Finished rows keep running (the batch shape is fixed) at a position inside
            # their own KV row; their output is ignored.
            step_pos = [min(p, self.max_seq - 1) for p in cur_pos] + [0] * (size - n)
            ids1 = torch.tensor(feed, dtype=torch.long).view(size, 1).to(self.device)
            pos1 = torch.tensor(step_pos, dtype=torch.long).view(size, 1).to(self.device)
            zeros = torch.zeros(size, dtype=torch.long, device=self.device)
            ts = time.perf_counter()
            logits = self.decode(ids1, pos1, zeros)
            token = sample(logits[:n], params, generator)
            token_list = token.tolist()
            timings.decode_s += time.perf_counter() - ts
            decode_tokens += sum(1 for r in range(n) if not reasons[r])
            cur_pos = [p + 1 for p in cur_pos]
        timings.decode_steps_tokens += decode_tokens
        timings.output_tokens += sum(len(o) for o in out)
        return [(out[r], reasons[r] or "length") for r in range(n)]


TokenScores = tuple[list[float], list[bool]]
"""Per scored token: its log-probability, and whether it was the most likely next token."""


def score_requests(
    generator: StaticKVGenerator, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> list[TokenScores]:
    """Teacher-forced log-probabilities of each continuation given its context.

    Runs the generator's own steps, so compiled, packaged and eager tiers are all scored
    by what they run: the context goes through ``prefill`` (whose logits predict the
    first continuation token), then each continuation token but the last through
    ``decode`` at its position. Requests are batched by length; the caller checks that
    every request fits ``max_seq`` positions.
    """
    order = sorted(range(len(requests)), key=lambda i: (len(requests[i][1]), len(requests[i][0])))
    out: list[TokenScores | None] = [None] * len(requests)
    with torch.no_grad():
        for lo in range(0, len(order), generator.max_batch):
            idx = order[lo : lo + generator.max_batch]
            scored = _score_chunk(generator, [requests[i] for i in idx])
            for i, result in zip(idx, scored, strict=True):
                out[i] = result
    return [r for r in out if r is not None]


def _score_chunk(
    g: StaticKVGenerator, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> list[TokenScores]:
    n = len(requests)
    size = g.buckets[bisect.bisect_left(g.buckets, n)]
    contexts = [list(c) for c, _ in requests] + [[g.pad_token_id]] * (size - n)
    targets = [list(x) for _, x in requests]
    lens = [len(c) for c in contexts]
    seq = max(*lens, MIN_BUCKET)
    ids = torch.tensor(
        [c + [g.pad_token_id] * (seq - len(c)) for c in contexts], dtype=torch.long
    ).to(g.device)
    pos = torch.arange(seq, device=g.device).expand(size, seq).contiguous()
    last = torch.tensor([ln - 1 for ln in lens], dtype=torch.long).to(g.device)
    logits = g.prefill(ids, pos, last)
    results: list[TokenScores] = [([], []) for _ in range(n)]
    _record(logits[:n], targets, 0, results)
    zeros = torch.zeros(size, dtype=torch.long, device=g.device)
    for t in range(1, max(len(x) for x in targets)):
        # Rows whose continuation has ended keep stepping (the batch shape is fixed) on a
        # pad token at a position inside their own KV row; their logits are ignored.
        feed = [x[t - 1] if t < len(x) else g.pad_token_id for x in targets]
        feed += [g.pad_token_id] * (size - n)
        step_pos = [min(lens[r] + t - 1, g.max_seq - 1) for r in range(n)] + [0] * (size - n)
        ids1 = torch.tensor(feed, dtype=torch.long).view(size, 1).to(g.device)
        pos1 = torch.tensor(step_pos, dtype=torch.long).view(size, 1).to(g.device)
        logits = g.decode(ids1, pos1, zeros)
        _record(logits[:n], targets, t, results)
    return results


def _record(
    logits: torch.Tensor, targets: Sequence[Sequence[int]], t: int, results: list[TokenScores]
) -> None:
    """Append the log-probability of token ``t`` of each target that has one."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    wanted = torch.tensor(
        [x[t] if t < len(x) else 0 for x in targets], dtype=torch.long, device=logits.device
    )
    chosen = logprobs.gather(1, wanted.view(-1, 1)).squeeze(1)
    # Greedy when nothing beats the token (a tie counts as greedy, as in vLLM's check).
    greedy = (chosen >= logprobs.max(dim=-1).values).tolist()
    values = chosen.tolist()
    for r, target in enumerate(targets):
        if t < len(target):
            results[r][0].append(float(values[r]))
            results[r][1].append(bool(greedy[r]))


def full_logits(generator: StaticKVGenerator, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Logits at every position of each row (``[len(row), vocab]``, float32), from the
    generator's own steps: the first token through ``prefill``, each later one through
    ``decode`` at its position (teacher-forced), rows batched up to the largest bucket.

    This is what calling the model as a module returns, computed by the compiled steps that
    also generate and score. Raises ``SpecError`` for an empty row, a row longer than the
    static KV cache, or a token outside the vocabulary.
    """
    for i, row in enumerate(rows):
        if not row:
            raise SpecError(f"row {i} has no tokens", field="input_ids")
        if len(row) > generator.max_seq:
            raise SpecError(
                f"row {i}: {len(row)} tokens do not fit the static KV cache of "
                f"{generator.max_seq} positions (max_model_len); raise max_model_len",
                field="max_model_len",
            )
        for t in row:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < generator.vocab_size:
                raise SpecError(
                    f"row {i}: token id {t!r} is outside the vocabulary "
                    f"[0, {generator.vocab_size})",
                    field="input_ids",
                )
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for lo in range(0, len(rows), generator.max_batch):
            out.extend(_logits_chunk(generator, rows[lo : lo + generator.max_batch]))
    return out


def _logits_chunk(g: StaticKVGenerator, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    n = len(rows)
    size = g.buckets[bisect.bisect_left(g.buckets, n)]
    firsts = [row[0] for row in rows] + [g.pad_token_id] * (size - n)
    ids = torch.tensor(
        [[t] + [g.pad_token_id] * (MIN_BUCKET - 1) for t in firsts], dtype=torch.long
    ).to(g.device)
    pos = torch.arange(MIN_BUCKET, device=g.device).expand(size, MIN_BUCKET).contiguous()
    zeros = torch.zeros(size, dtype=torch.long, device=g.device)
    steps = [g.prefill(ids, pos, zeros)[:n].float()]
    for t in range(1, max(len(r) for r in rows)):
        # Rows that have ended keep stepping (the batch shape is fixed) on a pad token at a
        # position inside their own KV row; their logits are dropped below.
        feed = [r[t] if t < len(r) else g.pad_token_id for r in rows] + [g.pad_token_id] * (
            size - n
        )
        step_pos = [min(t, g.max_seq - 1)] * n + [0] * (size - n)
        ids1 = torch.tensor(feed, dtype=torch.long).view(size, 1).to(g.device)
        pos1 = torch.tensor(step_pos, dtype=torch.long).view(size, 1).to(g.device)
        steps.append(g.decode(ids1, pos1, zeros)[:n].float())
    stacked = torch.stack(steps, dim=1)  # [n, longest, vocab]
    return [stacked[r, : len(rows[r])] for r in range(n)]
