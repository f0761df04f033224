"""Base class of every distance and similarity."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmlkit.functional.distances import l2_normalize


class BaseDistance(nn.Module):
    """A distance ``d(x, y=None) -> (n, m)`` with a row-wise form ``d.pairwise(x, y) -> (n,)``.

    Parameters
    ----------
    normalize_embeddings : bool
        L2-normalize inputs before measuring (pytorch-metric-learning's default too).

    Attributes
    ----------
    is_similarity : bool
        True when larger values mean "closer" (cosine, dot product).
    """

    is_similarity: bool = False

    def __init__(self, normalize_embeddings: bool = True) -> None:
        super().__init__()
        self.normalize_embeddings = normalize_embeddings

    # -- to implement -------------------------------------------------------------
    def compute_matrix(self, x: Tensor, y: Tensor | None) -> Tensor:  # (n, m)
        raise NotImplementedError

    def compute_rowwise(self, x: Tensor, y: Tensor) -> Tensor:  # (n,)
        raise NotImplementedError

    # -- public API ------------------------------------------------------------------
    def maybe_normalize(self, x: Tensor) -> Tensor:
        return l2_normalize(x) if self.normalize_embeddings else x

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """All-pairs matrix ``(n, d), (m, d) -> (n, m)`` (``y=None`` means ``y = x``)."""
        _check_2d(x, y)
        xn = self.maybe_normalize(x)
        yn = None if y is None else self.maybe_normalize(y)
        return self.compute_matrix(xn, yn)

    def pairwise(self, x: Tensor, y: Tensor) -> Tensor:
        """Row-wise values ``(n, d), (n, d) -> (n,)``."""
        _check_2d(x, y)
        if x.shape != y.shape:
            raise ValueError(
                f"pairwise needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        return self.compute_rowwise(self.maybe_normalize(x), self.maybe_normalize(y))

    def matrix_surrogate(self, x: Tensor, y: Tensor, grad: Tensor, mat: Tensor) -> Tensor:
        """A scalar whose gradient w.r.t. ``x``, ``y`` is ``sum_ij grad_ij * d mat_ij``.

        ``mat = compute_matrix(x, y)`` (already normalized inputs) and ``grad`` ``(n, m)``
        are constants. A loss can compute its ``(n, m)`` terms without autograd, take
        their derivative ``grad`` in closed form and backpropagate through the distance
        with this scalar: for the built-in distances only ``(n, d)``-sized tensors enter
        the graph. This default differentiates ``compute_matrix`` again.
        """
        return (self.compute_matrix(x, y) * grad).sum()

    def margin(self, closer: Tensor, farther: Tensor) -> Tensor:
        """How much ``closer`` beats ``farther``'s closeness: positive = violation-free.

        For distances this is ``farther - closer``; for similarities ``closer - farther``.
        """
        return closer - farther if self.is_similarity else farther - closer

    def closest(self, x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        """``(values, indices)`` of the closest entries along ``dim``."""
        return torch.max(x, dim=dim) if self.is_similarity else torch.min(x, dim=dim)

    def farthest(self, x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        """``(values, indices)`` of the farthest entries along ``dim``."""
        return torch.min(x, dim=dim) if self.is_similarity else torch.max(x, dim=dim)

    @property
    def worst_value(self) -> float:
        """A value that is farther than anything (fill for masked-out entries)."""
        return float("-inf") if self.is_similarity else float("inf")

    def extra_repr(self) -> str:
        return f"normalize_embeddings={self.normalize_embeddings}"


def _check_2d(x: Tensor, y: Tensor | None) -> None:
    if x.dim() != 2 or (y is not None and y.dim() != 2):
        shapes = (tuple(x.shape), None if y is None else tuple(y.shape))
        raise ValueError(f"embeddings must have shape (n, dim), got {shapes}")
    if y is not None and x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")


def check_distance(owner: str, distance: object) -> None:
    """Refuse a ``distance`` that is not a dmlkit distance object (``None`` is the default).

    A name or a config dict is converted by the config path
    (:func:`dmlkit.registry.build_from_config`), not by the Python constructors.
    """
    if distance is not None and not isinstance(distance, BaseDistance):
        raise TypeError(
            f"{owner}: distance must be a dmlkit distance object, e.g. "
            f"dmlkit.distances.CosineSimilarity(), got {distance!r}"
        )
