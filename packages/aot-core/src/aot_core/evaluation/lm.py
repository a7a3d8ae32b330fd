"""``AotLM``: an lm-evaluation-harness model that runs on any installed aot backend.

Imports lm-eval at module level: import this module only where lm-eval is installed
(``pip install 'aot-core[eval]'``). Tokenisation, context/continuation splitting, empty
contexts and rolling windows follow lm-eval's own ``TemplateLM`` and vLLM/HF models, so
scores are comparable with ``--model hf`` and ``--model vllm`` on the same weights.
Requests too long for the model are refused with a message, never truncated.
"""

from __future__ import annotations

import atexit
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)

from aot_core.compiler import CompiledModel, GenerationParams
from aot_core.errors import SpecError
from aot_core.evaluation.errors import EvalUsageError
from aot_core.evaluation.model_args import EvalModelConfig, parse_model_args
from aot_core.evaluation.tokenizer import load_tokenizer

_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "seed")


@dataclass(kw_only=True)
class JobCounters:
    """What the job asked of the model, and the seconds the model spent on it."""

    loglikelihood_requests: int = 0
    """(context, continuation) pairs scored, rolling windows included."""

    scored_tokens: int = 0
    """Tokens fed to the model for scoring (contexts and continuations)."""

    score_s: float = 0.0
    """Seconds inside the model's ``score`` calls."""

    generate_requests: int = 0
    """Prompts generated for."""

    prompt_tokens: int = 0
    """Prompt tokens of those generations."""

    generated_tokens: int = 0
    """Tokens generated (before stop sequences cut the text)."""

    generate_s: float = 0.0
    """Seconds inside the model's ``generate`` calls."""

    def to_dict(self) -> dict[str, Any]:
        """The counters, with tokens per second derived from them."""
        out: dict[str, Any] = dict(vars(self))
        out["scored_tokens_per_s"] = self.scored_tokens / self.score_s if self.score_s else None
        out["generated_tokens_per_s"] = (
            self.generated_tokens / self.generate_s if self.generate_s else None
        )
        return out


class AotLM(TemplateLM):  # type: ignore[misc]
    """lm-eval's ``LM`` over an aot ``CompiledModel`` (``--model aot``).

    Built by lm-eval from ``--model_args`` (it then starts the model itself, from the
    backend's own compile cache), or by ``aot eval`` around a model it started from aot's
    verified artifact store (``AotLM.around``).
    """

    def __init__(self, pretrained: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        args = {k: v for k, v in kwargs.items() if v is not None}
        if pretrained is not None:
            args["pretrained"] = pretrained
        config = parse_model_args(args)
        tokenizer = load_tokenizer(config)
        from aot_core.registry import get_backend

        cls = get_backend(config.backend)
        model = cls(config.spec).compile_model(str(config.model), config.spec)
        atexit.register(model.close)
        self._setup(model, tokenizer, config)

    @classmethod
    def around(cls, model: CompiledModel, tokenizer: Any, config: EvalModelConfig) -> AotLM:
        """An ``AotLM`` over a model started elsewhere (the caller closes it)."""
        lm = cls.__new__(cls)
        TemplateLM.__init__(lm)
        lm._setup(model, tokenizer, config)
        return lm

    def _setup(self, model: CompiledModel, tokenizer: Any, config: EvalModelConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.counters = JobCounters()

    # ------------------------------------------------------------------ lm-eval's hooks

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        # lm-eval's rule (hf and vllm models): an explicit id, else BOS, else EOS.
        if self.config.prefix_token_id is not None:
            return self.config.prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return int(self.tokenizer.bos_token_id)
        return self.eot_token_id

    @property
    def max_length(self) -> int:
        """Longest context plus continuation the model scores (its ``max_model_len``)."""
        limit = self.model.max_model_len
        return int(limit) if limit is not None else int(self.tokenizer.model_max_length)

    @property
    def max_gen_toks(self) -> int:
        return self.config.max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The chat as the tokenizer's template renders it, exactly as lm-eval's ``hf`` model
        renders it (``--apply_chat_template``), so both score the same prompt text."""
        import jinja2

        kwargs: dict[str, Any] = {
            "tokenize": False,
            "add_generation_prompt": add_generation_prompt,
            "continue_final_message": not add_generation_prompt,
        }
        if not getattr(self.tokenizer, "chat_template", None):
            raise EvalUsageError(
                f"--apply_chat_template: the tokenizer of {self.config.model} has no chat "
                "template; drop the option, or evaluate a model whose tokenizer has one"
            )
        try:
            return str(self.tokenizer.apply_chat_template(chat_history, **kwargs))
        except jinja2.exceptions.TemplateError:
            # as lm-eval's hf model: a template that refuses a system turn gets none
            history = [m for m in chat_history if m.get("role") != "system"]
            return str(self.tokenizer.apply_chat_template(history, **kwargs))

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model in its results' config."""
        stats = self.model.stats
        return {
            "aot_backend": stats.backend,
            "aot_backend_version": stats.backend_version,
            "aot_compile_mode": stats.compile_mode,
            "model_name": str(self.config.model),
        }

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        # As lm-eval's hf model: the tokenizer's own special-token default unless told,
        # and no second BOS when the text already starts with one.
        special = _add_special_kwargs(add_special_tokens, self.config.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(
            string, self.tokenizer.decode(self.prefix_token_id)
        ):
            special["add_special_tokens"] = False
        return list(self.tokenizer.encode(string, **special))

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens))

    # ------------------------------------------------------------------ requests

    def _loglikelihood_tokens(
        self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        scores = self._score(pairs)
        out = []
        for (cache_key, _, _), score in zip(requests, scores, strict=True):
            answer = (float(score.logprob), bool(score.is_greedy))
            if cache_key is not None:
                self.cache_hook.add_partial("loglikelihood", cache_key, answer)
            out.append(answer)
        return out

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[Any]:
        self._check_lengths([len(c) + len(x) for c, x in pairs], "scored")
        t0 = time.perf_counter()
        scores = self.model.score(pairs) if pairs else []
        self.counters.score_s += time.perf_counter() - t0
        self.counters.loglikelihood_requests += len(pairs)
        self.counters.scored_tokens += sum(len(c) + len(x) for c, x in pairs)
        return scores

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from aot_core.scoring import rolling_requests, sum_scores

        limit = self.max_length
        plans = []
        for (string,) in (req.args for req in requests):
            tokens = self.tok_encode(string)
            # The text is conditioned on the prefix token (BOS/EOS), as in lm-eval's models.
            plans.append(rolling_requests([self.prefix_token_id, *tokens], limit) if tokens else [])
        flat = [(list(c), list(x)) for plan in plans for c, x in plan]
        scores = iter(self._score(flat))
        out = []
        for req, plan in zip(requests, plans, strict=True):
            total = float(sum_scores([next(scores) for _ in plan]).logprob) if plan else 0.0
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            out.append(total)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            key = json.dumps(req.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[1]
            params, until = self._generation_params(gen_kwargs)
            contexts = [requests[i].args[0] for i in indices]
            for i, text in zip(indices, self._generate(contexts, params, until), strict=True):
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return [r if r is not None else "" for r in results]

    def _generation_params(self, gen_kwargs: Any) -> tuple[GenerationParams, list[str]]:
        if not isinstance(gen_kwargs, dict):
            raise SpecError(f"generate_until: gen_kwargs must be a dict, got {gen_kwargs!r}")
        kwargs = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.max_gen_toks)
        until = handle_stop_sequences(
            kwargs.pop("until", None), eos=self.tok_decode([self.eot_token_id])
        )
        max_gen_toks = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        kwargs.pop("do_sample", None)
        unknown = sorted(set(kwargs) - set(_SAMPLING_KEYS))
        if unknown:
            raise SpecError(
                f"gen_kwargs: aot does not support {', '.join(unknown)}; it supports until, "
                f"max_gen_toks, do_sample and {', '.join(_SAMPLING_KEYS)}",
                field="gen_kwargs",
            )
        params = GenerationParams(
            max_new_tokens=max_gen_toks,
            temperature=float(kwargs.get("temperature", 0.0)),
            top_p=float(kwargs.get("top_p", 1.0)),
            # lm-eval and vLLM spell "every token" -1; aot spells it 0.
            top_k=max(int(kwargs.get("top_k") or 0), 0),
            seed=int(kwargs["seed"]) if kwargs.get("seed") is not None else None,
            # Lets vLLM end a sequence at a stop string, as lm-eval's vllm model does; the
            # text is cut below either way, so every backend returns the same text.
            stop=tuple(s for s in until if s),
        )
        return params, until

    def _generate(
        self, contexts: list[str], params: GenerationParams, until: list[str]
    ) -> list[str]:
        prompts = [self.tok_encode(c) or [self.prefix_token_id] for c in contexts]
        # One generated token must fit after the prompt.
        self._check_lengths([len(p) + 1 for p in prompts], "generation prompt")
        t0 = time.perf_counter()
        generations = self.model.generate(prompts, params)
        self.counters.generate_s += time.perf_counter() - t0
        self.counters.generate_requests += len(prompts)
        self.counters.prompt_tokens += sum(len(p) for p in prompts)
        self.counters.generated_tokens += sum(len(g.token_ids) for g in generations)
        # One decoding for every backend (special tokens kept, as lm-eval's models keep
        # them), then cut at the first stop sequence, as lm-eval's models do.
        return [
            postprocess_generated_text(self._generated_text(g.token_ids), until, None)
            for g in generations
        ]

    def _generated_text(self, tokens: Sequence[int]) -> str:
        """The text of generated tokens, as an incremental detokenizer (vLLM's, so lm-eval's
        vllm model) emits it: text that ends in an unfinished character (U+FFFD) is held
        back until a later token completes it, so a generation that stops there ends before
        it. Decoding all tokens at once would add the U+FFFD."""
        text = self.tok_decode(tokens)
        end = len(tokens)
        while text.endswith("\ufffd") and end > 0:
            end -= 1
            text = self.tok_decode(tokens[:end])
        return text

    def _check_lengths(self, lengths: list[int], what: str) -> None:
        limit = self.max_length
        longest = max(lengths, default=0)
        if longest > limit:
            raise SpecError(
                f"an lm-eval request needs {longest} tokens ({what}), above the model's "
                f"max_model_len {limit}; aot never truncates a request. Start the model with a "
                f"larger max_model_len (--model-args max_model_len=N, up to the model's own "
                "limit) or use a task with shorter documents",
                field="max_model_len",
            )
