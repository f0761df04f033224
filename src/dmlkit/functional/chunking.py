"""Helpers for computing all-pairs quantities in row chunks.

Losses over all pairs or triplets of a large batch walk the anchors in chunks and
recompute each chunk in the backward pass (activation checkpointing), so peak memory
is O(chunk * m) (pairs) or O(chunk * m^2) (triplets) instead of O(n * m) / O(n * m^2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

#: elements of an intermediate per chunk (16M floats = 64 MB in fp32)
DEFAULT_BUDGET = 1 << 24


def chunk_size_for(n_rows: int, elems_per_row: int, budget: int = DEFAULT_BUDGET) -> int:
    """Rows per chunk so that ``rows * elems_per_row`` stays under ``budget``."""
    if n_rows <= 0:
        return 1
    return max(1, min(n_rows, budget // max(1, elems_per_row)))


def row_chunks(n_rows: int, chunk: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` bounds covering ``range(n_rows)`` in steps of ``chunk``."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    for start in range(0, n_rows, chunk):
        yield start, min(start + chunk, n_rows)


def maybe_checkpoint(fn: Callable[..., Any], *args: Any, enabled: bool = True) -> Any:
    """Call ``fn(*args)``; under autograd and ``enabled``, recompute it in backward."""
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    )
    if enabled and needs_grad:
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


__all__ = ["DEFAULT_BUDGET", "chunk_size_for", "row_chunks", "maybe_checkpoint"]
