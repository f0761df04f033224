"""Hierarchy-aware retrieval metrics for ``(n, L)`` labels (coarsest level first).

Definitions (``L`` levels; the *shared depth* ``s(q, r)`` of a query and a reference is
the number of leading levels on which their labels agree, ``0..L``):

* **per-level metrics** ``{metric}_level_{l}``: the ordinary retrieval metrics of
  :func:`dmlkit.evaluation.retrieval_metrics` (Precision@1, R-Precision, MAP@R,
  Recall@K, Precision@K) where a reference is relevant when it agrees with the query
  on levels ``0..l`` (``s >= l + 1``). Level ``L - 1`` is the usual leaf-class
  evaluation; coarser levels ask whether neighbours at least come from the right
  super-class. ``R`` (and so the ranking depth) grows at coarse levels.
* **hierarchical precision** ``hierarchical_precision_at_{k}``: each of a query's ``k``
  nearest references earns credit ``s(q, r) / L`` (1 for the same leaf class, ``1/L`` for
  agreeing only at the coarsest level, 0 for another top-level class);
  ``HP@k = mean over queries of (1/k) sum of credits``, divided by ``k`` even when fewer
  than ``k`` references exist (as ``precision_at_k``). All queries count.
* **hierarchical nDCG** ``hierarchical_ndcg_at_{k}``: the same graded gain
  ``s(q, r) / L`` with the discount ``1 / log2(rank + 1)``, divided by the best
  achievable value (the references' ``k`` largest shared depths in order). Queries
  whose every reference has ``s = 0`` are left out.

Neighbours are ranked exactly with :func:`dmlkit.functional.retrieval.knn` (ties broken
by reference index) on the keys the per-level metrics use (float64 up to
``FLOAT64_MAX_PAIRS`` query-reference pairs; Euclidean embeddings moved next to the origin).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dmlkit.evaluation.retrieval import (
    TRIVIAL_WARNING,
    check_chunk_size,
    label_codes,
    parse_k,
    retrieval_metrics,
)
from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.hierarchy import shared_depth
from dmlkit.functional.ranking_frame import ranking_frame
from dmlkit.functional.retrieval import FLOAT64_MAX_PAIRS, canonical_metric, knn


def _labels(x, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be hierarchical labels (n, L), got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: (n, L) hierarchical labels "
                         "need at least one column (one per level)")
    if torch.is_floating_point(x) or x.dtype == torch.bool:
        raise TypeError(f"{name} must be integer labels, got dtype {x.dtype}")
    return x.long()


def _embeddings(x, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


def hierarchical_retrieval_metrics(
    query,
    query_labels,
    reference=None,
    reference_labels=None,
    *,
    k: int | Sequence[int] | None = None,
    metric: str = "euclidean",
    ref_includes_query: bool = False,
    chunk_size: int | None = None,
    full_ranking: bool = False,
) -> dict:
    """Per-level and graded retrieval metrics for hierarchical labels.

    Parameters
    ----------
    query, query_labels : Tensor or ndarray
        ``(n, d)`` embeddings and ``(n, L)`` labels, coarsest level first: integer ids
        or class names per level (string or object arrays, lists of lists of names).
    reference, reference_labels : Tensor or ndarray, optional
        ``(m, d)`` gallery and ``(m, L)`` labels (ids if the queries' are ids, names if
        theirs are names); ``None`` = leave-one-out on ``query``.
    k : int or sequence of int, optional
        Cutoffs (default ``(1, 2, 4, 8)``) of Recall@K / Precision@K per level and of the
        hierarchical precision and nDCG.
    metric : str
        ``"euclidean"``, ``"cosine"`` or ``"dot"``.
    ref_includes_query : bool
        The first ``n`` reference rows are the queries; each query skips its own row.
    chunk_size : int, optional
        Queries per chunk (default: from a memory budget).
    full_ranking : bool
        Also ``mean_average_precision_level_{l}`` and ``mean_reciprocal_rank_level_{l}``
        at every level (each ranks every reference per query, as retrieval's
        ``average_precision`` / ``reciprocal_rank`` do).

    Returns
    -------
    dict
        ``{name}_level_{l}`` for every per-level metric (see the module docstring),
        ``hierarchical_precision_at_{k}``, ``hierarchical_ndcg_at_{k}``, ``num_levels``,
        ``num_queries`` and ``metric``.
    """
    query = _embeddings(query, "query")
    # class names (string or object arrays, lists) as integer codes, as retrieval's
    query_labels, reference_labels = label_codes(query_labels, reference_labels)
    query_labels = _labels(query_labels, "query_labels")
    if (reference is None) != (reference_labels is None):
        raise ValueError("pass reference and reference_labels together, or neither")
    if reference is not None:
        reference = _embeddings(reference, "reference")
        reference_labels = _labels(reference_labels, "reference_labels")
        if reference_labels.shape[1] != query_labels.shape[1]:
            raise ValueError(
                f"query_labels have {query_labels.shape[1]} levels, "
                f"reference_labels {reference_labels.shape[1]}"
            )
    metric = canonical_metric(metric)
    ks = parse_k(k)  # (retrieval's rule: integers >= 1, Python or numpy)
    check_chunk_size(chunk_size)
    levels = query_labels.shape[1]

    result: dict = {}
    for level in range(levels):
        ref_l = None if reference_labels is None else reference_labels[:, : level + 1]
        with warnings.catch_warnings():
            if level < levels - 1:  # one top-level class is a hierarchy; one leaf is warned
                warnings.filterwarnings("ignore", message=re.escape(TRIVIAL_WARNING))
            per_level = retrieval_metrics(
                query, query_labels[:, : level + 1], reference, ref_l, k=ks, metric=metric,
                ref_includes_query=ref_includes_query, average_precision=full_ranking,
                reciprocal_rank=full_ranking, chunk_size=chunk_size,
            )
        for name, value in per_level.items():
            if name != "metric":
                result[f"{name}_level_{level}"] = value
    with torch.no_grad():
        result.update(_graded(query, query_labels, reference, reference_labels, ks, metric,
                              ref_includes_query, chunk_size))
    result["num_levels"] = levels
    result["num_queries"] = int(query.shape[0])
    result["metric"] = metric
    return result


def _graded(
    query: Tensor,
    query_labels: Tensor,
    reference: Tensor | None,
    reference_labels: Tensor | None,
    ks: Sequence[int],
    metric: str,
    ref_includes_query: bool,
    chunk_size: int | None,
) -> dict[str, float]:
    """Hierarchical precision@k and nDCG@k (see the module docstring)."""
    exclude_self = reference is None or ref_includes_query
    ref = query if reference is None else reference
    ref_labels = query_labels if reference_labels is None else reference_labels
    n, m = query.shape[0], ref.shape[0]
    levels = query_labels.shape[1]
    k_max = min(max(ks), m - int(exclude_self))
    out: dict[str, float] = {}
    if n == 0 or k_max < 1:
        for kv in ks:
            out[f"hierarchical_precision_at_{kv}"] = float("nan")
            out[f"hierarchical_ndcg_at_{kv}"] = float("nan")
        return out
    # ranked as the per-level metrics are: float64 keys on small sets, Euclidean
    # embeddings moved next to the origin (:mod:`dmlkit.functional.ranking_frame`)
    wide = torch.float64 if n * m <= FLOAT64_MAX_PAIRS else None
    q, r = ranking_frame(query, reference, dtype=wide, euclidean=metric == "euclidean")
    _, idx = knn(q, q if r is None else r, k_max, metric=metric,
                 exclude_self=exclude_self)  # (n, K)
    eq = query_labels[:, None, :] == ref_labels[idx]  # (n, K, L)
    gain = eq.long().cumprod(dim=2).sum(dim=2).to(torch.float64) / levels  # (n, K)
    # ideal gains: each query's K largest shared depths over the whole reference set
    ideal = torch.empty(n, k_max, dtype=torch.float64)
    chunk = chunk_size or chunk_size_for(n, m * (levels + 2))
    for s, e in row_chunks(n, chunk):
        depth = shared_depth(query_labels[s:e], ref_labels)  # (c, m)
        if exclude_self:
            rows = torch.arange(e - s)
            depth[rows, rows + s] = -1
        ideal[s:e] = depth.topk(k_max, dim=1).values.to(torch.float64) / levels  # (c, K)
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))  # (K,)
    for kv in ks:
        kk = min(kv, k_max)
        # (1/k) sum over the k nearest, as Precision@k: missing neighbours earn nothing
        out[f"hierarchical_precision_at_{kv}"] = float(gain[:, :kk].sum(dim=1).mean() / kv)
        dcg = (gain[:, :kk] * discount[:kk]).sum(dim=1)  # (n,)
        idcg = (ideal[:, :kk] * discount[:kk]).sum(dim=1)  # (n,)
        ok = idcg > 0
        value = (dcg[ok] / idcg[ok]).mean() if ok.any() else torch.tensor(float("nan"))
        out[f"hierarchical_ndcg_at_{kv}"] = float(value)
    return out


__all__ = ["hierarchical_retrieval_metrics"]
