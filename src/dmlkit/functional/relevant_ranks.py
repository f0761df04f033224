"""Ranks of every relevant reference in full rankings, by counting instead of sorting.

Full average precision and the reciprocal rank need the rank of each relevant reference
in a query's whole ranking, not just the top of it. Sorting every row costs
``O(m log m)`` per query and several passes over ``(c, m)`` arrays. With class labels the
relevant references of a query are its class's members, known in advance. So their keys
are taken out and sorted (``R`` probes). Each key of the row is then placed among the
probes with one binary search, and a histogram of those places gives, for the ``k``-th
nearest relevant reference, the number of keys at or below its key. That number is its
rank, as long as no other key equals it.

Rows with such an exact tie (ranked by reference index, see
:mod:`dmlkit.functional.retrieval`) are flagged so the caller can rank them by sorting.
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor


class ClassMembers:
    """References grouped by class label: how many a query label has (:meth:`sizes`)
    and which rows they are (:meth:`members`, padded).

    Parameters
    ----------
    reference_labels : Tensor
        ``(m,)`` integer class labels.
    """

    def __init__(self, reference_labels: Tensor) -> None:
        self.labels = reference_labels
        self.classes, self.counts = torch.unique(reference_labels, return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    @cached_property
    def order(self) -> Tensor:
        """Reference rows grouped by class (only :meth:`members` needs it)."""
        return torch.argsort(self.labels, stable=True)

    def _lookup(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(class position, references of that class)`` per label (0 when absent)."""
        if len(self.classes) == 0:
            zero = torch.zeros_like(labels)
            return zero, zero
        pos = torch.searchsorted(self.classes, labels).clamp_max(len(self.classes) - 1)
        return pos, torch.where(self.classes[pos] == labels, self.counts[pos], 0)

    def sizes(self, labels: Tensor) -> Tensor:
        """``(c,)`` number of references with each label."""
        return self._lookup(labels)[1]

    def members(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(cols (c, w), valid (c, w))``: the reference rows of each label's class,
        ``w`` the largest such class (entries past a class's size are not valid)."""
        pos, count = self._lookup(labels)
        width = int(count.max()) if len(count) else 0
        offs = torch.arange(width, device=labels.device)[None, :]  # (1, w)
        valid = offs < count[:, None]  # (c, w)
        if len(self.classes) == 0:
            return offs.expand(len(labels), 0), valid
        flat = (self.starts[pos][:, None] + offs).clamp_max(len(self.order) - 1)
        return self.order[flat], valid


def relevant_ranks(keys: Tensor, cols: Tensor, valid: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Ranks (1-based) of each query's relevant references, nearest first.

    Parameters
    ----------
    keys : Tensor
        ``(c, m)`` ranking keys (smaller = closer); excluded references are ``inf``.
    cols, valid : Tensor
        ``(c, w)`` candidate relevant columns and which are real (see
        :meth:`ClassMembers.members`); excluded ones (``inf`` keys) may be among them.
    r : Tensor
        ``(c,)`` number of relevant references of each query (the finite ones).

    Returns
    -------
    ranks : Tensor
        ``(c, w)`` int64: the rank of the ``k``-th nearest relevant reference in column
        ``k`` (for ``k < r``; later columns are meaningless).
    tied : Tensor
        ``(c,)`` bool: rows where another key equals a relevant key exactly, whose ranks
        depend on reference indices. Their ``ranks`` are not to be used.
    """
    c, w = cols.shape
    if w == 0:  # no query of these has a relevant reference
        return cols.new_zeros(c, 0), torch.zeros(c, dtype=torch.bool, device=keys.device)
    inf = torch.tensor(float("inf"), dtype=keys.dtype, device=keys.device)
    probes = torch.where(valid, keys.gather(1, cols), inf).sort(dim=1).values  # (c, w)
    place = torch.searchsorted(probes, keys)  # (c, m): probes strictly below each key
    rows = torch.arange(c, device=keys.device)[:, None] * (w + 1)
    hist = torch.bincount((place + rows).view(-1), minlength=c * (w + 1)).view(c, w + 1)
    ranks = hist.cumsum(dim=1)[:, :w]  # keys <= the k-th probe (itself included)
    # exact when the only key equal to each probe is the probe's own
    own = place < r[:, None]
    equal = own & (probes.gather(1, place.clamp_max(w - 1)) == keys)
    tied = equal.sum(dim=1) != r
    if w > 1:
        k = torch.arange(1, w, device=keys.device)[None, :]
        dup = (probes[:, 1:] == probes[:, :-1]) & (k < r[:, None])
        tied |= dup.any(dim=1)
    return ranks, tied


__all__ = ["ClassMembers", "relevant_ranks"]
