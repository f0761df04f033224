"""Nearest-neighbour indexes: exact (torch) and approximate (faiss, optional), with ids,
per-item metadata and a versioned, checked on-disk format."""

from dmlkit.index.base import METRICS, BaseIndex, load_index
from dmlkit.index.faiss_index import FaissIndex, import_faiss

try:  # the exact index runs on torch; without it (a serving install) faiss indexes remain
    from dmlkit.index.exact import ExactIndex
except ImportError:  # pragma: no cover - exercised by the torch-free serving test
    ExactIndex = None  # type: ignore[assignment,misc]
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
