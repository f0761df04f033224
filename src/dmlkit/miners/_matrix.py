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
