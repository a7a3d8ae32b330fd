"""Powers of two: the sizes aot-vllm rounds batch sizes, lengths and token budgets to.

Rounding to powers of two keeps the number of distinct compiled shapes (and cache keys)
small: equal workloads land on equal sizes.
"""

from __future__ import annotations

__all__ = ["next_pow2", "pow2_ladder"]


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n`` <= 1)."""
    return 1 << max(0, n - 1).bit_length()


def pow2_ladder(top: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``top``, with ``top`` itself last when it is not a power of two."""
    sizes = [1 << i for i in range(max(1, top).bit_length()) if 1 << i <= top]
    if top not in sizes:
        sizes.append(top)
    return tuple(sizes)
