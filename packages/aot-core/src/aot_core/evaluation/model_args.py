"""What ``--model_args`` may say to aot's lm-eval model, checked before any engine starts."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aot_core.errors import SpecError
from aot_core.spec import CompileSpec

# Arguments lm-eval passes to every model (batch_size, device, ...). aot batches by the
# spec's max_num_seqs and runs where its backend runs, so these are accepted and recorded.
LM_EVAL_PASSED = ("batch_size", "max_batch_size", "device")

_OWN_KEYS = (
    "pretrained",
    "model",
    "backend",
    "spec",
    "eager",
    "tokenizer",
    "max_gen_toks",
    "add_bos_token",
    "prefix_token_id",
)


@dataclass(frozen=True, kw_only=True)
class EvalModelConfig:
    """How to start the model an evaluation job runs on."""

    model: Path
    """Local Hugging Face model directory."""

    backend: str | None = None
    """aot backend name; None lets the registry choose (``$AOT_BACKEND``, then priority)."""

    spec: CompileSpec = field(default_factory=CompileSpec)
    """The compile spec (from the spec file, with ``--model_args`` fields applied)."""

    tokenizer: Path | None = None
    """Tokenizer directory when it is not the model directory."""

    max_gen_toks: int = 256
    """Default most tokens to generate when a task does not say (lm-eval's default)."""

    add_bos_token: bool | None = None
    """Force adding (True) or not adding (False) the tokenizer's BOS; None: its default."""

    prefix_token_id: int | None = None
    """Token that stands for an empty context; None: BOS, else EOS (lm-eval's rule)."""

    ignored: Mapping[str, Any] = field(default_factory=dict)
    """lm-eval's generic arguments that aot does not use, kept for the record."""

    @property
    def eager(self) -> bool:
        """Whether the model runs without compilation."""
        return not self.spec.compiles


def parse_model_args(
    args: Mapping[str, Any], base_spec: CompileSpec | None = None
) -> EvalModelConfig:
    """An ``EvalModelConfig`` from lm-eval's parsed ``--model_args`` (plus its extras).

    Keys: ``pretrained`` (or ``model``), ``backend``, ``spec`` (a spec file), ``eager``,
    ``tokenizer``, ``max_gen_toks``, ``add_bos_token``, ``prefix_token_id``, and any
    ``CompileSpec`` field (``dtype=float32``, ``max_model_len=1024``, ...), which
    overrides the spec file. Unknown keys are refused, never dropped.
    """
    spec_fields = {f.name for f in dataclasses.fields(CompileSpec)}
    unknown = sorted(set(args) - set(_OWN_KEYS) - spec_fields - set(LM_EVAL_PASSED))
    if unknown:
        close = difflib.get_close_matches(unknown[0], [*_OWN_KEYS, *spec_fields], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(
            f"model_args: unknown key {unknown[0]!r}{hint}; aot's model takes "
            f"{', '.join(_OWN_KEYS)} and any spec field ({', '.join(sorted(spec_fields))})",
            field=unknown[0],
        )
    model = args.get("pretrained", args.get("model"))
    if not model:
        raise SpecError(
            "model_args: pass the model directory as pretrained=DIR", field="pretrained"
        )
    spec = base_spec if base_spec is not None else CompileSpec()
    if args.get("spec"):
        from aot_core.cli.command import load_spec

        spec = load_spec(str(args["spec"]))
    overrides = {k: _spec_value(k, v) for k, v in args.items() if k in spec_fields}
    if overrides:
        spec = CompileSpec.from_dict({**spec.to_dict(), **overrides})
    if _flag(args.get("eager", False), "eager"):
        spec = spec.replace(compile_mode="none")
    return EvalModelConfig(
        model=Path(str(model)).expanduser(),
        backend=str(args["backend"]) if args.get("backend") else None,
        spec=spec,
        tokenizer=Path(str(args["tokenizer"])).expanduser() if args.get("tokenizer") else None,
        max_gen_toks=_positive(args.get("max_gen_toks", 256), "max_gen_toks"),
        add_bos_token=(
            None
            if args.get("add_bos_token") is None
            else _flag(args["add_bos_token"], "add_bos_token")
        ),
        prefix_token_id=(
            None
            if args.get("prefix_token_id") is None
            else _positive(args["prefix_token_id"], "prefix_token_id", low=0)
        ),
        ignored={k: args[k] for k in LM_EVAL_PASSED if k in args},
    )


def _spec_value(name: str, value: Any) -> Any:
    # lm-eval's argument parser turns "1,2" into separate keys, so size lists are written
    # with colons: cuda_graph_sizes=1:2:4.
    if name.endswith("_sizes") and isinstance(value, str):
        try:
            return [int(v) for v in value.split(":") if v]
        except ValueError:
            raise SpecError(
                f"model_args: {name}={value!r}; write sizes as 1:2:4", field=name
            ) from None
    if name.endswith("_sizes") and isinstance(value, int):
        return [value]
    return value


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise SpecError(f"model_args: {name} must be true or false, got {value!r}", field=name)


def _positive(value: Any, name: str, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(
            f"model_args: {name} must be an integer >= {low}, got {value!r}", field=name
        )
    return value
