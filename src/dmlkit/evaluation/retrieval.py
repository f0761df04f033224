"""Retrieval metrics over embeddings: Precision@1, Recall@K, Precision@K, R-Precision,
MAP@R, mAP and MRR, overall and per class.

Definitions follow Musgrave, Belongie and Lim, "A Metric Learning Reality Check" (ECCV
2020); values equal pytorch-metric-learning's ``AccuracyCalculator`` (with ``k=None``):

* the reference set is ranked by distance, ties broken by reference index (lower first),
  see :mod:`dmlkit.functional.retrieval`;
* ``R`` = number of references relevant to a query (``same_label`` is True), the query
  itself excluded in leave-one-out;
* queries with ``R == 0`` are left out of every average (``num_queries`` counts the rest);
* ``recall_at_k`` is the metric-learning Recall@K: 1 if any relevant item is in the top k;
* ``precision_at_k`` is (relevant items in the top k) / k;
* ``r_precision`` = (relevant in the top R) / R; ``map_at_r`` = (1/R) sum over the top R
  of P(i) * rel(i); ``mean_average_precision`` is the same sum over the full ranking;
  ``mean_reciprocal_rank`` averages 1 / rank of the first relevant item.

Keys of the result: by default ``precision_at_1``, ``recall_at_{k}``, ``precision_at_{k}``,
``r_precision``, ``map_at_r``, ``num_queries`` and ``metric``. These need only each
query's ``max(R, k)`` nearest references, found by exact threshold filtering on large
sets. ``mean_average_precision`` and ``mean_reciprocal_rank`` need the rank of relevant
items anywhere in the full ranking (an ``O(m)`` pass per query), so they are computed
only when asked: ``average_precision=True`` / ``reciprocal_rank=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dmlkit._checks import is_int
from dmlkit.evaluation.embedding_checks import check_magnitude, warn_queries_in_reference
from dmlkit.functional.distances import check_embeddings
from dmlkit.functional.labels import check_labels
from dmlkit.functional.retrieval import canonical_metric, retrieval_per_query

DEFAULT_K = (1, 2, 4, 8)
TRIVIAL_WARNING = "retrieval metrics are trivially 1.0"  # (how the warning begins)
_RENAME = {"average_precision": "mean_average_precision",
           "reciprocal_rank": "mean_reciprocal_rank"}


def _as_tensor(x, name: str, labels: bool = False) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if labels and x.dim() == 1 and x.dtype != torch.long:
        whole = not torch.is_floating_point(x) or bool((x == x.round()).all())
        if whole and torch.is_floating_point(x) and x.numel():
            check_int64_range(float(x.min()), float(x.max()), name)
        x = x.long() if whole else x
    return x


def check_int64_range(low: float, high: float, name: str) -> None:
    """A ``ValueError`` unless whole-number float labels in ``[low, high]`` fit int64
    (beyond it, casting would merge distinct labels into one)."""
    if low < -(2.0**63) or high >= 2.0**63:
        bad = high if high >= 2.0**63 else low
        raise ValueError(f"{name} hold whole numbers beyond the int64 range (e.g. {bad:.6g}): "
                         "give class ids as integers or as names")


def label_codes(query_labels, reference_labels, *, return_names: bool = False):
    """Names (string or object arrays, lists of strings) as integer codes, one code per
    name across queries and references.

    With ``return_names``, also the names in code order (``names[code]``), or None when
    the labels were ids already."""
    def names(v):
        if isinstance(v, (list, tuple)):
            v = np.asarray(v)
        return v if isinstance(v, np.ndarray) and v.dtype.kind in "USO" else None

    q, r = names(query_labels), names(reference_labels)
    if q is None and r is None:
        out = query_labels, reference_labels
        return (*out, None) if return_names else out
    if reference_labels is not None and (q is None) != (r is None):
        raise TypeError("query_labels and reference_labels must both be names or both ids")
    parts = [q.astype(str)] + ([] if r is None else [r.astype(str)])
    unique, codes = np.unique(np.concatenate([p.reshape(-1) for p in parts]),
                              return_inverse=True)
    codes = codes.astype(np.int64)
    q_codes = codes[: q.size].reshape(q.shape)
    out = q_codes, (None if r is None else codes[q.size:].reshape(r.shape))
    return (*out, [str(v) for v in unique]) if return_names else out


def _check_inputs(query, query_labels, reference, reference_labels):
    query_labels, reference_labels = label_codes(query_labels, reference_labels)
    return _check_coded_inputs(query, query_labels, reference, reference_labels)


def _check_coded_inputs(query, query_labels, reference, reference_labels):
    query = _as_tensor(query, "query")
    query_labels = _as_tensor(query_labels, "query_labels", labels=True)
    check_embeddings(query, "query")
    check_labels(query_labels, query.shape[0], "query_labels")
    if (reference is None) != (reference_labels is None):
        raise ValueError("pass reference and reference_labels together, or neither")
    if reference is not None:
        reference = _as_tensor(reference, "reference")
        reference_labels = _as_tensor(reference_labels, "reference_labels", labels=True)
        check_embeddings(reference, "reference")
        check_labels(reference_labels, reference.shape[0], "reference_labels")
        if reference.shape[1] != query.shape[1]:
            raise ValueError(
                f"query has dim {query.shape[1]} but reference has dim {reference.shape[1]}"
            )
    return query, query_labels, reference, reference_labels


def parse_k(k: int | Sequence[int] | None) -> tuple[int, ...]:
    """``k`` as a tuple of cutoffs: one integer (Python or numpy, not a bool) or a
    non-empty sequence of them, each ``>= 1``; anything else is a ``ValueError``."""
    if k is None:
        return DEFAULT_K
    if is_int(k):
        values: tuple = (k,)
    elif isinstance(k, (Sequence, np.ndarray, Tensor)) and not isinstance(k, (str, bytes)):
        values = tuple(v.item() if isinstance(v, Tensor) and v.dim() == 0 else v for v in k)
    else:
        raise ValueError(f"k must be an integer >= 1 or a sequence of them, got {k!r} "
                         f"({type(k).__name__})")
    if not values or not all(is_int(v) and v >= 1 for v in values):
        raise ValueError(f"k must be an integer >= 1 or a non-empty sequence of them, got "
                         f"{k!r}")
    return tuple(int(v) for v in values)


def check_chunk_size(chunk_size: int | None) -> None:
    """A ``ValueError`` unless ``chunk_size`` is None (sized from a memory budget) or an
    integer ``>= 1`` (queries per chunk)."""
    if chunk_size is not None and not (is_int(chunk_size) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be an integer >= 1 (queries per chunk) or None "
                         f"(sized from a memory budget), got {chunk_size!r}")


def retrieval_metrics(
    query,
    query_labels,
    reference=None,
    reference_labels=None,
    *,
    k: int | Sequence[int] | None = None,
    metric: str = "euclidean",
    ref_includes_query: bool = False,
    average_precision: bool = False,
    reciprocal_rank: bool = False,
    per_class: bool = False,
    chunk_size: int | None = None,
) -> dict:
    """Exact retrieval metrics of ``query`` embeddings against a reference set.

    Parameters
    ----------
    query, query_labels : Tensor or ndarray
        ``(n, d)`` embeddings and their labels (``(n,)`` classes, ``(n, L)`` hierarchical,
        ``(n, C)`` bool multi-label).
    reference, reference_labels : Tensor or ndarray, optional
        ``(m, d)`` gallery and labels; ``None`` = leave-one-out on ``query``.
    k : int or sequence of int, optional
        Cutoffs of Recall@K and Precision@K (default ``(1, 2, 4, 8)``). Cutoffs asked
        for beyond the references a query is ranked against are warned about (once).
    metric : str
        ``"euclidean"`` (default, as ``AccuracyCalculator``), ``"cosine"`` or ``"dot"``.
        Euclidean and cosine rankings hold at any scale of the embeddings (cosine
        normalizes rows of any norm, tiny ones included); ``"dot"`` refuses embeddings
        whose inner products overflow their dtype.
    ref_includes_query : bool
        The first ``n`` reference rows are the queries (their labels the query labels);
        each query skips its own row. Checked: a ``ValueError`` when they are not. When
        False, queries that appear verbatim in the reference (each would retrieve itself
        first) are warned about.
    average_precision, reciprocal_rank : bool
        Also compute ``mean_average_precision`` (over the full ranking) and
        ``mean_reciprocal_rank``. Off by default: each needs a pass over every
        query's whole row, several times the cost of the default metrics on large sets.
    per_class : bool
        Add ``"per_class": {label: {metric: value, "count": n}}``, the mean over the
        queries of each label: label = the class id, or its name when the labels are
        names; the leaf tuple (of ids or of names) for ``(n, L)`` labels; for ``(n, C)``
        bool multi-labels, the column index, averaged over the queries holding that
        label (a query with several labels counts in each).
    chunk_size : int, optional
        Queries per chunk (``>= 1``; default: from a memory budget).

    Returns
    -------
    dict
        ``precision_at_1``, ``r_precision``, ``map_at_r``, ``recall_at_{k}``,
        ``precision_at_{k}`` (floats, NaN when no query has a relevant reference),
        ``num_queries`` (queries with at least one relevant reference) and ``metric``;
        ``mean_average_precision`` and ``mean_reciprocal_rank`` when asked for.

    Raises
    ------
    ValueError
        Embeddings that are not a finite ``(n, d)`` float matrix, labels that are not one
        row per embedding, a bad ``k``, ``metric`` or ``chunk_size``, ``"dot"`` on
        embeddings whose inner products overflow, or ``ref_includes_query=True`` with a
        reference whose first ``n`` rows (or labels) are not the queries'.
    """
    query_labels, reference_labels, label_names = label_codes(
        query_labels, reference_labels, return_names=True)
    query, query_labels, reference, reference_labels = _check_coded_inputs(
        query, query_labels, reference, reference_labels
    )
    if query.shape[0] == 0:
        raise ValueError("no queries: query has 0 rows")
    metric = canonical_metric(metric)
    ks = parse_k(k)
    check_chunk_size(chunk_size)
    if metric == "dot":  # (Euclidean keys are rescaled, cosine rows normalized: any scale)
        check_magnitude(query, "query")
        if reference is not None:
            check_magnitude(reference, "reference")
    if reference is not None and not ref_includes_query:
        warn_queries_in_reference(query, reference, query_labels, reference_labels)
    with torch.no_grad():
        values = retrieval_per_query(
            query, query_labels, reference, reference_labels, metric=metric, k=ks,
            ref_includes_query=ref_includes_query, average_precision=average_precision,
            reciprocal_rank=reciprocal_rank, chunk_size=chunk_size,
        )
    valid = values.pop("num_relevant") > 0  # (n,)
    result: dict = {}
    for name, val in values.items():
        v = val[valid]
        result[_RENAME.get(name, name)] = float(v.mean()) if v.numel() else float("nan")
    result["num_queries"] = int(valid.sum())
    result["metric"] = metric
    _warn_degenerate(query_labels, reference_labels, result["num_queries"])
    if k is not None and ks != DEFAULT_K:  # (the default cutoffs: reported for any gallery)
        n_refs = (query.shape[0] if reference is None else reference.shape[0]) - int(
            reference is None or ref_includes_query)  # (a query is not its own reference)
        _warn_k_beyond(ks, n_refs)
    if per_class:
        result["per_class"] = _per_class(values, query_labels, valid, label_names)
    return result


def _warn_degenerate(query_labels: Tensor, reference_labels: Tensor | None,
                     num_queries: int) -> None:
    """Warn when the labels make the metrics meaningless: one class only, or one leaf
    row of ``(n, L)`` labels (every reference is relevant, so every metric is 1.0), or
    no query with a relevant reference (every metric is NaN)."""
    import warnings

    if num_queries == 0 and query_labels.shape[0] > 0:
        warnings.warn(
            f"retrieval metrics are NaN: none of the {query_labels.shape[0]} queries has a "
            "relevant reference (every label occurs once?); evaluate on classes with at "
            "least two items", UserWarning, stacklevel=3)
        return
    if query_labels.dtype == torch.bool or query_labels.shape[0] == 0 or (
            reference_labels is not None and reference_labels.dim() != query_labels.dim()):
        return  # (multi-labels: one distinct row need not relate every pair)
    labels = query_labels if reference_labels is None else torch.cat(
        [query_labels, reference_labels.to(query_labels.dtype)])
    # one class, or for (n, L) labels one leaf (every level then agrees too)
    distinct = torch.unique(labels, dim=0) if labels.dim() == 2 else torch.unique(labels)
    if int(distinct.shape[0]) == 1:
        label = (int(labels[0]) if labels.dim() == 1
                 else tuple(int(v) for v in labels[0].tolist()))
        warnings.warn(
            f"{TRIVIAL_WARNING}: all {labels.shape[0]} labels are {label}, so every "
            "reference is relevant; evaluate on at least two classes", UserWarning,
            stacklevel=3)


def _warn_k_beyond(ks: tuple[int, ...], n_refs: int) -> None:
    """Warn once when a cutoff asked for exceeds the ``n_refs`` references a query is
    ranked against: Recall@K then counts a hit anywhere, and Precision@K still divides
    by ``k``, so it cannot reach 1."""
    import warnings

    beyond = [c for c in ks if c > n_refs]
    if beyond:
        big = beyond[-1]
        warnings.warn(
            f"k={beyond if len(beyond) > 1 else big} exceeds the {n_refs} reference(s) each "
            f"query is ranked against: recall_at_{big} counts a relevant item anywhere in "
            f"them, and precision_at_{big} is still relevant / {big} (at most "
            f"{n_refs}/{big}); ask for k <= {n_refs}", UserWarning, stacklevel=3)


def _per_class(values: dict[str, Tensor], labels: Tensor, valid: Tensor,
               label_names: list[str] | None = None) -> dict:
    """Average each per-query value within each query label (lone queries left out):
    per class id (its name when given), per leaf row of ``(n, L)`` labels (a tuple of
    ids, or of names when given), per column of ``(n, C)`` bool multi-labels (a query
    counts in each of its labels). Memory is linear in the queries, and in queries x
    labels only for multi-labels (their input already is that size)."""
    if labels.dtype == torch.bool:  # (n, C): each query in each of its labels
        cols = [int(c) for c in range(labels.shape[1]) if labels[:, c].any()]
        member = labels[:, cols] & valid[:, None]  # (n, C') bool, as the input
        counts = member.sum(0).to(torch.float64)

        def means(val: Tensor) -> Tensor:
            v = torch.where(valid, val.to(torch.float64), torch.zeros((), dtype=torch.float64))
            return (v @ member.to(torch.float64)) / counts

        names: list = cols
    else:
        if labels.dim() == 1:
            keys, inverse = torch.unique(labels, return_inverse=True)
            names = [int(v) if label_names is None else label_names[int(v)] for v in keys]
        else:
            keys, inverse = torch.unique(labels, dim=0, return_inverse=True)
            names = [tuple(int(x) if label_names is None else label_names[int(x)]
                           for x in row) for row in keys]
        counts = torch.bincount(inverse[valid], minlength=len(names)).to(torch.float64)

        def means(val: Tensor) -> Tensor:
            sums = torch.zeros(len(names), dtype=torch.float64)
            sums.index_add_(0, inverse[valid], val[valid].to(torch.float64))
            return sums / counts  # NaN for classes without evaluable queries

    out: dict = {name: {"count": int(c)} for name, c in zip(names, counts.tolist(), strict=True)}
    for metric_name, val in values.items():
        for name, mean in zip(names, means(val).tolist(), strict=True):
            out[name][_RENAME.get(metric_name, metric_name)] = mean
    return out


__all__ = ["DEFAULT_K", "retrieval_metrics"]
