"""Top-k recommendation metrics: Recall@k, NDCG@k and catalogue coverage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dmlkit._checks import check_int_param, is_int


def recommendation_metrics(
    recommended: np.ndarray,
    relevant: Sequence[Any],
    n_items: int,
    k: int = 10,
    *,
    pad: Any = None,
) -> dict[str, float]:
    """Metrics of ``(n_users, >=k)`` ranked recommendations against held-out items.

    Parameters
    ----------
    recommended : array (n_users, K)
        Item ids per user, best first (the first ``k`` are scored).
    relevant : sequence of n_users collections
        Each user's held-out items.
    n_items : int
        Catalogue size, for coverage.
    k : int
        Cut-off, an integer >= 1.
    pad : object, optional
        The value that fills rows shorter than ``k`` (a user with fewer unseen items):
        never a hit and not an item for coverage. Default: ``-1`` for numeric ids, ``""``
        for string ids, as :meth:`~dmlkit.apps.CMLRecommender.recommend` pads.

    Returns
    -------
    dict
        ``recall_at_k``: mean over users of |top-k ∩ relevant| / |relevant| (with one held-out
        item per user, the hit rate); ``ndcg_at_k``: mean of DCG / ideal DCG with binary
        gains, ``1 / log2(rank + 1)`` at 1-based ranks; ``coverage_at_k``: distinct items in
        all top-k lists / ``n_items``.
    """
    recommended = np.asarray(recommended)
    if recommended.ndim != 2 or recommended.shape[0] != len(relevant):
        raise ValueError(f"recommended must be (n_users={len(relevant)}, k), got "
                         f"{recommended.shape}")
    if not is_int(k):
        check_int_param("k", k)  # (refuses it, naming its type)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if recommended.shape[1] < k:
        raise ValueError(f"k={k} but recommended holds {recommended.shape[1]} items per user; "
                         f"pass k <= {recommended.shape[1]} (or recommend {k} items per user)")
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    top = recommended[:, :k]
    if pad is None:
        pad = "" if recommended.dtype.kind in "USO" else -1
    filled = top != pad  # (n_users, k)
    for row, keep in zip(top, filled, strict=True):
        items = row[keep].tolist()
        if len(set(items)) != len(items):
            raise ValueError(
                f"a user's recommendations repeat an item ({row.tolist()}): each item may "
                "appear once per user"
            )
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    recalls, ndcgs = [], []
    for row, rel in zip(top, relevant, strict=False):
        rel = set(np.asarray(list(rel)).tolist())
        if not rel:
            continue
        hits = np.array(
            [item != pad and item in rel for item in row.tolist()], dtype=float
        )  # (k,)
        recalls.append(hits.sum() / len(rel))
        ideal = discounts[: min(len(rel), k)].sum()
        ndcgs.append((hits * discounts).sum() / ideal)
    if not recalls:
        raise ValueError("no user has a held-out item")
    return {
        f"recall_at_{k}": float(np.mean(recalls)),
        f"ndcg_at_{k}": float(np.mean(ndcgs)),
        f"coverage_at_{k}": float(len(np.unique(top[filled])) / n_items),
        "users": len(recalls),
    }


__all__ = ["recommendation_metrics"]
