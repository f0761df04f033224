"""Top-k recommendation metrics: Recall@k, NDCG@k and catalogue coverage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dmlkit._checks import check_int_param, is_int


def id_key(value: Any) -> str:
    """The key an id is looked up by: its text, a float of integral value as the integer
    (``0.0`` and ``0`` name one user, as a float column read from integers holds them)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


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
        Each user's held-out items. Ids match by their text, an integral float as the
        integer (``17``, ``17.0`` and ``"17"`` name one item), as the recommender looks
        them up.
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
    # ids compared by their key, as the recommender looks them up: 17, 17.0 and "17" are
    # one item
    keys = [
        [id_key(item) if keep else None for item, keep in zip(row, kept, strict=True)]
        for row, kept in zip(top.tolist(), filled.tolist(), strict=True)
    ]  # (n_users, k)
    for row, row_keys in zip(top, keys, strict=True):
        items = [key for key in row_keys if key is not None]
        if len(set(items)) != len(items):
            raise ValueError(
                f"a user's recommendations repeat an item ({row.tolist()}): each item may "
                "appear once per user"
            )
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    recalls, ndcgs = [], []
    for row_keys, rel in zip(keys, relevant, strict=False):
        rel = {id_key(item) for item in np.asarray(list(rel), dtype=object).tolist()}
        if not rel:
            continue
        hits = np.array([key is not None and key in rel for key in row_keys], dtype=float)  # (k,)
        recalls.append(hits.sum() / len(rel))
        ideal = discounts[: min(len(rel), k)].sum()
        ndcgs.append((hits * discounts).sum() / ideal)
    if not recalls:
        raise ValueError("no user has a held-out item")
    return {
        f"recall_at_{k}": float(np.mean(recalls)),
        f"ndcg_at_{k}": float(np.mean(ndcgs)),
        f"coverage_at_{k}": float(len({key for row in keys for key in row} - {None}) / n_items),
        "users": len(recalls),
    }


__all__ = ["id_key", "recommendation_metrics"]
