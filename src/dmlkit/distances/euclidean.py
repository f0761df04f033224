"""Euclidean (L2) distance."""

from __future__ import annotations

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

    def extra_repr(self) -> str:
        return f"squared={self.squared}, " + super().extra_repr()
