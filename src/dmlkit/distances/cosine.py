"""Cosine similarity."""

from __future__ import annotations

from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional import distances as F
from dmlkit.registry import register_distance


@register_distance("cosine")
class CosineSimilarity(BaseDistance):
    """Cosine similarity ``x.y / (|x| |y|)``; larger is closer.

    Inputs are always normalized (``normalize_embeddings`` is kept for a uniform API).
    """

    is_similarity = True

    def __init__(self, normalize_embeddings: bool = True) -> None:
        super().__init__(normalize_embeddings=True)

    def compute_matrix(self, x: Tensor, y: Tensor | None) -> Tensor:
        return F.pairwise_dot(x, y)  # inputs already unit-norm

    def compute_rowwise(self, x: Tensor, y: Tensor) -> Tensor:
        return F.rowwise_dot(x, y)

    def matrix_surrogate(self, x: Tensor, y: Tensor, grad: Tensor, mat: Tensor) -> Tensor:
        return (x * (grad @ y)).sum()  # gradients grad @ y and grad^T @ x
