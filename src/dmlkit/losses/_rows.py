"""Per-anchor ("row") machinery shared by the pair- and tuple-based losses.

Every pair loss here is a function of one anchor's row of the ``(n, m)`` distance
matrix and of two weight rows saying which entries are positives and negatives. The
rows come either from labels or from mined index tuples (as multiplicities, so a pair
listed twice counts twice), and are walked in chunks with recomputation in backward so
that peak memory is O(chunk * m), never O(n * m).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional import chunking
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple, Pairs


def masked_logsumexp(
    x: Tensor, keep: Tensor, *, weights: Tensor | None = None, add_one: bool = False
) -> Tensor:
    """``log(sum_j w_j exp(x_j) [+ 1])`` over the kept entries of each row, ``(c, m) -> (c,)``.

    Rows with no kept entry give 0 (pytorch-metric-learning's convention), with a finite
    zero gradient: no ``-inf - -inf`` and no ``log(0)`` ever reaches autograd.
    ``weights`` are multiplicities (a pair listed ``k`` times counts ``k`` times).
    """
    neg_inf = torch.finfo(x.dtype).min
    z = x.masked_fill(~keep, neg_inf)  # (c, m)
    peak = z.amax(dim=1, keepdim=True).detach()  # (c, 1)
    if add_one:
        peak = peak.clamp_min(0.0)
    e = torch.exp(z - peak) * keep  # (c, m), exactly 0 off the mask
    if weights is not None:
        e = e * weights
    s = e.sum(dim=1)  # (c,)
    if add_one:
        s = s + torch.exp(-peak.squeeze(1))
    any_kept = keep.any(dim=1)  # (c,)
    safe = torch.where(any_kept, s, torch.ones_like(s))
    return torch.where(any_kept, peak.squeeze(1) + torch.log(safe), torch.zeros_like(s))


def as_pairs(indices: IndexTuple) -> Pairs:
    """Positive and negative pairs of any tuple, keeping duplicates (PML's ``convert_to_pairs``).

    A triplet ``(a, p, n)`` contributes the positive pair ``(a, p)`` and the negative pair
    ``(a, n)``; quadruplets use their first three members.
    """
    if isinstance(indices, Pairs):
        return indices
    a, p, n = indices[0], indices[1], indices[2]
    return Pairs(a, p, a, n)


class RowWeights:
    """Positive / negative weight rows ``(c, m)`` for a chunk of anchors.

    From ``labels`` (0/1, anchors never their own positive when the reference set is the
    batch) or from ``pairs`` (multiplicities of each listed pair).
    """

    def __init__(
        self,
        labels: Tensor | None,
        ref_labels: Tensor | None,
        pairs: Pairs | None,
        m: int,
        exclude_self: bool,
    ) -> None:
        self.labels = labels
        self.ref_labels = labels if ref_labels is None else ref_labels
        self.pairs = pairs
        self.m = m
        self.exclude_self = exclude_self
        if pairs is not None:  # flat positions sorted once: a chunk reads a contiguous slice
            a1, p, a2, n = pairs
            self._pos = torch.sort(a1 * m + p).values  # (P,)
            self._neg = torch.sort(a2 * m + n).values  # (N,)

    def __call__(self, start: int, stop: int, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
        if self.pairs is None:
            pos, neg = pos_neg_masks(
                self.labels[start:stop],
                self.ref_labels,
                exclude_self=self.exclude_self,
                row_offset=start,
            )  # (c, m)
            return pos.to(dtype), neg.to(dtype)
        return (
            _count_rows(self._pos, start, stop, self.m, dtype, device),
            _count_rows(self._neg, start, stop, self.m, dtype, device),
        )


def _count_rows(flat: Tensor, start: int, stop: int, m: int, dtype, device) -> Tensor:
    """How often each ``(row, col)`` of rows ``start:stop`` is listed, ``(c, m)``.

    ``flat`` holds the sorted positions ``row * m + col`` of every listed pair.
    """
    c = stop - start
    bounds = torch.tensor([start * m, stop * m], device=flat.device)
    lo, hi = torch.searchsorted(flat, bounds).tolist()  # this chunk's slice
    counts = torch.bincount(flat[lo:hi] - start * m, minlength=c * m)  # (c * m,)
    return counts.view(c, m).to(device=device, dtype=dtype)


def chunk_bounds(n_rows: int, elems_per_row: int) -> tuple[int, Iterator[tuple[int, int]]]:
    """Rows per chunk under the current :data:`~dmlkit.functional.chunking.DEFAULT_BUDGET`."""
    chunk = chunking.chunk_size_for(n_rows, elems_per_row, chunking.DEFAULT_BUDGET)
    return chunk, chunking.row_chunks(n_rows, chunk)


def sum_over_chunks(
    fn: Callable[..., Tensor],
    n_rows: int,
    elems_per_row: int,
    *tensors: Tensor,
) -> Tensor:
    """``sum_k fn(start_k, stop_k, *tensors)`` over row chunks, one chunk's memory at a time.

    ``fn`` returns a fixed-size 1-D tensor of partial sums (e.g. a loss sum and a count).
    Through :func:`~dmlkit.functional.chunking.chunked_sum`: a chunk's gradient is taken
    as soon as it is computed (a loss sum stacked with counts), larger outputs are
    recomputed in backward. Chunks hold ~128K-element matrices, never fewer than 64 rows.
    """
    if n_rows < 1:
        raise ValueError("sum_over_chunks needs at least one row")
    chunk, _ = chunk_bounds(n_rows, elems_per_row)
    chunk = min(chunk, chunking.eager_chunk_size(n_rows, max(1, elems_per_row // 4)))
    return chunking.chunked_sum(fn, n_rows, chunk, *tensors)


#: most elements of an ``(n, m)`` matrix for the single-pass path of the pair losses
#: (2M floats = 8 MB in fp32): above it they walk row chunks
FUSED_BUDGET = 1 << 21


def use_fused(x: Tensor, ref: Tensor, labels: Tensor | None, indices: object) -> bool:
    """Whether a pair loss may take its one-pass path (labels, small ``(n, m)``, float)."""
    return (
        indices is None
        and labels is not None
        and x.shape[0] * ref.shape[0] <= min(FUSED_BUDGET, chunking.DEFAULT_BUDGET)
        and x.is_floating_point()
    )


class _WithGrads(torch.autograd.Function):
    """``value`` whose gradients w.r.t. ``x`` and ``ref`` were computed in closed form."""

    @staticmethod
    def forward(ctx, value, x, ref, gx, gref):  # type: ignore[override]
        ctx.save_for_backward(gx, gref)
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        gx, gref = ctx.saved_tensors
        return None, gx * g, gref * g, None, None


def with_grads(value: Tensor, x: Tensor, ref: Tensor, gx: Tensor, gref: Tensor) -> Tensor:
    """Attach precomputed gradients ``gx`` ``(n, d)`` and ``gref`` ``(m, d)`` to ``value``.

    When ``ref`` is ``x`` autograd adds the two. No double backward.
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or ref.requires_grad)):
        return value
    return _WithGrads.apply(value, x, ref, gx, gref)


def pack(*values: Tensor) -> Tensor:
    """Stack scalar partial sums (losses, counts) into one 1-D tensor of the first's dtype."""
    return torch.stack([v.to(values[0].dtype) for v in values])


def setup_rows(
    distance: BaseDistance,
    embeddings: Tensor,
    labels: Tensor | None,
    indices: IndexTuple | None,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
) -> tuple[Tensor, Tensor, RowWeights]:
    """Normalized queries ``(n, d)``, references ``(m, d)`` and their weight-row source."""
    x = distance.maybe_normalize(embeddings)  # (n, d)
    ref = x if ref_embeddings is None else distance.maybe_normalize(ref_embeddings)  # (m, d)
    pairs = None if indices is None else as_pairs(indices)
    weights = RowWeights(labels, ref_labels, pairs, ref.shape[0], ref_embeddings is None)
    return x, ref, weights


def positive_pairs(labels: Tensor, ref_labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """All positive pairs, row-major, built in row chunks (no ``(n, m)`` mask at once)."""
    full_ref = labels if ref_labels is None else ref_labels
    rows, cols = [], []
    _, bounds = chunk_bounds(labels.shape[0], full_ref.shape[0])
    for start, stop in bounds:
        pos, _ = pos_neg_masks(
            labels[start:stop], full_ref, exclude_self=ref_labels is None, row_offset=start
        )  # (c, m)
        i, j = torch.where(pos)
        rows.append(i + start)
        cols.append(j)
    return torch.cat(rows), torch.cat(cols)


__all__ = [
    "masked_logsumexp",
    "as_pairs",
    "RowWeights",
    "chunk_bounds",
    "sum_over_chunks",
    "setup_rows",
    "pack",
    "FUSED_BUDGET",
    "use_fused",
    "with_grads",
    "positive_pairs",
]
