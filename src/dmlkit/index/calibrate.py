"""Recall of an approximate index against exact search, and the search breadth that
reaches a target recall.

IVF indexes visit ``nprobe`` of their lists per query and HNSW graphs keep ``efSearch``
candidates; faiss's defaults (``nprobe=1``, ``efSearch=16``) trade much recall for speed.
:func:`calibrate` measures recall@k of the index against :class:`ExactIndex` on a seeded
sample of the indexed vectors used as queries, and, unless the breadth was given,
doubles it until the recall reaches the target.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of ``|approx top-k & exact top-k| / k`` (``-1`` pads ignored).

    Parameters
    ----------
    approx_ids, exact_ids : ndarray of shape (n, k)
    """
    if approx_ids.shape != exact_ids.shape:
        raise ValueError(f"id arrays differ in shape: {approx_ids.shape} vs {exact_ids.shape}")
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(int((e >= 0).sum()), 1)
            for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


def _knob(index: Any) -> str | None:
    """``"nprobe"`` (IVF), ``"ef_search"`` (HNSW) or ``None`` (nothing to tune)."""
    factory = getattr(index, "factory", "")
    if "IVF" in factory:
        return "nprobe"
    if "HNSW" in factory:
        return "ef_search"
    return None


def _nlist(index: Any) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index.index).nlist)


def calibrate(
    index: Any,
    vectors: Any,
    *,
    k: int = 10,
    target: float = 0.95,
    sample: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure recall@k of ``index`` on ``vectors`` and widen its search to ``target``.

    Parameters
    ----------
    index : FaissIndex or ExactIndex
        Holds ``vectors`` (an exact index has recall 1 by definition).
    vectors : ndarray of shape (n, dim)
        The indexed vectors; up to ``sample`` of them (seeded) are the queries.
    k : int
        Neighbours compared (capped at ``n``).
    target : float
        Recall to reach by doubling ``nprobe`` / ``efSearch`` when ``index`` has it unset.

    Returns
    -------
    dict
        ``{"recall_at_k", "k", "queries", "target", "nprobe" | "ef_search", "tuned"}``;
        ``tuned`` is False when the breadth was given and only measured.
    """
    from dmlkit.index.exact import ExactIndex

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = x.shape[0]
    k = max(1, min(int(k), n))
    knob = _knob(index)
    result: dict[str, Any] = {"k": k, "target": target, "queries": min(sample, n)}
    if knob is None and getattr(index, "kind", "") == "exact":
        return {**result, "recall_at_k": 1.0, "tuned": False}
    rows = np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False)
    exact = ExactIndex(index.dim, index.metric)
    exact.add(x, ids=index.ids if hasattr(index, "ids") else None)
    queries = x[np.sort(rows)]
    _, want = exact.search(queries, k)
    given = knob is not None and getattr(index, knob) is not None
    if knob is None or given:
        _, got = index.search(queries, k)
        value = None if knob is None else getattr(index, knob)
        return {**result, "recall_at_k": recall_at_k(got, want), **({knob: value} if knob else {}),
                "tuned": False}
    limit = _nlist(index) if knob == "nprobe" else max(4096, 2 * n)
    value = 1 if knob == "nprobe" else 16
    while True:
        setattr(index, knob, value)
        index._apply_search_params()
        _, got = index.search(queries, k)
        recall = recall_at_k(got, want)
        if recall >= target or value >= limit:
            break
        value = min(2 * value, limit)
    return {**result, "recall_at_k": recall, knob: value, "tuned": True}


__all__ = ["calibrate", "recall_at_k"]
