"""Text in and out of ``aot bench``: the chat questions of ``--prompt-mix chat`` and the
generations ``--show-generations N`` prints, eager beside compiled, per backend.

The bench's workers generate on token ids. A model directory with a tokenizer (a converted
GGUF such as ``smollm2-135m-instruct``, a Hugging Face checkpoint) encodes the questions
through its chat template and decodes what was generated; a model without one (the built-in
tiny Llama is byte-level) gets the questions' bytes, and its tokens are shown as bytes.
transformers is imported only when a model has a tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aot_core.bench.results import ShownGeneration

if TYPE_CHECKING:
    from aot_core.bench.results import BenchResult

QUESTIONS: tuple[str, ...] = (
    "What is the capital of France?",
    "How many days are in a week?",
    "What is the opposite of hot?",
)
"""Short questions with one right answer, which SmolLM2-135M-Instruct answers greedily in
a sentence ("The capital of France is Paris."), so eager and compiled text can be read."""

CHAT_WORKLOAD = "chat: short questions in the model's chat template"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# Shown text is cut here: the report is for reading, the JSON keeps the token ids.
_SHOWN_CHARS = 160


@dataclass(frozen=True, kw_only=True)
class TextCodec:
    """How one model's text becomes token ids and back."""

    tokenizer: Any = None
    """The model directory's transformers tokenizer; None: byte-level (token id = byte)."""

    def encode_question(self, question: str) -> list[int]:
        """``question`` as a user turn of the chat template (plain text without one)."""
        tok = self.tokenizer
        if tok is None:
            return list(question.encode())
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(question)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids as one line of text, cut at the first end-of-sequence token."""
        tok = self.tokenizer
        if tok is None:
            text = bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
        else:
            eos = tok.eos_token_id
            ids = list(ids)
            if isinstance(eos, int) and eos in ids:
                ids = ids[: ids.index(eos)]
            text = tok.decode(ids, skip_special_tokens=True)
        shown = " ".join("".join(c if c.isprintable() else " " for c in text).split())
        return shown if len(shown) <= _SHOWN_CHARS else shown[: _SHOWN_CHARS - 1] + "…"


def load_codec(model: Path) -> TextCodec:
    """The model directory's codec: its tokenizer when it has tokenizer files, else bytes.

    A model with a tokenizer needs transformers (``aot-core[gguf]`` or ``[eval]``); without
    it this raises a ``CLIError`` (MISSING_DEPENDENCY) saying what to install.
    """
    from aot_core.cli.command import CLIError, ExitCode

    if not any((model / name).is_file() for name in _TOKENIZER_FILES):
        return TextCodec()
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CLIError(
            ExitCode.MISSING_DEPENDENCY,
            f"{model} has a tokenizer, and reading it needs transformers, which is not "
            "installed: `pip install 'aot-core[gguf]'` (or `pip install transformers`), or "
            "drop --prompt-mix chat / --show-generations",
        ) from None
    return TextCodec(tokenizer=AutoTokenizer.from_pretrained(str(model), local_files_only=True))


def question_texts(count: int) -> list[str]:
    """``count`` questions, ``QUESTIONS`` in turn."""
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]


def chat_workload(model: Path, count: int | None) -> tuple[list[list[int]], str]:
    """``--prompt-mix chat``: ``count`` questions (default: each once) as token ids."""
    codec = load_codec(model)
    texts = question_texts(count or len(QUESTIONS))
    return [codec.encode_question(q) for q in texts], CHAT_WORKLOAD


def prompt_labels(prompts: Sequence[Sequence[int]], workload: str) -> list[str]:
    """What each prompt says, for people: the question, or the prompt's bytes (the
    fixed sentences are byte-level token ids whatever the model)."""
    if workload == CHAT_WORKLOAD:
        return question_texts(len(prompts))
    return [TextCodec().decode(p) for p in prompts]


def shown_generations(
    result: BenchResult, *, model: Path, prompts: Sequence[Sequence[int]], count: int
) -> tuple[ShownGeneration, ...]:
    """The first ``count`` prompts' greedy outputs per backend: the first eager run's beside
    the first compiled one's (the warm start's, else the cold compile's)."""
    codec = load_codec(model)
    labels = prompt_labels(prompts, str(result.settings.get("workload", "")))
    shown = []
    for name, summary in result.backends.items():
        eager = _first_tokens(summary.runs, ("eager",))
        compiled = _first_tokens(summary.runs, ("warm", "cold"))
        if eager is None or compiled is None:
            continue
        for i in range(min(count, len(labels), len(eager), len(compiled))):
            shown.append(
                ShownGeneration(
                    backend=name,
                    prompt=labels[i],
                    eager=codec.decode(eager[i]),
                    compiled=codec.decode(compiled[i]),
                    identical=list(eager[i]) == list(compiled[i]),
                )
            )
    return tuple(shown)


def with_generations(
    result: BenchResult, model: Path, prompts: Sequence[Sequence[int]], *, count: int
) -> BenchResult:
    """``result`` holding the first ``count`` prompts' generations (``shown_generations``)."""
    import dataclasses

    shown = shown_generations(result, model=model, prompts=prompts, count=count)
    return dataclasses.replace(result, generations=shown)


def _first_tokens(runs: Sequence[Any], phases: Sequence[str]) -> list[list[int]] | None:
    for phase in phases:
        for run in runs:
            if run.phase == phase and run.ok and run.tokens:
                return [list(t) for t in run.tokens]
    return None


def format_generations(shown: Sequence[ShownGeneration]) -> list[str]:
    """The report's section: per backend and prompt, eager's text above compiled's."""
    out: list[str] = []
    for backend in dict.fromkeys(g.backend for g in shown):
        out += ["", f"== generations, {backend} (greedy): eager vs compiled"]
        for g in (g for g in shown if g.backend == backend):
            verdict = "identical tokens" if g.identical else "DIFFERENT tokens"
            out += [
                f"prompt:   {g.prompt}",
                f"  eager:    {g.eager}",
                f"  compiled: {g.compiled}  [{verdict}]",
            ]
    return out
