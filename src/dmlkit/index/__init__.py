"""Nearest-neighbour indexes: exact (torch) and approximate (faiss, optional), with ids,
per-item metadata and a versioned, checked on-disk format."""

from dmlkit.index.base import METRICS, BaseIndex, load_index
from dmlkit.index.exact import ExactIndex
from dmlkit.index.faiss_index import FaissIndex, import_faiss
from dmlkit.index.io import IndexFormatError

__all__ = [
    "METRICS",
    "BaseIndex",
    "ExactIndex",
    "FaissIndex",
    "IndexFormatError",
    "import_faiss",
    "load_index",
]
