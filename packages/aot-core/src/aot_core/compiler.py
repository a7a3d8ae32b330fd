"""What every backend implements: a ``Compiler`` that turns a model into a ``CompiledModel``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from aot_core.errors import SpecError
from aot_core.options import BackendOptions
from aot_core.scoring import Score, ScoreRequest, rolling_requests, sum_scores
from aot_core.spec import CompileSpec
from aot_core.stats import OptimizationStats

if TYPE_CHECKING:
    from aot_core.serving import ServeRequest

Prompt = Sequence[int] | str
"""A prompt: token ids, or text where the model has a tokenizer."""


@dataclass(frozen=True, kw_only=True)
class Availability:
    """Whether a backend can run here, and why not when it cannot."""

    usable: bool
    """True when the backend can compile and run models on this machine."""

    reason: str = ""
    """Why it cannot (what is missing, what to install); empty when usable."""

    def __bool__(self) -> bool:
        return self.usable


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """How to generate: greedy or sampled, how many tokens, when to stop."""

    max_new_tokens: int = 16
    """Most tokens to generate per prompt."""

    temperature: float = 0.0
    """0 for greedy decoding; above 0 samples with this temperature."""

    top_p: float = 1.0
    """Nucleus-sampling probability mass (1.0 keeps every token)."""

    top_k: int = 0
    """Sample among the k most likely tokens; 0 keeps every token."""

    seed: int | None = None
    """Seed for sampling, for reproducible sampled output."""

    stop_on_eos: bool = True
    """Stop a sequence at the end-of-sequence token; False always generates max_new_tokens."""

    stop: tuple[str, ...] = ()
    """Text at which a backend with a tokenizer may end a sequence early (the output then
    ends before it); a backend that cannot stop on text generates on, so callers that need
    the cut make it themselves (``aot eval`` does, as lm-eval's models do)."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or (self.max_new_tokens < 1)
        ):
            raise SpecError(
                f"max_new_tokens: must be an integer >= 1, got {self.max_new_tokens!r}",
                field="max_new_tokens",
            )
        if not self.temperature >= 0:
            raise SpecError(
                f"temperature: must be >= 0, got {self.temperature!r}", field="temperature"
            )
        if not 0 < self.top_p <= 1:
            raise SpecError(f"top_p: must be in (0, 1], got {self.top_p!r}", field="top_p")
        if self.top_k < 0:
            raise SpecError(f"top_k: must be >= 0, got {self.top_k!r}", field="top_k")
        if isinstance(self.stop, str) or not all(isinstance(t, str) and t for t in self.stop):
            raise SpecError(
                f"stop: must be a tuple of non-empty strings, got {self.stop!r}", field="stop"
            )
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (deterministic)."""
        return self.temperature == 0


@dataclass(frozen=True, kw_only=True)
class Generation:
    """The output for one prompt."""

    prompt_token_ids: tuple[int, ...]
    """The prompt as token ids."""

    token_ids: tuple[int, ...]
    """Generated token ids, without the prompt."""

    text: str | None = None
    """Generated text, where the model has a tokenizer."""

    finish_reason: str = ""
    """Why generation stopped: "length", or "stop" (EOS or one of the stop strings)."""


def check_prompts(prompts: Sequence[Prompt]) -> None:
    """Reject an empty batch or an empty prompt before it reaches an engine."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise SpecError("prompts: pass a list of prompts (token-id lists or strings)")
    if not prompts:
        raise SpecError("prompts: the list of prompts is empty")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise SpecError(f"prompts[{i}]: the prompt is empty")


class CompiledModel(ABC):
    """A model ready to generate, holding whatever engine the backend started."""

    @abstractmethod
    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams | None = None
    ) -> list[Generation]:
        """Generate for each prompt; one ``Generation`` per prompt, in order."""

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        """Log-likelihood of each continuation given its context; one ``Score`` per request.

        Contexts must be non-empty (the first token of a sequence has no probability to
        score). A request longer than ``max_model_len`` is refused with ``SpecError``,
        never truncated. Backends that can score override this; the default refuses.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot score log-likelihoods; use a backend that does "
            "(`aot backends` lists them)"
        )

    def score_rolling(self, sequences: Sequence[Sequence[int]]) -> list[Score]:
        """Log-likelihood of each whole sequence (every token after the first), for perplexity.

        Sequences longer than ``max_model_len`` are split into disjoint windows the way
        lm-evaluation-harness splits them: a window holds at most ``max_model_len`` tokens,
        the first of which is the token before it (context only), so every token after the
        sequence's first is scored exactly once.
        """
        limit = self.max_model_len
        plans = [rolling_requests(seq, limit) for seq in sequences]
        flat = [req for plan in plans for req in plan]
        scores = iter(self.score(flat) if flat else [])
        return [sum_scores([next(scores) for _ in plan]) for plan in plans]

    @property
    def max_model_len(self) -> int | None:
        """Longest context plus continuation this model accepts, in tokens (None: unknown)."""
        return None

    @property
    @abstractmethod
    def stats(self) -> OptimizationStats:
        """Stats of this model, updated by each ``generate`` call."""

    @abstractmethod
    def close(self) -> None:
        """Release engine processes and memory; calling it twice is harmless."""

    def __enter__(self) -> CompiledModel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Compiler(ABC):
    """A backend: turns a model and a ``CompileSpec`` into a ``CompiledModel``.

    Subclasses are registered in the ``aot.backends`` entry-point group under their
    ``name``. A backend describes itself: what it is (``description``), whether it can run
    here (``availability``, then ``check_engine``), what its compiled files depend on
    (``pins``) and which ``backend_options`` it takes (``options_class``); aot-core and
    aot-compat ask it rather than knowing. Importing a subclass's module must stay cheap:
    heavy imports (torch, vllm) belong inside methods.

    The class attributes, grouped:

    - identity: ``name`` (the registry key, equal to the entry-point name),
      ``distribution`` (what to ``pip install``), ``description`` (one line for people);
    - choice: ``priority`` (higher is preferred when no backend is named);
    - settings: ``options_class`` (validates ``spec.backend_options``, knows old keys),
      ``tunable`` (the spec fields ``aot tune`` sweeps for it).
    """

    name: ClassVar[str]
    """Registry name, e.g. "vllm" or "legacy"; the entry point must use the same name."""

    description: ClassVar[str] = ""
    """What the backend compiles with, in a few words (shown by ``aot backends``)."""

    priority: ClassVar[int] = 0
    """Higher is preferred when no backend is named."""

    distribution: ClassVar[str] = ""
    """The pip distribution that provides this backend (used in install hints)."""

    options_class: ClassVar[type[BackendOptions]] = BackendOptions
    """Validates ``spec.backend_options`` and says where old configuration keys go."""

    tunable: ClassVar[tuple[str, ...]] = ("dtype", "max_num_seqs")
    """Spec fields besides ``compile_mode`` whose value changes how fast this backend runs a
    workload: what ``aot tune`` may sweep for it (a field a backend ignores is not swept)."""

    def __init__(
        self, spec: CompileSpec | None = None, *, options: BackendOptions | None = None
    ) -> None:
        self.spec = spec if spec is not None else CompileSpec()
        self._options = options
        """``self.spec``'s backend options, validated (given by a caller that validated them
        already, as aot-core's workflow does before staging; else on first use)."""
        self._last: CompiledModel | None = None

    def options_for(self, spec: CompileSpec) -> BackendOptions:
        """``spec.backend_options`` validated into ``options_class``: what the backend reads.

        For the spec this compiler was made with, validated once (or taken as the
        constructor got it), so one start checks its options once; another spec is
        validated afresh. Raises ``SpecError`` naming the offending key.
        """
        if spec != self.spec:
            return self.options_class.validate(spec)
        if self._options is None:
            self._options = self.options_class.validate(spec)
        return self._options

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Whether this backend can run here, decided cheaply: without importing torch or
        vLLM (installed packages and their versions, read from metadata)."""

    @classmethod
    def check_engine(cls) -> Availability:
        """The deep half of "can run here": the engine imports in this process and finds a
        device. May import torch or vLLM (seconds); the registry calls it only after
        ``availability`` passed, and at most once per process. Default: nothing to check."""
        return Availability(usable=True)

    @classmethod
    def version(cls) -> str:
        """Version of the backend's distribution."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(cls.distribution) if cls.distribution else ""
        except PackageNotFoundError:
            return ""

    @classmethod
    def pins(cls) -> dict[str, str | None]:
        """Versions this backend's compiled files depend on, beyond its own version.

        Package (or format) name -> the version installed here, None when absent. They go
        into an artifact's identity and manifest, and an artifact whose pins differ from
        this backend's current ones is never loaded. Read without importing heavy modules.
        Default: none.
        """
        return {}

    @abstractmethod
    def compile_model(self, model: Any, spec: CompileSpec | None = None) -> CompiledModel:
        """Compile ``model`` (a path, a name or a model object) and return it ready to run."""

    @abstractmethod
    def compile_model_aot(
        self, model: Any, example_inputs: Any, spec: CompileSpec | None = None
    ) -> CompiledModel:
        """Precompile ``model`` for ``example_inputs`` and persist the result, so that a
        later process starts warm; returns the compiled model."""

    serves: ClassVar[bool] = False
    """Whether ``serve`` is implemented (``aot serve`` refuses other backends up front)."""

    def serve(self, request: ServeRequest) -> None:
        """Serve ``request.model`` over an OpenAI-compatible HTTP API on ``request.sock``
        until SIGTERM/SIGINT, then drain in-flight requests and stop every engine process.
        Optional: a backend that sets ``serves`` implements it."""
        from aot_core.errors import BackendUnavailableError

        raise BackendUnavailableError(f"backend {self.name!r} has no HTTP server")

    def get_optimization_stats(self) -> OptimizationStats | None:
        """Stats of the most recently compiled model (None before the first compile)."""
        return self._last.stats if self._last is not None else None

    def _remember(self, compiled: CompiledModel) -> CompiledModel:
        """Record ``compiled`` as the model ``get_optimization_stats`` reports on."""
        self._last = compiled
        return compiled
