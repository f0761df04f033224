"""Input checks of ``dmlkit index build`` and ``dmlkit search``: embeddings read from
files, refused with an error naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_embeddings(source: Path, emb: Any) -> Any:
    """A finite real ``(n, dim)`` array, or an error naming ``source``."""
    import numpy as np

    from dmlkit._checks import check_real_inputs
    from dmlkit.apps.embedding import check_finite_rows
    from dmlkit.index.base import check_float32_range

    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise ValueError(f"{source}: embeddings must be (n, dim), got shape {emb.shape}")
    check_real_inputs(emb, str(source), "embeddings")
    check_finite_rows(emb, f"{source}: embeddings")
    check_float32_range(emb, f"{source}: embeddings")
    return emb


def check_queries(source: Path, x: Any) -> None:
    """Refuse a query array with no rows: a search of nothing prints nothing."""
    if not x.shape[0]:
        raise ValueError(f"{source} holds no queries (an array of shape {tuple(x.shape)}): "
                         "give at least one query")


__all__ = ["check_embeddings", "check_queries"]
