"""Distance matrices for miners, computed the way pytorch-metric-learning computes them.

A miner's selection is a comparison of matrix entries (a margin test, a sort, a
histogram bin), so entries that tie or sit on a threshold decide it. Euclidean
matrices here come from ``torch.cdist`` (pytorch-metric-learning's ``LpDistance``), so
the same embeddings give bit-identical entries, ties included; other distances use
their own ``compute_matrix``. No gradients are involved.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance


def miner_matrix(distance: BaseDistance, x: Tensor, ref: Tensor) -> Tensor:
    """``(c, d), (m, d) -> (c, m)`` matrix of already normalized rows."""
    if type(distance) is EuclideanDistance:
        d = torch.cdist(x, ref, p=2.0)  # (c, m)
        return d * d if distance.squared else d
    return distance.compute_matrix(x, ref)


__all__ = ["miner_matrix"]


def max_positives(labels: Tensor, ref_labels: Tensor, same_set: bool) -> int:
    """The most positives any anchor has in the reference set (0 when none has one)."""
    from dmlkit.functional.chunking import chunk_size_for, row_chunks
    from dmlkit.functional.labels import pos_neg_masks

    n, m = labels.shape[0], ref_labels.shape[0]
    most = 0
    for a, b in row_chunks(n, chunk_size_for(n, m)):
        pos, _ = pos_neg_masks(labels[a:b], ref_labels, exclude_self=same_set, row_offset=a)
        most = max(most, int(pos.sum(dim=1).max()))
    return most


def positive_slots(pos: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each row's positives first, ascending: ``(c, m)`` mask -> indices and flags ``(c, k)``.

    Rows with fewer than ``k`` positives are padded with non-positives (flag False), so
    triplets can be enumerated as (anchor, positive slot, negative) in O(c * k * m)
    instead of O(c * m^2), in the same (anchor, positive, negative) order.
    """
    order = torch.argsort(pos.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
    return order, pos.gather(1, order)


__all__ += ["max_positives", "positive_slots"]
