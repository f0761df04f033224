"""Recall of an approximate index against exact search, and the search breadth that
reaches a target recall.

IVF indexes visit ``nprobe`` of their lists per query and HNSW graphs keep ``efSearch``
candidates; faiss's defaults (``nprobe=1``, ``efSearch=16``) trade much recall for speed.
:func:`calibrate` measures recall@k of the index against exact search
(:class:`~dmlkit.index.ExactIndex`) on a seeded sample of the indexed vectors used as
queries, and, unless the breadth was given, doubles it until the recall reaches the
target. An index with a refine stage (``...,RFlat``) re-ranks ``k_factor * k``
candidates: unless it was given, calibration raises ``k_factor`` too while the recall is
below the target (and then narrows the search breadth back as far as the target allows).

Recall is *distance-based*, as ANN benchmarks define it (Aumüller et al.,
"ANN-Benchmarks", 2020): a returned neighbour counts as a hit when its true distance
ties or beats the exact ``k``-th nearest distance (within a relative tolerance), so
duplicated or equidistant items, which an exact index may return in any order, are not
counted as misses. The exact ground truth is computed over the vectors in chunks, so
``vectors`` may be a memory map larger than memory (an embedding store).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dmlkit._checks import check_real

#: relative tolerance of a tie with the exact k-th score (float32 rounding of the index)
RTOL = 1e-5
#: rows of ``vectors`` searched exactly at a time when computing the ground truth
CHUNK = 65536
#: the largest refine ``k_factor`` calibration tries
MAX_K_FACTOR = 256


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of ``|approx top-k & exact top-k| / k`` (``-1`` pads ignored).

    Id overlap: a tied neighbour returned instead of the one exact search chose counts
    as a miss. :func:`calibrate` uses :func:`distance_recall` instead.

    Parameters
    ----------
    approx_ids, exact_ids : ndarray of shape (n, k)
    """
    if approx_ids.shape != exact_ids.shape:
        raise ValueError(f"id arrays differ in shape: {approx_ids.shape} vs {exact_ids.shape}")
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(int((e >= 0).sum()), 1)
            for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


def true_scores(queries: np.ndarray, neighbours: np.ndarray, metric: str) -> np.ndarray:
    """Float64 scores of each query against its neighbours.

    Parameters
    ----------
    queries : ndarray of shape (n, dim)
    neighbours : ndarray of shape (n, c, dim)
    metric : str
        ``"l2"`` (squared distance ``||q - r||^2``), ``"ip"`` or ``"cosine"``.

    Returns
    -------
    ndarray of shape (n, c), float64
    """
    q = np.asarray(queries, dtype=np.float64)[:, None, :]  # (n, 1, dim)
    r = np.asarray(neighbours, dtype=np.float64)  # (n, c, dim)
    if metric == "l2":
        return ((q - r) ** 2).sum(axis=2)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=2, keepdims=True), 1e-300)
        r = r / np.maximum(np.linalg.norm(r, axis=2, keepdims=True), 1e-300)
    return (q * r).sum(axis=2)


def distance_recall(
    scores: np.ndarray, valid: np.ndarray, kth: np.ndarray, tol: np.ndarray, metric: str
) -> float:
    """Mean over queries of the fraction of ``k`` returned neighbours that tie or beat
    the exact ``k``-th score.

    Parameters
    ----------
    scores : ndarray of shape (n, k)
        True (float64) scores of the returned neighbours.
    valid : ndarray of shape (n, k), bool
        False where nothing was returned (id ``-1``).
    kth, tol : ndarray of shape (n,)
        The exact ``k``-th score of each query and the tolerance of a tie with it.
    metric : str
        ``"l2"`` (smaller is closer) or ``"ip"`` / ``"cosine"`` (larger is closer).
    """
    if metric == "l2":
        hit = scores <= (kth + tol)[:, None]
    else:
        hit = scores >= (kth - tol)[:, None]
    hits = (hit & valid).sum(axis=1) / scores.shape[1]  # (n,)
    return float(hits.mean()) if len(hits) else float("nan")


def take_rows(vectors: Any, rows: np.ndarray) -> np.ndarray:
    """``vectors[rows]`` as float32 of shape ``rows.shape + (dim,)``, reading each distinct
    row once in ascending order (cheap on a memory map)."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    return np.asarray(vectors[uniq], dtype=np.float32)[inverse.reshape(rows.shape)]


class GroundTruth:
    """Exact ``k``-th scores of sampled queries against ``vectors``, computed in chunks.

    Each chunk of ``vectors`` is searched with an :class:`~dmlkit.index.ExactIndex`; its
    candidates are re-scored in float64 and merged, so memory is one chunk plus
    ``(queries, 2k)`` candidates.

    Parameters
    ----------
    vectors : array of shape (n, dim)
        Any array indexable by rows (a NumPy memory map too), in the index's storage order.
    queries : ndarray of shape (q, dim)
    k : int
    metric : str
    chunk : int
        Rows of ``vectors`` searched at a time.
    """

    def __init__(self, vectors: Any, queries: np.ndarray, k: int, metric: str,
                 chunk: int = CHUNK) -> None:
        from dmlkit.index.exact import ExactIndex

        n, dim = vectors.shape
        self.metric = metric
        best_s = np.zeros((len(queries), 0))
        best_r = np.zeros((len(queries), 0), dtype=np.int64)
        for start in range(0, n, chunk):
            block = np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32)
            exact = ExactIndex(dim, metric)
            exact.add(block)
            _, rows = exact.search(queries, min(k, len(block)))  # (q, c) rows of the block
            s = true_scores(queries, block[rows], metric)  # (q, c)
            best_s = np.hstack([best_s, s])
            best_r = np.hstack([best_r, rows + start])
            key = best_s if metric == "l2" else -best_s
            order = np.lexsort((best_r, key), axis=1)[:, :k]  # by score, then row
            best_s = np.take_along_axis(best_s, order, 1)
            best_r = np.take_along_axis(best_r, order, 1)
        #: ``(q,)`` exact k-th score of each query
        self.kth = best_s[:, -1]
        if metric == "l2":
            scale = np.abs(self.kth)
        elif metric == "cosine":
            scale = np.maximum(np.abs(self.kth), 1.0)
        else:  # similarities round relative to |q| |r|
            norms = np.linalg.norm(take_rows(vectors, best_r[:, -1]).astype(np.float64), axis=1)
            scale = np.maximum(np.abs(self.kth),
                               np.linalg.norm(queries.astype(np.float64), axis=1) * norms)
        #: ``(q,)`` tolerance of a tie with the k-th score
        self.tol = RTOL * scale
        #: ``(q, k)`` exact neighbour rows
        self.rows = best_r

    def recall(self, vectors: Any, queries: np.ndarray, rows: np.ndarray) -> float:
        """Distance-based recall of returned neighbour ``rows`` ``(q, k)`` (``-1`` = none)."""
        valid = rows >= 0
        picked = take_rows(vectors, np.where(valid, rows, 0))  # (q, k, dim)
        scores = true_scores(queries, picked, self.metric)  # (q, k)
        return distance_recall(scores, valid, self.kth, self.tol, self.metric)


def breadth_knob(index: Any) -> str | None:
    """``"nprobe"`` (inverted lists: IVF, IMI), ``"ef_search"`` (an HNSW graph) or
    ``None`` (nothing to tune) for a built index, told by faiss from the index itself,
    not from the factory string."""
    inner = getattr(index, "index", None)
    if getattr(index, "kind", "") != "faiss" or inner is None:
        return None
    import faiss

    from dmlkit.index.faiss_stages import stages

    try:
        faiss.extract_index_ivf(inner)
        return "nprobe"
    except RuntimeError:  # no inverted lists
        pass
    if any(s.kind == "HNSW" for s in stages(faiss, inner)):
        return "ef_search"
    return None


_knob = breadth_knob


def _nlist(index: Any) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index.index).nlist)


def check_target_recall(target: Any, name: str = "target") -> float:
    """``target`` as a float in ``(0, 1]`` (a recall), else a ``ValueError`` naming
    ``name`` (:func:`~dmlkit._checks.check_real`): above 1 no breadth reaches it, at or
    below 0 any does, NaN is none."""
    return check_real(name, target, 0.0, 1.0, low_open=True, what="a recall")


def calibrate(
    index: Any,
    vectors: Any,
    *,
    k: int = 10,
    target: float = 0.95,
    sample: int = 1000,
    seed: int = 0,
    chunk: int = CHUNK,
) -> dict[str, Any]:
    """Measure recall@k of ``index`` on ``vectors`` and widen its search to ``target``.

    Parameters
    ----------
    index : FaissIndex or ExactIndex
        Holds ``vectors`` (an exact index has recall 1 by definition).
    vectors : array of shape (n, dim)
        The indexed vectors in the index's storage order (``index.ids[i]`` is row
        ``i``); a memory map is read in chunks of ``chunk`` rows, never whole. Up to
        ``sample`` of them (seeded) are the queries.
    k : int
        Neighbours compared (capped at ``n``).
    target : float
        Recall in ``(0, 1]`` to reach by doubling ``nprobe`` / ``efSearch`` when ``index``
        has it unset.
    sample, seed : int
        Number of query rows and the seed that draws them.
    chunk : int
        Rows of ``vectors`` searched exactly at a time.

    Returns
    -------
    dict
        ``{"recall_at_k", "k", "queries", "target", "nprobe" | "ef_search", "tuned"}``;
        ``tuned`` is False when the breadth was given and only measured. Indexes with a
        refine stage add ``"k_factor"`` and ``"k_factor_tuned"``. The recall is
        distance-based (see the module docstring). An empty index has nothing to measure:
        ``recall_at_k`` is None and ``"skipped"`` says why.
    """
    check_target_recall(target)
    if not isinstance(vectors, np.ndarray):  # a list, a CPU tensor
        vectors = np.asarray(vectors, dtype=np.float32)
    n = int(vectors.shape[0])
    if vectors.ndim != 2 or vectors.shape[1] != index.dim:
        raise ValueError(f"vectors must have shape (n, {index.dim}), got {vectors.shape}")
    if n != index.ntotal:
        raise ValueError(f"vectors has {n} rows, the index {index.ntotal} items")
    k = max(1, min(int(k), n))
    knob = _knob(index)
    result: dict[str, Any] = {"k": k, "target": target, "queries": min(sample, n)}
    if knob is None and getattr(index, "kind", "") == "exact":
        return {**result, "recall_at_k": 1.0, "tuned": False}
    if n == 0:
        return {**result, "recall_at_k": None, "tuned": False,
                "skipped": "the index is empty"}
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)  # (q, dim)
    truth = GroundTruth(vectors, queries, k, index.metric, chunk)
    ids = index.ids  # storage order: row i holds ids[i]
    order = np.argsort(ids, kind="stable")

    def measure() -> float:
        _, got = index.search(queries, k)  # (q, k) ids
        got = np.asarray(got)
        pos = np.clip(np.searchsorted(ids[order], got), 0, n - 1)
        found = (got >= 0) & (ids[order][pos] == got)
        return truth.recall(vectors, queries, np.where(found, order[pos], -1))

    def use(name: str, value: Any) -> float:
        setattr(index, name, value)
        index._apply_search_params()
        return measure()

    tuned = knob is not None and getattr(index, knob) is None
    if knob is None or not tuned:
        recall = measure()
    else:
        limit = _breadth_limit(index, knob, n)
        value = start = 1 if knob == "nprobe" else 16
        while (recall := use(knob, value)) < target and value < limit:
            value = min(2 * value, limit)
    if knob is not None:
        result[knob] = getattr(index, knob)
    if not getattr(index, "has_refine", False):
        return {**result, "recall_at_k": recall, "tuned": tuned}
    from dmlkit.index.faiss_index import REFINE_K_FACTOR

    kf_tuned, factor = index.k_factor is None, index.k_factor or REFINE_K_FACTOR
    kf_limit, raised = _k_factor_limit(n, k), False
    while kf_tuned and recall < target and factor < kf_limit:
        factor, raised = min(2 * factor, kf_limit), True
        recall = use("k_factor", factor)
    if tuned and raised:  # the re-ranking may need less breadth than it had without it
        while result[knob] > start:
            narrower = max(start, result[knob] // 2)
            if (fewer := use(knob, narrower)) < target:
                setattr(index, knob, result[knob])
                index._apply_search_params()
                break
            result[knob], recall = narrower, fewer
    return {**result, "recall_at_k": recall, "tuned": tuned, "k_factor": factor,
            "k_factor_tuned": kf_tuned}


def _breadth_limit(index: Any, knob: str, n: int) -> int:
    """The widest ``nprobe`` (every list) or ``efSearch`` calibration tries."""
    return _nlist(index) if knob == "nprobe" else max(4096, 2 * n)


def _k_factor_limit(n: int, k: int) -> int:
    """The largest refine ``k_factor`` calibration tries: :data:`MAX_K_FACTOR`, or less
    where ``k * k_factor`` candidates are every one of the ``n`` items already."""
    from dmlkit.index.faiss_index import REFINE_K_FACTOR

    return max(REFINE_K_FACTOR, min(MAX_K_FACTOR, -(-n // max(k, 1))))


def low_recall_advice(index: Any, result: dict[str, Any]) -> str:
    """What to change (command-line options and factory strings) when the recall measured
    by :func:`calibrate` (``result``) is below its target: only what applies to ``index``
    (a wider search that is not yet the widest, a larger refine ``k_factor``, finer
    codes, a refine stage), always ending with the exact index."""
    import faiss

    from dmlkit.index.faiss_stages import stages

    found = {s.kind: s for s in stages(faiss, index.index)}
    factory = index.factory
    fixes, note = [], ""
    knob = _knob(index)
    if knob is not None and result.get(knob) is not None:
        value, limit = int(result[knob]), _breadth_limit(index, knob, index.ntotal)
        if value < limit:
            of = f" of {limit} lists" if knob == "nprobe" else ""
            fixes.append(f"raise --{knob.replace('_', '-')} (now {value}{of})")
        elif knob == "nprobe":
            note = f"every list is searched already (nprobe {value} of {limit}); "
        elif "HNSW" in found and not {"PQ", "AQ", "SQ"} & set(found):  # (else: the codes)
            fixes.append(f"rebuild with a denser graph (--factory HNSW{2 * found['HNSW'].size})")
    refine_maxed = result.get("k_factor", MAX_K_FACTOR) >= _k_factor_limit(
        index.ntotal, int(result.get("k", 10)))
    if "Refine" in found and not refine_maxed:
        fixes.append(f"raise --k-factor (now {result['k_factor']:g})")
    codes = [phrase for kind, phrase in (
        ("PQ", "more PQ sub-quantizers or bits"), ("AQ", "more codebooks or bits"),
        ("SQ", "more bits per dimension, e.g. SQfp16"), ("LSH", "more LSH bits"))
        if kind in found]
    if codes and ("Refine" not in found or refine_maxed):
        fixes.append(f"store finer codes ({'; '.join(codes)})")
    if codes and "Refine" not in found:
        fixes.append(f"add a refine stage (--factory '{factory},RFlat')")
    if "NSG" in found:
        fixes.append("rebuild as an HNSW graph, whose breadth --ef-search tunes "
                     "(--factory HNSW32)")
    fixes.append("use --factory exact")
    return note + (", ".join(fixes[:-1]) + " or " if len(fixes) > 1 else "") + fixes[-1]


__all__ = ["MAX_K_FACTOR", "GroundTruth", "calibrate", "check_target_recall",
           "distance_recall", "low_recall_advice", "recall_at_k", "take_rows", "true_scores"]
