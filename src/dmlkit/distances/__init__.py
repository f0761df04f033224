"""Distances and similarities (``d(x, y=None) -> (n, m)``, ``d.pairwise(x, y) -> (n,)``)."""

from __future__ import annotations

from typing import Any

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.distances.dot_product import DotProductSimilarity
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.distances.mahalanobis import MahalanobisDistance
from dmlkit.distances.snr import SNRDistance


def build_distance(spec: str | dict[str, Any] | BaseDistance | None) -> BaseDistance | None:
    """Build a distance from a registry name, ``{"name": ..., **params}`` or an instance."""
    from dmlkit.registry import DISTANCES

    if spec is None or isinstance(spec, BaseDistance):
        return spec
    if isinstance(spec, str):
        return DISTANCES.build(spec)
    if isinstance(spec, dict):
        params = dict(spec)
        name = params.pop("name", None)
        if name is None:
            raise ValueError(f"distance spec needs a 'name', got {spec!r}")
        return DISTANCES.build(name, **params)
    raise TypeError(f"cannot build a distance from {type(spec).__name__}")


__all__ = [
    "BaseDistance",
    "CosineSimilarity",
    "DotProductSimilarity",
    "EuclideanDistance",
    "MahalanobisDistance",
    "SNRDistance",
    "build_distance",
]
