"""Typed index tuples and their conversions.

Conventions follow pytorch-metric-learning so mined indices carry over:

* :class:`Pairs` ``(a1, p, a2, n)``: positive pairs ``(a1[i], p[i])`` and negative pairs
  ``(a2[j], n[j])``;
* :class:`Triplets` ``(anchor, positive, negative)``;
* :class:`Quadruplets` ``(anchor, positive, negative, negative2)`` where ``negative2``
  is a negative of ``negative`` too (Chen et al. 2017).

Anchors index the query embeddings; positives and negatives index the reference
embeddings (the batch itself unless ``ref_embeddings`` is given).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from dmlkit.functional.labels import pos_neg_masks


class Pairs(NamedTuple):
    a1: Tensor
    p: Tensor
    a2: Tensor
    n: Tensor


class Triplets(NamedTuple):
    anchor: Tensor
    positive: Tensor
    negative: Tensor


class Quadruplets(NamedTuple):
    anchor: Tensor
    positive: Tensor
    negative: Tensor
    negative2: Tensor


IndexTuple = Pairs | Triplets | Quadruplets


def _empty(device: torch.device | None = None) -> Tensor:
    return torch.empty(0, dtype=torch.long, device=device)


def empty_pairs(device: torch.device | None = None) -> Pairs:
    return Pairs(_empty(device), _empty(device), _empty(device), _empty(device))


def empty_triplets(device: torch.device | None = None) -> Triplets:
    return Triplets(_empty(device), _empty(device), _empty(device))


def all_pairs(labels: Tensor, ref_labels: Tensor | None = None) -> Pairs:
    """Every positive and negative pair of a batch (O(n*m) indices)."""
    pos, neg = pos_neg_masks(labels, ref_labels)  # (n, m)
    a1, p = torch.where(pos)
    a2, n = torch.where(neg)
    return Pairs(a1, p, a2, n)


def all_triplets(labels: Tensor, ref_labels: Tensor | None = None) -> Triplets:
    """Every valid triplet (O(n*m^2) indices; use for small batches and references only)."""
    pos, neg = pos_neg_masks(labels, ref_labels)  # (n, m)
    valid = pos[:, :, None] & neg[:, None, :]  # (n, m, m)
    a, p, n = torch.where(valid)
    return Triplets(a, p, n)


def pairs_to_triplets(pairs: Pairs) -> Triplets:
    """Join positive and negative pairs that share an anchor into triplets.

    Ordered by positive pair, then by negative pair (pytorch-metric-learning's order).
    """
    a1, p, a2, n = pairs
    if a1.numel() == 0 or a2.numel() == 0:
        return empty_triplets(a1.device)
    # the negative pairs grouped by anchor (stable: each group keeps its order), and each
    # positive pair's group as a range: O(P log N + T), never a (P, N) match matrix
    order = torch.argsort(a2, stable=True)  # (N,)
    a2_sorted = a2[order]  # (N,)
    a1 = a1.contiguous()
    lo = torch.searchsorted(a2_sorted, a1)  # (P,)
    count = torch.searchsorted(a2_sorted, a1, right=True) - lo  # (P,)
    i = torch.repeat_interleave(torch.arange(a1.numel(), device=a1.device), count)  # (T,)
    start = torch.cumsum(count, 0) - count  # (P,) first triplet of each positive pair
    offset = torch.arange(i.numel(), device=a1.device) - start[i]  # (T,)
    j = order[lo[i] + offset]  # (T,)
    return Triplets(a1[i], p[i], n[j])


def triplets_to_pairs(triplets: Triplets) -> Pairs:
    """The positive pair ``(a, p)`` and negative pair ``(a, n)`` of each triplet.

    Pairs shared by several triplets are kept once per triplet (as in
    pytorch-metric-learning), so pair losses weight them by how often they were mined.
    """
    a, p, n = triplets
    return Pairs(a, p, a, n)


def check_indices(indices: IndexTuple, n: int, m: int) -> None:
    """Raise a clear error unless ``indices`` index ``n`` anchors and ``m`` references."""
    if not isinstance(indices, tuple):
        raise TypeError(f"indices must be Pairs, Triplets or Quadruplets, got {type(indices)}")
    lengths = set()
    for k, t in enumerate(indices):
        if not isinstance(t, Tensor) or t.dim() != 1:
            raise TypeError(f"indices[{k}] must be a 1-D index tensor")
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"indices[{k}] must be int64, got {t.dtype}")
        if t.numel():
            bound = n if _is_anchor_slot(indices, k) else m
            lo, hi = (int(v) for v in torch.aminmax(t))
            if lo < 0 or hi >= bound:
                raise ValueError(
                    f"indices[{k}] holds {lo if lo < 0 else hi}, outside [0, {bound - 1}]"
                )
        lengths.add((k, t.numel()))
    if isinstance(indices, Pairs):
        if indices.a1.numel() != indices.p.numel() or indices.a2.numel() != indices.n.numel():
            raise ValueError("Pairs: a1/p and a2/n must have equal lengths")
    elif len({size for _, size in lengths}) > 1:
        raise ValueError(f"all members of {type(indices).__name__} must have equal length")


def _is_anchor_slot(indices: IndexTuple, k: int) -> bool:
    if isinstance(indices, Pairs):
        return k in (0, 2)
    return k == 0


def as_index_tuple(indices: tuple) -> IndexTuple:
    """Wrap a plain 3- or 4-tuple (e.g. from pytorch-metric-learning) in the typed form.

    A plain 4-tuple is read as :class:`Pairs` (the pair convention); pass
    :class:`Quadruplets` explicitly for quadruplets.
    """
    if isinstance(indices, (Pairs, Triplets, Quadruplets)):
        return indices
    if isinstance(indices, tuple) and len(indices) == 3:
        return Triplets(*indices)
    if isinstance(indices, tuple) and len(indices) == 4:
        return Pairs(*indices)
    got = (f"a {len(indices)}-tuple" if isinstance(indices, tuple)
           else type(indices).__name__)
    raise TypeError(
        f"indices must be Pairs, Triplets, Quadruplets or a 3/4-tuple (anchor, positive, "
        f"negative) / (anchor, positive, anchor, negative), got {got}"
    )


__all__ = [
    "Pairs",
    "Triplets",
    "Quadruplets",
    "IndexTuple",
    "empty_pairs",
    "empty_triplets",
    "all_pairs",
    "all_triplets",
    "pairs_to_triplets",
    "triplets_to_pairs",
    "check_indices",
    "as_index_tuple",
]
