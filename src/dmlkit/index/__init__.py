"""Nearest-neighbour indexes: exact (torch) and approximate (faiss), with ids, metadata
and a versioned on-disk format."""

from dmlkit.index.base import METRICS, BaseIndex
from dmlkit.index.exact import ExactIndex

__all__ = ["METRICS", "BaseIndex", "ExactIndex"]
