"""The generate loop over a static KV cache: prefill each batch, then decode token by token;
and scoring, one full-sequence prefill per batch.

Prompts of different lengths share a batch: each row starts at position 0 of its own KV
row, prompts are right-padded, and the step returns logits at each row's own last prompt
token. Padded prompt positions write cache slots that a row overwrites before it ever
attends to them, so padding never changes the result. When every row of a batch starts
with a prefix an earlier batch computed (few-shot examples), its KV is copied in from the
generator's ``PrefixStash`` and the rows run from the position after it.

``prefill`` is always called with a ``[B, K]`` ``last_index`` (K >= 2; generation repeats
the last position): the compiled and packaged prefill graphs are built for that form, so
generation and scoring share one graph.
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
from aot_legacy.prefix import MIN_PREFIX, PrefixStash, prefix_groups, runnable_prefix

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
StopFn = Callable[[Sequence[int]], bool]
"""Whether a row's generated tokens so far end the row (they reached a stop string)."""

SCORE_LOGITS_BYTES = 256 << 20
"""Most bytes of float32 logits one scoring forward may return; longer continuations
(rolling windows) run in fewer rows per forward, so memory stays bounded."""


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
        kv: Sequence[torch.Tensor] = (),
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
        self.kv = tuple(kv)
        """The KV cache the steps are bound to, so finished rows can be compacted away;
        empty when unknown (then the batch keeps its size to the end)."""
        self.prefix = PrefixStash(self.kv)
        """The KV of recently shared prompt prefixes (few-shot examples), copied into
        later batches that start with one; inert without ``kv``."""

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
        self,
        prompts: Sequence[Sequence[int]],
        params: GenerationParams,
        stop: StopFn | None = None,
    ) -> tuple[list[tuple[list[int], str]], GenerateTimings]:
        """Generate for every prompt; returns (tokens, finish_reason) per prompt and timings.

        ``stop`` is asked after each token of a row whether the row is done (finish reason
        "stop"); its tokens then end with the token that completed the stop text.
        """
        self.check(prompts)
        timings = GenerateTimings()
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.device)
            if params.seed is not None:
                generator.manual_seed(params.seed)
            else:
                generator.seed()
        # Longest prompts first, as lm-eval's models order them: a batch pads little; and
        # a few-shot task's prompts together, so its batches share their examples.
        group = prefix_groups(prompts, least=MIN_BUCKET + 1)
        order = sorted(range(len(prompts)), key=lambda i: (group[i], -len(prompts[i])))
        results: list[tuple[list[int], str]] = [([], "")] * len(prompts)
        t_start = time.perf_counter()
        with torch.no_grad():
            for lo in range(0, len(order), self.max_batch):
                idx = order[lo : lo + self.max_batch]
                chunk = [prompts[i] for i in idx]
                done = self._run_chunk(
                    chunk, params, generator, timings=timings, t_start=t_start, stop=stop
                )
                for i, result in zip(idx, done, strict=True):
                    results[i] = result
        timings.total_s = time.perf_counter() - t_start
        return results, timings

    def _run_chunk(
        self,
        prompts: Sequence[Sequence[int]],
        params: GenerationParams,
        generator: torch.Generator | None,
        *,
        timings: GenerateTimings,
        t_start: float,
        stop: StopFn | None,
    ) -> list[tuple[list[int], str]]:
        n = len(prompts)
        size = self.buckets[bisect.bisect_left(self.buckets, n)]
        lens = [len(p) for p in prompts]
        t0 = time.perf_counter()
        first = _prefill_last(self, prompts, size=size)[:, 0]
        latest = dict(enumerate(sample(first, params, generator).tolist()))  # syncs the device
        t1 = time.perf_counter()
        timings.prefill_s += t1 - t0
        timings.first_token_s.append(t1 - t_start)
        timings.prompt_tokens += sum(lens)

        out: list[list[int]] = [[] for _ in range(n)]
        reasons = [""] * n
        slots = list(range(n))  # the KV row each prompt's row lives in
        for step_i in range(params.max_new_tokens):
            for r, tok in latest.items():
                out[r].append(tok)
                reasons[r] = self._finished(out[r], lens[r], params, stop)
            active = [r for r in range(n) if not reasons[r]]
            if not active or step_i == params.max_new_tokens - 1:
                break
            ts = time.perf_counter()
            # The next token of row r goes at position lens[r] + len(out[r]) - 1.
            where = {r: lens[r] + len(out[r]) - 1 for r in active}
            size = self._compact(slots, active, size, written=max(where.values()))
            logits = self._decode_rows(slots, where, latest, size)
            latest = dict(zip(active, sample(logits, params, generator).tolist(), strict=True))
            timings.decode_s += time.perf_counter() - ts
            timings.decode_steps_tokens += len(active)
        timings.output_tokens += sum(len(o) for o in out)
        return [(out[r], reasons[r] or "length") for r in range(n)]

    def _finished(
        self, tokens: Sequence[int], prompt_len: int, params: GenerationParams, stop: StopFn | None
    ) -> str:
        """Why a row with these generated tokens is done ("stop", "length"), or ""."""
        if (params.stop_on_eos and tokens[-1] in self.eos_token_ids) or (
            stop is not None and stop(tokens)
        ):
            return "stop"
        # max_model_len bounds prompt plus output, as in vLLM.
        if len(tokens) >= params.max_new_tokens or prompt_len + len(tokens) >= self.max_seq:
            return "length"
        return ""

    def _compact(self, slots: list[int], active: Sequence[int], size: int, written: int) -> int:
        """Move the active rows' KV (positions ``[:written]``) into the first KV rows when a
        smaller batch bucket holds them, so finished rows stop costing decode work; returns
        the batch size to decode at."""
        want = self.buckets[bisect.bisect_left(self.buckets, len(active))]
        if want >= size or not self.kv:
            return size
        src = torch.tensor([slots[r] for r in active], dtype=torch.long, device=self.device)
        for t in self.kv:
            t[: len(active), :written] = t[src, :written]  # gathers a copy first: no overlap
        for i, r in enumerate(active):
            slots[r] = i
        return want

    def _decode_rows(
        self, slots: Sequence[int], where: dict[int, int], latest: dict[int, int], size: int
    ) -> torch.Tensor:
        """One decode step of ``size`` KV rows: each active row ``r`` (the keys of ``where``)
        feeds ``latest[r]`` at position ``where[r]``; other rows feed a pad at position 0 of
        a KV row no active row reads. Returns the active rows' logits, in ``where``'s order."""
        feed = [self.pad_token_id] * size
        pos = [0] * size
        for r, p in where.items():
            feed[slots[r]] = latest[r]
            pos[slots[r]] = p
        ids1 = torch.tensor(feed, dtype=torch.long).view(size, 1).to(self.device)
        pos1 = torch.tensor(pos, dtype=torch.long).view(size, 1).to(self.device)
        zeros = torch.zeros(size, dtype=torch.long, device=self.device)
        logits = self.decode(ids1, pos1, zeros)
        return logits[torch.tensor([slots[r] for r in where], device=self.device)]


TokenScores = tuple[list[float], list[bool]]
"""Per scored token: its log-probability, and whether it was the most likely next token."""


def score_requests(
    generator: StaticKVGenerator, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> list[TokenScores]:
    """Teacher-forced log-probabilities of each continuation given its context.

    Runs the generator's own ``prefill`` step, so compiled, packaged and eager tiers are
    each scored by what they run. Requests that share a context (the choices of a
    multiple-choice question) share one KV row: the context is prefilled once, its last
    logits score every continuation's first token, then each continuation runs in turn at
    the positions after the context, overwriting the one before (a token attends only to
    cache slots up to its own position, so it never sees another continuation). Rows run
    longest context first, as many per forward as the KV cache has (``max_batch``) and
    ``SCORE_LOGITS_BYTES`` allows. Contexts that start with the prefix the generator's
    ``PrefixStash`` holds (another question's few-shot examples) prefill only what follows
    it. The caller checks that every request fits ``max_seq``.
    """
    units = _share_units(requests)
    out: list[TokenScores | None] = [None] * len(requests)
    widths = [max(len(requests[i][1]) for i in unit) for unit in units]
    with torch.no_grad():
        for idx in _row_groups(generator, widths):
            rows = [units[i] for i in idx]
            contexts = [requests[unit[0]][0] for unit in rows]
            continuations = [[requests[i][1] for i in unit] for unit in rows]
            scored = _score_rows(generator, contexts, continuations)
            for unit, results in zip(rows, scored, strict=True):
                for i, result in zip(unit, results, strict=True):
                    out[i] = result
    return [r for r in out if r is not None]


MAX_SHARED = 8
"""Most continuations that share one KV row: more would leave the other rows of a forward
idle for many rounds (a rolling score's windows can all share a one-token context)."""


def _share_units(requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[int]]:
    """Request indices grouped by identical context, at most ``MAX_SHARED`` a group, longest
    context first (then most continuations), so the rows of one forward pad little; units
    of one few-shot task together (``prefix_groups``), so they share its examples."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (context, _) in enumerate(requests):
        by_context.setdefault(tuple(context), []).append(i)
    units = [
        same[lo : lo + MAX_SHARED]
        for same in by_context.values()
        for lo in range(0, len(same), MAX_SHARED)
    ]
    contexts = [requests[u[0]][0] for u in units]
    group = prefix_groups(contexts, least=MIN_BUCKET + 1)
    order = sorted(range(len(units)), key=lambda i: (group[i], -len(contexts[i]), -len(units[i])))
    return [units[i] for i in order]


def _row_groups(g: StaticKVGenerator, widths: Sequence[int]) -> list[list[int]]:
    """Consecutive indices into ``widths`` (logit positions per row), grouped into forwards
    of at most ``max_batch`` rows whose logits fit ``SCORE_LOGITS_BYTES``."""
    row_bytes = g.vocab_size * 4
    groups: list[list[int]] = []
    cur: list[int] = []
    widest = MIN_BUCKET
    for i, w in enumerate(widths):
        wider = max(widest, w)
        full = len(cur) >= g.max_batch or (len(cur) + 1) * wider * row_bytes > SCORE_LOGITS_BYTES
        if cur and full:
            groups.append(cur)
            cur, wider = [], max(MIN_BUCKET, w)
        cur.append(i)
        widest = wider
    if cur:
        groups.append(cur)
    return groups


def _forward(
    g: StaticKVGenerator,
    rows: Sequence[Sequence[int]],
    picks: Sequence[Sequence[int]],
    starts: Sequence[int] | None = None,
) -> torch.Tensor:
    """One ``prefill`` call: row ``r`` (right-padded; the batch padded up to ``MIN_BUCKET``
    rows) at positions from ``starts[r]`` (0 by default), logits at its indices
    ``picks[r]``: ``[len(rows), K, vocab]`` float32, K the most picks of a row (rows with
    fewer repeat their last pick). Padding positions past the cache's end are clamped to
    its last slot, which no real token of the row reads."""
    n = len(rows)
    size = max(n, MIN_BUCKET)
    seq = max(*(len(r) for r in rows), MIN_BUCKET)
    k = max(*(len(p) for p in picks), MIN_BUCKET)
    pad = g.pad_token_id
    ids = torch.tensor(
        [list(r) + [pad] * (seq - len(r)) for r in rows] + [[pad] * seq] * (size - n),
        dtype=torch.long,
    ).to(g.device)
    offsets = torch.tensor([*(starts or [0] * n), *[0] * (size - n)], dtype=torch.long)
    pos = (offsets.view(-1, 1) + torch.arange(seq)).clamp(max=g.max_seq - 1).to(g.device)
    last = torch.tensor(
        [list(p) + [p[-1]] * (k - len(p)) for p in picks] + [[0] * k] * (size - n),
        dtype=torch.long,
    ).to(g.device)
    return g.prefill(ids, pos, last)[:n].float()


def _prefill_last(
    g: StaticKVGenerator, rows: Sequence[Sequence[int]], *, size: int | None = None
) -> torch.Tensor:
    """Prefill ``rows`` in KV rows ``[:len(rows)]`` (pad rows of one pad token fill the batch
    up to ``size``); logits ``[len(rows), K, vocab]`` at each row's last token. A prefix the
    stash holds is copied in, not computed; one the rows share is stashed for later."""
    n = len(rows)
    shared = _reuse_prefix(g, rows)
    fed = [row[shared:] for row in rows] + [[g.pad_token_id]] * ((size or n) - n)
    starts = [shared] * n + [0] * (len(fed) - n)
    logits = _forward(g, fed, [[len(row) - 1] for row in fed], starts)
    if not shared:
        g.prefix.remember(rows)
    return logits[:n]


def _reuse_prefix(g: StaticKVGenerator, rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens of every row ``rows`` (about to run in KV rows
    ``[:len(rows)]``) need not run: their KV is copied in from the generator's stash. When
    the stash holds none but the rows share a long prefix, it is computed first, once: a
    two-row forward costs less than recomputing it in every row of a wider batch."""
    shared = g.prefix.take(rows)
    if shared or not g.prefix.enabled or len(rows) <= MIN_BUCKET:
        return shared
    common = runnable_prefix(rows)
    if common < MIN_PREFIX:
        return 0
    head = list(rows[0][:common])
    _forward(g, [head], [[common - 1]])
    g.prefix.remember([head])
    return g.prefix.take(rows)


def _score_rows(
    g: StaticKVGenerator,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
) -> list[list[TokenScores]]:
    """Scores of ``continuations[r]`` after ``contexts[r]``, row ``r`` in KV row ``r``."""
    results: list[list[TokenScores]] = [[([], []) for _ in conts] for conts in continuations]
    first = torch.log_softmax(_prefill_last(g, contexts)[:, :1], -1)
    for r, conts in enumerate(continuations):
        for j, x in enumerate(conts):
            _record(first[r], [x[0]], results[r][j])
    for j in range(max(len(conts) for conts in continuations)):
        rest = [conts[j][1:] if j < len(conts) else [] for conts in continuations]
        if not any(rest):
            continue
        # Each row feeds its continuation but the last token, after its own context; a row
        # with nothing this round feeds a pad there, which a later round overwrites.
        fed = [
            [*conts[j][:-1]] if x else [g.pad_token_id]
            for conts, x in zip(continuations, rest, strict=True)
        ]
        logits = _forward(g, fed, [range(max(len(x), 1)) for x in rest], [len(c) for c in contexts])
        logprobs = torch.log_softmax(logits, dim=-1)
        for r, x in enumerate(rest):
            if x:
                _record(logprobs[r, : len(x)], x, results[r][j])
    return results


def _record(logprobs: torch.Tensor, targets: Sequence[int], into: TokenScores) -> None:
    """Append the log-probability of each target under the log-probabilities
    ``[len(targets), vocab]`` that predict it, and whether it was the most likely token."""
    wanted = torch.tensor(list(targets), dtype=torch.long, device=logprobs.device).view(-1, 1)
    chosen = logprobs.gather(1, wanted).squeeze(1)
    # Greedy when nothing beats the token (a tie counts as greedy, as in vLLM's check).
    greedy = (chosen >= logprobs.max(dim=-1).values).tolist()
    into[0].extend(float(v) for v in chosen.tolist())
    into[1].extend(bool(b) for b in greedy)


def full_logits(generator: StaticKVGenerator, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Logits at every position of each row (``[len(row), vocab]``, float32), from the
    generator's own ``prefill`` step: one forward per batch of rows, as many rows as the KV
    cache has and ``SCORE_LOGITS_BYTES`` allows.

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
        for idx in _row_groups(generator, [len(r) for r in rows]):
            chunk = [rows[i] for i in idx]
            logits = _forward(generator, chunk, [range(len(r)) for r in chunk])
            out.extend(logits[r, : len(row)] for r, row in enumerate(chunk))
    return out
