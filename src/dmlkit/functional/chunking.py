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


#: elements of a (chunk, m) matrix in :func:`chunked_sum` chunks (512 KB in fp32)
EAGER_BUDGET = 1 << 17
#: fewest rows per chunk in :func:`chunked_sum` (bounds the per-chunk Python overhead)
EAGER_MIN_ROWS = 64
#: most differentiable output elements whose gradients :func:`chunked_sum` takes eagerly
EAGER_MAX_OUTPUTS = 4


def eager_chunk_size(n_rows: int, elems_per_row: int) -> int:
    """Rows per chunk for :func:`chunked_sum`: under :data:`EAGER_BUDGET`, at least 64.

    Fewer rows would make the per-chunk gradients of the reference set (``(m, d)``
    each) dominate the work.
    """
    rows = chunk_size_for(n_rows, elems_per_row, EAGER_BUDGET)
    return max(min(n_rows, EAGER_MIN_ROWS), rows)


def chunked_sum(fn: Callable[..., Any], n_rows: int, chunk: int, *tensors: torch.Tensor) -> Any:
    """``sum_k fn(start_k, stop_k, *tensors)`` over row chunks, with O(chunk) autograd memory.

    ``fn`` returns a tensor or a tuple of tensors of fixed shapes (partial sums, counts).
    Under autograd each chunk's graph lives only while that chunk is computed: when the
    differentiable outputs are at most :data:`EAGER_MAX_OUTPUTS` scalars (a loss sum
    or two, as separate tensors or stacked with non-differentiable counts), their gradients
    with respect to ``tensors`` are taken right away and kept (sizes of ``tensors``), so
    backward is a weighted sum with no recomputation; other outputs are recomputed
    chunk by chunk in backward instead (checkpointing).
    Peak memory is one chunk's intermediates, whatever ``n_rows``. No double backward.

    Gradients flow only through ``tensors``: ``fn`` must not close over other tensors
    that need gradients (pass them as arguments instead).
    """
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
    )
    if needs_grad:
        return _ChunkedSum.apply(fn, n_rows, chunk, *tensors)
    total, single = None, True
    for a, b in row_chunks(n_rows, chunk):
        raw = fn(a, b, *tensors)
        single = isinstance(raw, torch.Tensor)
        total = _add_parts(total, _as_tuple(raw))
    if total is None:
        raise ValueError("chunked_sum needs at least one row")
    return total[0] if single else total


def _as_tuple(parts: Any) -> tuple[torch.Tensor, ...]:
    return (parts,) if isinstance(parts, torch.Tensor) else tuple(parts)


def _add_parts(total: Any, parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    parts = tuple(p.detach() for p in parts)
    if total is None:
        return parts
    return tuple(t + p for t, p in zip(total, parts, strict=True))


def _differentiable_elements(part: torch.Tensor) -> list[int] | None:
    """Flat indices of ``part`` that carry a gradient; None when that is unknown.

    A scalar is its own element. A 1-D ``torch.stack`` of scalars (partial sums next
    to counts) is read through its autograd node: the backward of one element walks
    only that element's graph, so counts cost nothing. Other vectors: None.
    """
    if not part.requires_grad:
        return []
    if part.numel() == 1:
        return [0]
    node = part.grad_fn
    if part.dim() == 1 and node is not None and type(node).__name__ == "StackBackward0":
        nexts = node.next_functions
        if len(nexts) == part.numel():
            return [k for k, (fn, _) in enumerate(nexts) if fn is not None]
    return None


class _ChunkedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, n_rows, chunk, *tensors):  # type: ignore[override]
        wanted = [i for i, _ in enumerate(tensors) if ctx.needs_input_grad[3 + i]]
        leaves = [
            t.detach().requires_grad_(True) if i in wanted else t for i, t in enumerate(tensors)
        ]
        total: tuple[torch.Tensor, ...] | None = None
        grads: dict[tuple[int, int], list[torch.Tensor | None]] = {}
        recompute: list[tuple[int, int]] = []
        single = True
        for a, b in row_chunks(n_rows, chunk):
            with torch.enable_grad():
                raw = fn(a, b, *leaves)
            single = isinstance(raw, torch.Tensor)
            parts = _as_tuple(raw)
            elements = [_differentiable_elements(p) for p in parts]
            comps = [(j, k) for j, ks in enumerate(elements) for k in ks or []]
            eager = len(comps) <= EAGER_MAX_OUTPUTS and all(ks is not None for ks in elements)
            if not eager:
                recompute.append((a, b))
            for c, (j, k) in enumerate(comps if eager else []):
                with torch.enable_grad():  # selecting the element is recorded too
                    target = parts[j].reshape(-1)[k]
                gs = torch.autograd.grad(
                    target,
                    [leaves[i] for i in wanted],
                    retain_graph=c < len(comps) - 1,
                    allow_unused=True,
                )
                acc = grads.setdefault((j, k), [None] * len(wanted))
                for s, g in enumerate(gs):
                    if g is not None:
                        acc[s] = g if acc[s] is None else acc[s] + g
            total = _add_parts(total, parts)
            del raw, parts
        if total is None:
            raise ValueError("chunked_sum needs at least one row")
        ctx.fn, ctx.wanted, ctx.grads, ctx.recompute = fn, wanted, grads, recompute
        ctx.n_inputs, ctx.single = len(tensors), single
        ctx.save_for_backward(*[t if isinstance(t, torch.Tensor) else None for t in tensors])
        for t in total:
            if not t.is_floating_point():
                ctx.mark_non_differentiable(t)
        return total[0] if single else total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):  # type: ignore[override]
        out: list[torch.Tensor | None] = [None] * ctx.n_inputs
        flat = [None if g is None else g.reshape(-1) for g in grad_outputs]

        def add(i: int, g: torch.Tensor) -> None:
            out[i] = g if out[i] is None else out[i] + g

        for (j, k), gs in ctx.grads.items():
            if flat[j] is None:
                continue
            for s, g in enumerate(gs):
                if g is not None:
                    add(ctx.wanted[s], g * flat[j][k])
        if ctx.recompute:
            saved = ctx.saved_tensors
            leaves = [
                t.detach().requires_grad_(True) if i in ctx.wanted else t
                for i, t in enumerate(saved)
            ]
            for a, b in ctx.recompute:
                with torch.enable_grad():
                    parts = _as_tuple(ctx.fn(a, b, *leaves))
                pairs = [
                    (p, g.reshape(p.shape))
                    for p, g in zip(parts, grad_outputs, strict=True)
                    if p.requires_grad and g is not None
                ]
                gs = torch.autograd.grad(
                    [p for p, _ in pairs],
                    [leaves[i] for i in ctx.wanted],
                    [g for _, g in pairs],
                    allow_unused=True,
                )
                for s, g in enumerate(gs):
                    if g is not None:
                        add(ctx.wanted[s], g)
        return (None, None, None, *out)


__all__ = [
    "DEFAULT_BUDGET",
    "EAGER_BUDGET",
    "chunk_size_for",
    "row_chunks",
    "maybe_checkpoint",
    "eager_chunk_size",
    "chunked_sum",
]
