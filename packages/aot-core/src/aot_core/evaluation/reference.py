"""The independent reference for log-likelihoods: transformers' own forward pass.

aot's backends are checked against this (float32, one request at a time, no KV cache, no
compilation): the same weights scored by code that shares nothing with aot's engines.
Needs torch and transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aot_core.scoring import Score, ScoreRequest, check_score_requests


def reference_scores(model_dir: str | Path, requests: Sequence[ScoreRequest]) -> list[Score]:
    """Score each (context, continuation) with transformers' ``AutoModelForCausalLM`` in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    check_score_requests(requests, None)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    model = model.to(torch.float32).eval()
    out = []
    with torch.no_grad():
        for context, continuation in requests:
            ids = torch.tensor([[*context, *continuation]], dtype=torch.long)
            logits = model(ids).logits[0].float()
            # Position i's logits predict token i + 1.
            predicting = logits[len(context) - 1 : -1]
            logprobs = torch.log_softmax(predicting, dim=-1)
            target = torch.tensor(list(continuation), dtype=torch.long)
            chosen = logprobs.gather(1, target.view(-1, 1)).squeeze(1)
            greedy = bool((chosen >= logprobs.max(dim=-1).values).all())
            values = tuple(float(v) for v in chosen.tolist())
            out.append(Score(logprob=sum(values), is_greedy=greedy, token_logprobs=values))
    return out
