"""``CUDAGraphOptimizer``: one CUDA graph per decode batch bucket, sharing one memory pool.

A call pads its batch up to the smallest captured bucket, copies the inputs into that
graph's static buffers, replays it and slices the outputs back to the real batch. The KV
cache is already at fixed addresses (the runtime owns it), so the graphs read and write
it directly. Without CUDA the optimizer records why and calls the step uncaptured.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    output: torch.Tensor


class CUDAGraphOptimizer:
    """Capture ``step(input_ids[B,1], positions[B,1], last_index[B])`` per batch bucket."""

    def __init__(
        self,
        step: StepFn,
        *,
        buckets: Sequence[int],
        device: torch.device | str,
        enabled: bool = True,
        pad_token_id: int = 0,
    ) -> None:
        self.step = step
        self.buckets = tuple(sorted(set(buckets)))
        self.device = torch.device(device)
        self.pad_token_id = pad_token_id
        self.enabled = enabled
        self.note = ""
        self.capture_time_s: float | None = None
        self.replays = 0
        self.uncaptured_calls = 0
        self._graphs: dict[int, _Graph] = {}
        self._pool: object | None = None
        if not enabled:
            self.note = "disabled: cuda_graphs is false in the spec"
        elif self.device.type != "cuda" or not torch.cuda.is_available():
            self.note = "disabled: no CUDA device"

    @property
    def sizes(self) -> tuple[int, ...]:
        """Batch sizes that have a captured graph."""
        return tuple(sorted(self._graphs))

    @property
    def active(self) -> bool:
        """Whether calls replay graphs (at least one bucket captured)."""
        return bool(self._graphs)

    def capture(self, warmup_iters: int = 2) -> None:
        """Capture a graph per bucket, largest first so smaller ones reuse the pool's blocks."""
        if self.note:
            return
        t0 = time.perf_counter()
        self._pool = torch.cuda.graph_pool_handle()
        with torch.no_grad():
            for size in sorted(self.buckets, reverse=True):
                ids = torch.full((size, 1), self.pad_token_id, dtype=torch.long, device=self.device)
                pos = torch.zeros((size, 1), dtype=torch.long, device=self.device)
                last = torch.zeros((size,), dtype=torch.long, device=self.device)
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                # Warm-up runs lazy initialisation (cuBLAS handles, compiled-code guards)
                # outside the capture, where it would otherwise be recorded or fail.
                with torch.cuda.stream(side):
                    for _ in range(warmup_iters):
                        self.step(ids, pos, last)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    out = self.step(ids, pos, last)
                self._graphs[size] = _Graph(graph=graph, inputs=(ids, pos, last), output=out)
        torch.cuda.synchronize(self.device)
        self.capture_time_s = time.perf_counter() - t0

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, last_index: torch.Tensor
    ) -> torch.Tensor:
        n = input_ids.shape[0]
        if not self._graphs or input_ids.shape[1] != 1 or n > self.buckets[-1]:
            self.uncaptured_calls += 1
            return self.step(input_ids, positions, last_index)
        size = self.buckets[bisect.bisect_left(self.buckets, n)]
        g = self._graphs[size]
        ids, pos, last = g.inputs
        ids[:n].copy_(input_ids)
        pos[:n].copy_(positions)
        last[:n].copy_(last_index)
        if n < size:
            # Padded rows decode a pad token at position 0 of their own KV row, which no
            # real row ever reads.
            ids[n:].fill_(self.pad_token_id)
            pos[n:].zero_()
            last[n:].zero_()
        g.graph.replay()
        self.replays += 1
        # The static output is overwritten by the next replay; hand out a copy.
        return g.output[:n].clone()

    def close(self) -> None:
        """Drop the graphs and their pool."""
        self._graphs.clear()
        self._pool = None
