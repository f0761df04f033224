"""Embedding heads: the last layers that turn features into embeddings."""

from __future__ import annotations

from torch import Tensor, nn

from dmlkit.functional.distances import l2_normalize


class L2Normalize(nn.Module):
    """Scale each embedding to unit L2 norm, ``(n, dim) -> (n, dim)``."""

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(x)


class EmbeddingHead(nn.Module):
    """``Linear(in_features, dim)`` followed by optional L2 normalization.

    Parameters
    ----------
    in_features : int
    dim : int
        Embedding dimension.
    normalize : bool
        End with :class:`L2Normalize` (embeddings on the unit sphere).
    """

    def __init__(self, in_features: int, dim: int, normalize: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, dim)
        self.norm = L2Normalize() if normalize else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.linear(x))  # (n, dim)
