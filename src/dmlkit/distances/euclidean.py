"""Euclidean (L2) distance."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional import distances as F
from dmlkit.registry import register_distance


@register_distance("euclidean")
class EuclideanDistance(BaseDistance):
    """Euclidean distance ``|x - y|_2`` (or its square).

    Parameters
    ----------
    squared : bool
        Return ``|x - y|^2`` (pytorch-metric-learning's ``LpDistance(power=2)``).
    normalize_embeddings : bool
        L2-normalize inputs first, as pytorch-metric-learning's ``LpDistance`` does.

    Notes
    -----
    Unless ``squared``, a distance is exactly 0, with a zero gradient, where its square
    is at most 1e-12 times the pair's mean squared norm
    (:func:`~dmlkit.functional.distances.zero_distance_cut`): ``d <= 1e-6`` on
    normalized embeddings, and in proportion on un-normalized ones, so tiny embeddings
    keep their distances and gradients in any dtype.
    """

    is_similarity = False

    def __init__(self, squared: bool = False, normalize_embeddings: bool = True) -> None:
        super().__init__(normalize_embeddings=normalize_embeddings)
        self.squared = squared

    def compute_matrix(self, x: Tensor, y: Tensor | None) -> Tensor:
        if self.squared:
            return F.pairwise_squared_euclidean(x, y)
        return F.pairwise_euclidean(x, y)

    def compute_rowwise(self, x: Tensor, y: Tensor) -> Tensor:
        if self.squared:
            return F.rowwise_squared_euclidean(x, y)
        return F.rowwise_euclidean(x, y)

    def matrix_surrogate(self, x: Tensor, y: Tensor, grad: Tensor, mat: Tensor) -> Tensor:
        # d2_ij = |x_i|^2 + |y_j|^2 - 2 x_i.y_j, so sum_ij h_ij d2_ij / 2 has gradient
        # rowsum(h) x - h y (w.r.t. x) and colsum(h) y - h^T x (w.r.t. y)
        if self.squared:
            h = 2.0 * grad  # (n, m)
        else:  # d = sqrt(d2): d d / d d2 = 1 / (2 d); zero where d = 0, as safe_sqrt
            h = torch.where(mat > 0, grad / mat.clamp_min(1e-30), 0.0)  # (n, m)
        h_rows, h_cols = h.sum(dim=1), h.sum(dim=0)  # (n,), (m,)
        sq = 0.5 * (h_rows @ (x * x).sum(dim=1) + h_cols @ (y * y).sum(dim=1))  # ()
        return sq - (x * (h @ y)).sum()

    def extra_repr(self) -> str:
        return f"squared={self.squared}, " + super().extra_repr()
