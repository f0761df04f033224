"""Embedding heads: the last layers that turn features into embeddings."""

from __future__ import annotations

from torch import Tensor, nn

from dmlkit.functional.distances import l2_normalize
from dmlkit.models.sizes import check_bool, check_size


class L2Normalize(nn.Module):
    """Scale each embedding to unit L2 norm, ``(n, dim) -> (n, dim)``."""

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(x)


class EmbeddingHead(nn.Module):
    """``Linear(in_features, dim)`` followed by optional L2 normalization.

    Parameters
    ----------
    in_features : int
        Width of the features, >= 1.
    dim : int
        Embedding dimension, >= 1.
    normalize : bool
        End with :class:`L2Normalize` (embeddings on the unit sphere).
    """

    def __init__(self, in_features: int, dim: int, normalize: bool = True) -> None:
        super().__init__()
        in_features = check_size("EmbeddingHead", "in_features", in_features)
        dim = check_size("EmbeddingHead", "dim", dim)
        normalize = check_bool("EmbeddingHead", "normalize", normalize)
        self.linear = nn.Linear(in_features, dim)
        self.normalize = normalize
        self.norm = L2Normalize() if normalize else nn.Identity()

    def fingerprint_settings(self) -> dict[str, bool]:
        """What the embeddings depend on beyond the weights
        (:func:`dmlkit.index.store.model_fingerprint`): ``{"normalize": False}`` for a head
        that does not L2-normalize, nothing for the usual one that does (so the
        fingerprints of normalized models stay what they were before heads declared it)."""
        return {} if self.normalize else {"normalize": False}

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.linear(x))  # (n, dim)
