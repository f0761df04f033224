"""Dot-product similarity."""

from __future__ import annotations

from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional import distances as F
from dmlkit.registry import register_distance


@register_distance("dot")
class DotProductSimilarity(BaseDistance):
    """Inner product ``x.y``; larger is closer.

    Parameters
    ----------
    normalize_embeddings : bool
        L2-normalize first (then this equals cosine similarity), as
        pytorch-metric-learning's ``DotProductSimilarity`` does by default.
    """

    is_similarity = True

    def __init__(self, normalize_embeddings: bool = True) -> None:
        super().__init__(normalize_embeddings=normalize_embeddings)

    def compute_matrix(self, x: Tensor, y: Tensor | None) -> Tensor:
        return F.pairwise_dot(x, y)

    def compute_rowwise(self, x: Tensor, y: Tensor) -> Tensor:
        return F.rowwise_dot(x, y)

    def matrix_surrogate(self, x: Tensor, y: Tensor, grad: Tensor, mat: Tensor) -> Tensor:
        return (x * (grad @ y)).sum()  # gradients grad @ y and grad^T @ x
