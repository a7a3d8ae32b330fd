"""Weights as inputs: compiled steps take every weight as an argument, never as a constant.

A compiled artifact that embeds weights is only correct for the checkpoint it was built
from, yet its cache key is derived from the config (the same for every checkpoint of an
architecture). So the legacy backend compiles ``WeightsAsInputs``: the step as a function
of ``(input_ids, positions, last_index, *kv, *weights)`` (``torch.func.functional_call``).
Exported programs then hold no parameters or buffers, AOTInductor packages hold no weight
bytes (``get_constant_fqns()`` is empty), and Inductor's FX-graph cache entries see the
weights as placeholders. One artifact serves any checkpoint of the architecture, as
vLLM's does, and a config-only compile serves real weights later.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from aot_legacy.decoder import StaticKVDecoder


def step_tensors(step: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """Every tensor the step reads (parameters, then buffers; tied ones once), in a fixed order."""
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    seen: set[int] = set()
    for name, tensor in (*step.named_parameters(), *step.named_buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        names.append(name)
        tensors.append(tensor.detach())
    return names, tensors


class WeightsAsInputs(nn.Module):  # type: ignore[misc]
    """``forward(input_ids, positions, last_index, *kv, *weights)`` over a step.

    The step is held outside the module tree (``self.step`` is a plain attribute), so
    export and torch.compile see no parameters of their own: every weight is an input.
    """

    def __init__(self, step: StaticKVDecoder, *, num_kv: int, names: Sequence[str]) -> None:
        super().__init__()
        self.__dict__["step"] = step  # not a registered submodule, on purpose
        self.num_kv = num_kv
        self.names = tuple(names)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        last_index: torch.Tensor,
        *rest: torch.Tensor,
    ) -> torch.Tensor:
        from torch.func import functional_call

        kv = rest[: self.num_kv]
        weights = dict(zip(self.names, rest[self.num_kv :], strict=True))
        args = (input_ids, positions, last_index, *kv)
        return functional_call(self.step, weights, args, strict=False)  # type: ignore[no-any-return]


def skeleton_bytes(step: nn.Module) -> bytes:
    """The step pickled with every tensor on the meta device: its structure, no weights.

    A child process unpickles it (``from_skeleton``) to compile the same graph without
    the weights crossing the process boundary. Object identity survives pickling, so
    tied weights stay tied.
    """
    names, tensors = step_tensors(step)
    meta = {n: torch.empty_like(t, device="meta") for n, t in zip(names, tensors, strict=True)}
    from torch.nn.utils.stateless import _reparametrize_module

    with _reparametrize_module(step, meta, tie_weights=True):
        return pickle.dumps(step, protocol=pickle.HIGHEST_PROTOCOL)


def from_skeleton(data: bytes) -> Any:
    """A step unpickled from ``skeleton_bytes``, every tensor still on the meta device.

    It is only ever called through ``WeightsAsInputs``, which replaces every tensor with
    an input, so it needs no memory; a tensor that were not replaced would fail loudly
    on the meta device instead of being compiled in as a constant.
    """
    return pickle.loads(data)  # bytes this backend pickled moments ago


def assert_weight_free(exported: Any) -> None:
    """Refuse an exported program that holds parameters, buffers or tensor constants."""
    held = [*exported.state_dict, *exported.constants]
    if held:
        raise RuntimeError(
            f"the exported step still holds tensors ({', '.join(map(str, held[:4]))}); "
            "packaging it would embed them, so it is not packaged"
        )
