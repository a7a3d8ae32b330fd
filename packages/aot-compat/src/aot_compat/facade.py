"""The old compiler and compiled-model objects, running on an aot backend.

``CompatCompiler`` keeps the old constructor keywords and method names
(``compile_model``, ``compile_model_aot(model, inputs, config)``,
``get_optimization_stats()``) and delegates to an ``aot_core.Compiler`` chosen among the
installed backends. It is a facade rather than a subclass of the backend class because the
old methods take and return different shapes (a dict config, a dict of stats) than the
``Compiler`` interface does.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar

from aot_core.compiler import CompiledModel, Compiler, Generation
from aot_core.spec import CompileSpec
from aot_core.stats import OptimizationStats

from aot_compat.generate_call import as_tensor, cut_at_eos, default_pad_token_id, parse_call
from aot_compat.legacy_config import LegacyTranslation, strict_from_env, translate
from aot_compat.policy import LEGACY, OLD_COMPILATION_SYSTEMS, VLLM, preference
from aot_compat.selection import BackendChoice, choose_backend


class LegacyGeneration(str):
    """One generated result: the text, as old callers expect, carrying the token ids too."""

    generation: Generation
    token_ids: tuple[int, ...]
    prompt_token_ids: tuple[int, ...]
    finish_reason: str

    def __new__(cls, generation: Generation) -> LegacyGeneration:
        self = super().__new__(cls, generation.text or "")
        self.generation = generation
        self.token_ids = generation.token_ids
        self.prompt_token_ids = generation.prompt_token_ids
        self.finish_reason = generation.finish_reason
        return self

    @property
    def text(self) -> str:
        """The generated text ("" where the model has no tokenizer)."""
        return str.__str__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (LegacyGeneration, (self.generation,))


class LegacyStats(dict[str, Any]):
    """The old stats dict (``stats["vllm_available"]``, ...) plus the typed stats.

    ``optimization_stats`` holds the ``aot_core.OptimizationStats`` of the last compiled
    model (None before the first compile); its fields are also flattened into the dict.
    """

    optimization_stats: OptimizationStats | None = None


def _example_inputs(inputs: Any) -> Any:
    """Old example inputs, ``(input_ids,)`` tensors, become a list of token-id lists."""
    if isinstance(inputs, (tuple, list)) and len(inputs) == 1 and hasattr(inputs[0], "dim"):
        inputs = inputs[0]
    if hasattr(inputs, "tolist") and hasattr(inputs, "dim"):
        ids = inputs.tolist()
        return [ids] if inputs.dim() == 1 else ids
    return inputs


class CompatCompiledModel:
    """A compiled model with the old calling conventions on top of an aot ``CompiledModel``."""

    def __init__(
        self,
        compiled: CompiledModel,
        *,
        model_id: str,
        metadata: Mapping[str, Any],
        pad_token_id: int | None = None,
    ):
        self.compiled = compiled
        """The backend's compiled model (the new API)."""
        self.model_id = model_id
        self.metadata = dict(metadata)
        self.pad_token_id = pad_token_id
        """The model's own pad token (its generation config's), which pads a tensor answer
        when the caller names none, as transformers pads it."""
        self.closed = False

    def generate(self, prompts: Any = None, params: Any = None, **kwargs: Any) -> Any:
        """Generate for each prompt; old vLLM style or transformers style.

        vLLM style: prompts (text or token-id lists) with a ``GenerationParams``, old
        keywords (``max_tokens``, ``temperature``, ``top_p``, ...) or a vLLM
        ``SamplingParams``; one result per prompt, a ``str`` (the text) that also carries
        ``token_ids``, ``prompt_token_ids`` and ``finish_reason``.

        transformers style: an input-id tensor (or rows, or ``input_ids=``, or a tokenizer's
        output) with an ``attention_mask`` (left or right padding) and ``max_new_tokens``,
        ``do_sample``, ``temperature``, ``top_p``, ``top_k``, ``eos_token_id``,
        ``pad_token_id``, ``num_return_sequences=1``. Given a tensor it returns a tensor of
        prompt plus generated ids, laid out as transformers lays it out. An option that
        cannot be honoured (``num_beams=4``) is a ``TypeError`` naming it.
        """
        if self.closed:
            raise RuntimeError(f"model {self.model_id!r} was closed; compile it again to generate")
        call = parse_call(prompts, params, kwargs)
        outputs = [
            cut_at_eos(g, call.eos_token_ids)
            for g in self.compiled.generate(call.prompts, call.params)
        ]
        if call.input_tensor is not None:
            return as_tensor(call, outputs, self.pad_token_id)
        return [LegacyGeneration(g) for g in outputs]

    @property
    def stats(self) -> OptimizationStats:
        """The backend's stats for this model."""
        return self.compiled.stats

    def get_info(self) -> dict[str, Any]:
        """Old model info: the metadata recorded at compile time plus the current stats."""
        return {**self.metadata, "stats": self.stats.to_dict()}

    def close(self) -> None:
        """Release the engine (processes and memory); calling it twice is harmless."""
        if not self.closed:
            self.closed = True
            self.compiled.close()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if callable(self.compiled):
            return self.compiled(*args, **kwargs)
        raise TypeError(
            f"a model compiled by the {self.metadata.get('backend')} backend is not called "
            "like a torch module; use generate(prompts, max_tokens=...) instead"
        )

    def __enter__(self) -> CompatCompiledModel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        backend = self.metadata.get("backend")
        return f"<{type(self).__name__} {self.model_id!r} on {backend} ({state})>"


def _model_id(model: Any, given: str | None) -> str:
    if given:
        return given
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        return str(model)
    name = getattr(model, "name_or_path", None) or getattr(
        getattr(model, "config", None), "name_or_path", None
    )
    return str(name) if name else f"{type(model).__name__}@{id(model):x}"


class CompatCompiler:
    """The old compiler object on an aot backend.

    ``backend_name`` fixes the backend (subclasses such as ``VLLMNativeAOTCompiler``); when
    it is None the backend is chosen with ``use_vllm_native`` and ``$AOT_BACKEND``.
    Constructor keywords are the old ones (``enable_cuda_graphs``, ``batch_sizes``,
    ``cache_dir``, ``compilation_level``, ``enable_chunked_prefill``, ...) or any
    ``CompileSpec`` field; ``spec=`` takes a ``CompileSpec`` directly. An old key no backend
    understands warns (``UnknownConfigKeyWarning``) and is ignored; ``strict=True`` (None:
    ``$AOT_COMPAT_STRICT``) makes it a ``LegacyConfigError``, here and in every compile.
    """

    backend_name: ClassVar[str | None] = None
    """The backend this class always runs on; None to choose among the installed ones."""

    positional: ClassVar[tuple[str, ...]] = (
        "base_compiler",
        "enable_cuda_graphs",
        "batch_sizes",
        "cache_dir",
        "compilation_level",
        "enable_chunked_prefill",
    )
    """The old constructor's positional parameters, in order (they differed per class)."""

    def __init__(
        self,
        *args: Any,
        spec: CompileSpec | None = None,
        use_vllm_native: bool = True,
        choice: BackendChoice | None = None,
        strict: bool | None = None,
        **options: Any,
    ) -> None:
        if len(args) > len(self.positional):
            raise TypeError(
                f"{type(self).__name__}() takes at most {len(self.positional)} positional "
                f"arguments ({', '.join(self.positional)}), got {len(args)}"
            )
        for name, value in zip(self.positional, args, strict=False):
            if name in options:
                raise TypeError(f"{type(self).__name__}() got {name!r} twice")
            options[name] = value
        if spec is not None and options.get("enable_cuda_graphs") is True:
            # the old keyword defaults to True; it must not undo cuda_graphs=False in spec=
            del options["enable_cuda_graphs"]
        if choice is None:
            if self.backend_name is not None:
                choice = choose_backend(
                    self.backend_name, allow_fallback=False, honour_env=False, stacklevel=3
                )
            else:
                choice = choose_backend(preference(use_vllm_native), stacklevel=3)
        self.choice = choice
        """Which backend runs this compiler, and why."""
        self.strict = strict_from_env() if strict is None else strict
        """Whether an old config key no backend understands is an error (else a warning)."""
        extra = {k: v for k, v in options.items() if not (k == "batch_sizes" and v is None)}
        translation = translate(
            None, base=spec, backend=choice.name, extra=extra, strict=self.strict, stacklevel=3
        )
        self.backend: Compiler = choice.compiler(translation.spec)
        """The backend compiler (the new API)."""
        self.compiled_models: dict[tuple[str, str, str | None], CompatCompiledModel] = {}
        self.model_metadata: dict[str, dict[str, Any]] = {}
        self._last: CompatCompiledModel | None = None
        self._lock = threading.Lock()

    @property
    def spec(self) -> CompileSpec:
        """The CompileSpec this compiler was built with (before per-call config)."""
        return self.backend.spec

    @property
    def backend_id(self) -> str:
        """Registry name of the backend in use ("vllm", "legacy", ...)."""
        return self.choice.name

    @property
    def _compilation_system(self) -> str:
        """The old stats' label for the backend in use."""
        name = self.choice.name
        return OLD_COMPILATION_SYSTEMS.get(name) or self.choice.compiler.description or name

    @property
    def vllm_available(self) -> bool:
        """Old attribute: True when the models run on vLLM."""
        return self.choice.name == VLLM

    def compile_model(
        self,
        model: Any,
        example_inputs: Any = None,
        model_id: str | None = None,
        **compile_kwargs: Any,
    ) -> CompatCompiledModel:
        """Compile ``model`` (a path, a name or a model object); old signature.

        ``compile_kwargs`` are old config keys, translated like ``compile_model_aot``'s
        config. With ``example_inputs`` this precompiles and persists like
        ``compile_model_aot``.
        """
        return self._compile(
            model, example_inputs, compile_kwargs or None, None, model_id, aot=False
        )

    def compile_model_aot(
        self,
        model: Any,
        inputs: Any = None,
        config: Any = None,
        compilation_mode: str | None = None,
    ) -> CompatCompiledModel:
        """Precompile ``model`` for ``inputs`` and persist it so that a later process starts
        warm; old signature.

        ``config`` is the old dict (or model-config object, or a ``CompileSpec``);
        ``compilation_mode`` the old mode name ("default", "reduce-overhead",
        "max-autotune"). The same model and settings compiled twice in one process return
        the same compiled model.
        """
        return self._compile(model, inputs, config, compilation_mode, None, aot=True)

    def _compile(
        self,
        model: Any,
        inputs: Any,
        config: Any,
        compilation_mode: str | None,
        model_id: str | None,
        *,
        aot: bool,
    ) -> CompatCompiledModel:
        translation: LegacyTranslation = translate(
            config,
            base=self.spec,
            backend=self.choice.name,
            compilation_mode=compilation_mode,
            strict=self.strict,
            stacklevel=4,
        )
        spec = translation.spec
        ident = _model_id(model, model_id or translation.model_id)
        # the fingerprint ignores cache_dir; a model compiled into another directory is
        # another compile
        key = (ident, spec.fingerprint(), spec.cache_dir)
        with self._lock:
            cached = self.compiled_models.get(key)
            if cached is not None and not cached.closed:
                self._last = cached
                return cached
            given = model
            if translation.tokenizer is not None:
                from aot_core.models.cache import ModelWithTokenizer

                given = ModelWithTokenizer(model=model, tokenizer=translation.tokenizer)
            if inputs is not None or aot:
                compiled = self.backend.compile_model_aot(given, _example_inputs(inputs), spec)
            else:
                compiled = self.backend.compile_model(given, spec)
            metadata = {
                "model_id": ident,
                "backend": self.choice.name,
                "backend_choice": self.choice.reason,
                "compilation_system": self._compilation_system,
                "spec": spec.to_dict(),
                "config_notes": list(translation.notes),
                "vllm_native": self.choice.name == VLLM,
            }
            wrapped = CompatCompiledModel(
                compiled,
                model_id=ident,
                metadata=metadata,
                pad_token_id=default_pad_token_id(model),
            )
            self.compiled_models[key] = wrapped
            self.model_metadata[ident] = metadata
            self._last = wrapped
            return wrapped

    def get_model_info(self, model_id: str) -> dict[str, Any]:
        """Old per-model info; ``{"error": ...}`` for an unknown id, as before."""
        if model_id in self.model_metadata:
            return dict(self.model_metadata[model_id])
        return {"error": f"Model {model_id} not found"}

    def get_optimization_stats(self) -> LegacyStats:
        """The old stats dict, with the last compiled model's ``OptimizationStats`` in it.

        ``compilation_config`` is the spec the last model was compiled with (the
        constructor's spec, before any compile).
        """
        spec = self.spec
        if self._last is not None:
            spec = CompileSpec.from_dict(self._last.metadata["spec"])
        stats = LegacyStats(
            backend=self.choice.name,
            backend_version=self.backend.version(),
            backend_choice=self.choice.reason,
            compilation_system=self._compilation_system,
            description=self.choice.compiler.description or self.choice.name,
            vllm_available=self.choice.name == VLLM,
            total_models=sum(not m.closed for m in self.compiled_models.values()),
            cache_dir=spec.cache_dir,
            compilation_config=spec.to_dict(),
        )
        if self._last is not None:
            typed = self._last.stats
            stats.optimization_stats = typed
            stats.update(typed.to_dict())
            stats["model_id"] = self._last.model_id
        return stats

    def close(self) -> None:
        """Close every model this compiler compiled."""
        with self._lock:
            for model in self.compiled_models.values():
                model.close()

    def __enter__(self) -> CompatCompiler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} on backend {self.choice.name!r} ({self.choice.reason})>"


class VLLMNativeAOTCompiler(CompatCompiler):
    """The old vLLM-native compiler: always the ``vllm`` backend, never a silent fallback."""

    backend_name = VLLM


class EnhancedAOTCompiler(CompatCompiler):
    """The old Enhanced AOT compiler: always the ``legacy`` backend (plain PyTorch)."""

    backend_name = LEGACY
    positional = ("cache_dir", "enable_aot", "max_compilation_time", "cuda_graph_config")


class IntegratedAOTCompiler(CompatCompiler):
    """The old integrated compiler (Enhanced AOT with CUDA graphs): the ``legacy`` backend."""

    backend_name = LEGACY
    positional = (
        "cache_dir",
        "enable_aot",
        "max_compilation_time",
        "enable_cuda_graphs",
        "batch_sizes",
    )


def compiler_class_for(backend: str) -> type[CompatCompiler]:
    """The old class name that matches a backend, so ``type(compiler).__name__`` reads as it
    used to."""
    return {VLLM: VLLMNativeAOTCompiler, LEGACY: EnhancedAOTCompiler}.get(backend, CompatCompiler)
