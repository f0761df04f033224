"""Mahalanobis distance from a learned linear map (or PSD matrix)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional import distances as F
from dmlkit.registry import register_distance


@register_distance("mahalanobis")
class MahalanobisDistance(BaseDistance):
    """``d(x, y) = |L (x - y)|_2 = sqrt((x - y)^T M (x - y))`` with ``M = L^T L``.

    The metric that :mod:`dmlkit.classical` learners fit (``learner.as_distance()``);
    usable wherever a dmlkit distance is (losses, miners, evaluation).

    Parameters
    ----------
    components : Tensor, ndarray or nested list of shape (k, d), or None
        The map ``L`` (kept as a buffer, so it follows ``.to(device)``). ``None`` means
        the identity (plain Euclidean distance).
    squared : bool
        Return ``(x - y)^T M (x - y)``.
    normalize_embeddings : bool
        L2-normalize inputs before mapping (off by default: the metric was learned on
        raw features).
    """

    is_similarity = False

    def __init__(
        self,
        components: Tensor | np.ndarray | list[Any] | None = None,
        squared: bool = False,
        normalize_embeddings: bool = False,
    ) -> None:
        super().__init__(normalize_embeddings=normalize_embeddings)
        self.squared = squared
        if components is None:
            self.components: Tensor | None = None
        else:
            L = torch.as_tensor(np.asarray(components) if isinstance(components, list)
                                else components)
            if L.dim() != 2 or not torch.is_floating_point(L):
                raise ValueError(
                    f"components must be a float (k, d) matrix, got shape {tuple(L.shape)} "
                    f"and dtype {L.dtype}"
                )
            if not bool(torch.isfinite(L).all()):
                raise ValueError("components contain NaN or infinite values")
            self.register_buffer("components", L.detach().clone())

    @classmethod
    def from_matrix(cls, matrix: Tensor | np.ndarray, squared: bool = False) -> MahalanobisDistance:
        """Build from a PSD matrix ``M (d, d)`` (``L`` from its eigendecomposition)."""
        M = torch.as_tensor(matrix, dtype=torch.float64)
        if M.dim() != 2 or M.shape[0] != M.shape[1]:
            raise ValueError(f"matrix must be square (d, d), got shape {tuple(M.shape)}")
        if not torch.allclose(M, M.T, atol=1e-8 * max(1.0, float(M.abs().max()))):
            raise ValueError("matrix must be symmetric")
        w, V = torch.linalg.eigh((M + M.T) / 2)  # ascending
        if float(w.min()) < -1e-8 * max(1.0, float(w.abs().max())):
            raise ValueError(
                f"matrix must be positive semi-definite, min eigenvalue {float(w.min()):.3g}"
            )
        L = (V * w.clamp_min(0.0).sqrt()).T  # (d, d), L^T L = M
        return cls(components=L, squared=squared)

    @property
    def matrix(self) -> Tensor | None:
        """``M = L^T L (d, d)`` (``None`` for the identity)."""
        return None if self.components is None else self.components.T @ self.components

    def _map(self, x: Tensor) -> Tensor:  # (n, d) -> (n, k)
        if self.components is None:
            return x
        if x.shape[1] != self.components.shape[1]:
            raise ValueError(
                f"embeddings have dim {x.shape[1]}, but the metric expects "
                f"{self.components.shape[1]}"
            )
        return x @ self.components.to(x.dtype).T

    def compute_matrix(self, x: Tensor, y: Tensor | None) -> Tensor:  # (n, m)
        zx = self._map(x)
        zy = None if y is None else self._map(y)
        if self.squared:
            return F.pairwise_squared_euclidean(zx, zy)
        return F.pairwise_euclidean(zx, zy)

    def compute_rowwise(self, x: Tensor, y: Tensor) -> Tensor:  # (n,)
        diff = self._map(x - y)
        sq = (diff * diff).sum(dim=1)
        return sq if self.squared else F.safe_sqrt(sq)

    def extra_repr(self) -> str:
        shape = None if self.components is None else tuple(self.components.shape)
        return f"components={shape}, squared={self.squared}, " + super().extra_repr()
