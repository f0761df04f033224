"""Exact, chunked nearest-neighbour ranking and per-query retrieval metrics.

Ranking convention (every metric and :class:`dmlkit.index.ExactIndex` use it): the
references are ordered by a *ranking key* where smaller is closer (squared Euclidean
distance, or the negated similarity for ``"cosine"`` / ``"dot"``), and **ties are broken
by reference index, lower first**. This is the order faiss's flat indexes return, so the
metrics equal pytorch-metric-learning's ``AccuracyCalculator`` (which ranks with
``faiss.IndexFlatL2``) even when many distances tie. Euclidean ranking uses squared
distances (``|q|^2 + |r|^2 - 2 q.r`` clamped at 0, as faiss does), never their square
root, which could merge distinct values into new ties.

Queries are processed in row chunks, so memory is ``O(chunk * m)``: no ``(n, m)`` matrix
is ever formed. Definitions follow Musgrave, Belongie and Lim, "A Metric Learning Reality
Check", ECCV 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.distances import l2_normalize
from dmlkit.functional.labels import same_label

_ALIASES = {
    "euclidean": "euclidean",
    "l2": "euclidean",
    "squared_euclidean": "euclidean",
    "cosine": "cosine",
    "dot": "dot",
    "ip": "dot",
    "inner_product": "dot",
}
#: ranking-key elements per chunk of queries (32M floats = 128 MB)
RETRIEVAL_BUDGET = 1 << 25


def canonical_metric(metric: str) -> str:
    """Map a metric name or alias to ``"euclidean"``, ``"cosine"`` or ``"dot"``."""
    if not isinstance(metric, str) or metric.lower() not in _ALIASES:
        raise ValueError(f"metric must be one of {sorted(_ALIASES)}, got {metric!r}")
    return _ALIASES[metric.lower()]


def prepare_vectors(x: Tensor, metric: str) -> tuple[Tensor, Tensor | None]:
    """``(vectors, squared norms or None)`` ready for :func:`ranking_keys`."""
    metric = canonical_metric(metric)
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if metric == "cosine":
        return l2_normalize(x), None
    if metric == "euclidean":
        return x, (x * x).sum(dim=1)  # (n,)
    return x, None


def ranking_keys(
    query: tuple[Tensor, Tensor | None], reference: tuple[Tensor, Tensor | None]
) -> Tensor:
    """Ranking keys ``(c, m)`` (smaller = closer) of prepared queries against references."""
    q, q_sq = query
    r, r_sq = reference
    prod = q @ r.T  # (c, m)
    if q_sq is None:
        return prod.neg_()
    # squared euclidean: |q|^2 + |r|^2 - 2 q.r, clamped like faiss
    return prod.mul_(-2.0).add_(r_sq[None, :]).add_(q_sq[:, None]).clamp_min_(0.0)


def scores_from_keys(keys: Tensor, metric: str) -> Tensor:
    """Turn ranking keys back into scores: squared L2 distance, or the similarity."""
    return keys if canonical_metric(metric) == "euclidean" else -keys


def topk_lexicographic(keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest keys per row in ``(key, column)`` order: ``(c, k)`` values, indices.

    Among equal keys lower columns come first, and a tie that straddles the k-th
    position keeps the lowest columns, so the result is deterministic.
    """
    c, m = keys.shape
    k = min(int(k), m)
    if k <= 0 or c == 0:
        empty = keys.new_empty((c, max(k, 0)))
        return empty, torch.empty((c, max(k, 0)), dtype=torch.long, device=keys.device)
    if k == m:
        vals, idx = keys.sort(dim=1, stable=True)
        return vals, idx
    vals, idx = torch.topk(keys, k, dim=1, largest=False, sorted=False)  # (c, k)
    kth = vals.max(dim=1, keepdim=True).values  # (c, 1) boundary key
    cut = (keys == kth).sum(dim=1) > (vals == kth).sum(dim=1)  # (c,) boundary tie was cut
    if bool(cut.any()):
        rows = cut.nonzero().squeeze(1)
        sub, t = keys[rows], kth[rows]  # (r, m), (r, 1)
        below = sub < t
        tied = sub == t
        need = k - below.sum(dim=1, keepdim=True)  # (r, 1) ties to keep, lowest columns first
        take = below | (tied & (tied.cumsum(dim=1) <= need))  # exactly k per row
        cols = take.nonzero()[:, 1].view(len(rows), k)  # (r, k) ascending columns
        idx[rows] = cols
        vals[rows] = sub.gather(1, cols)
    idx, perm = idx.sort(dim=1)  # column order first ...
    vals = vals.gather(1, perm)
    vals, perm = vals.sort(dim=1, stable=True)  # ... then key order, stable on columns
    return vals, idx.gather(1, perm)


def knn(
    query: Tensor,
    reference: Tensor | None = None,
    k: int = 1,
    *,
    metric: str = "euclidean",
    exclude_self: bool | None = None,
    query_chunk: int = 1024,
    ref_chunk: int = 1 << 16,
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours, chunked over queries and references.

    Parameters
    ----------
    query : Tensor
        ``(n, d)`` queries.
    reference : Tensor, optional
        ``(m, d)`` references; ``None`` searches ``query`` against itself.
    k : int
        Neighbours per query; rows are padded with index ``-1`` when fewer exist.
    metric : str
        ``"euclidean"`` (scores are squared distances), ``"cosine"`` or ``"dot"``
        (scores are similarities).
    exclude_self : bool, optional
        Skip reference ``i`` for query ``i`` (default: True when ``reference`` is None).

    Returns
    -------
    scores : Tensor
        ``(n, k)`` float, ``inf`` (distance) / ``-inf`` (similarity) where padded.
    indices : Tensor
        ``(n, k)`` int64 reference rows in ranking order, ``-1`` where padded.
    """
    if exclude_self is None:
        exclude_self = reference is None
    reference = query if reference is None else reference
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n, m = query.shape[0], reference.shape[0]
    ref_p = prepare_vectors(reference, metric)
    dtype = ref_p[0].dtype
    out_keys = torch.full((n, k), float("inf"), dtype=dtype, device=query.device)
    out_idx = torch.full((n, k), -1, dtype=torch.long, device=query.device)
    for s, e in row_chunks(n, query_chunk):
        q_p = prepare_vectors(query[s:e].to(dtype), metric)
        cand_keys, cand_idx = [], []
        for rs, re_ in row_chunks(m, ref_chunk):
            block = (ref_p[0][rs:re_], None if ref_p[1] is None else ref_p[1][rs:re_])
            keys = ranking_keys(q_p, block)  # (c, b)
            if exclude_self:
                rows = torch.arange(s, e, device=keys.device)
                hit = (rows >= rs) & (rows < re_)
                keys[hit.nonzero().squeeze(1), rows[hit] - rs] = float("inf")
            v, i = topk_lexicographic(keys, k)
            cand_keys.append(v)
            cand_idx.append(i + rs)
        v, i = torch.cat(cand_keys, dim=1), torch.cat(cand_idx, dim=1)  # (c, blocks * k)
        if len(cand_keys) > 1:
            i, perm = i.sort(dim=1)
            v, perm2 = v.gather(1, perm).sort(dim=1, stable=True)
            i = i.gather(1, perm2)
        kk = min(k, v.shape[1])
        out_keys[s:e, :kk], out_idx[s:e, :kk] = v[:, :kk], i[:, :kk]
    out_idx[torch.isinf(out_keys)] = -1
    scores = scores_from_keys(out_keys, metric)
    return scores, out_idx


def retrieval_per_query(
    query: Tensor,
    query_labels: Tensor,
    reference: Tensor | None = None,
    reference_labels: Tensor | None = None,
    *,
    metric: str = "euclidean",
    k: Sequence[int] = (1, 2, 4, 8),
    ref_includes_query: bool = False,
    average_precision: bool = True,
    reciprocal_rank: bool = True,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Per-query retrieval values, computed exactly in chunks of queries.

    With ``reference=None`` the reference set is ``query`` itself and each query's own
    row is excluded (leave-one-out); ``ref_includes_query=True`` means the same for a
    reference whose first ``n`` rows are the queries. Relevance is
    ``same_label(query_labels, reference_labels)``, so multi-label and hierarchical labels
    work. ``R`` is the number of relevant references of a query.

    Returns
    -------
    dict of Tensor
        ``(n,)`` tensors: ``num_relevant`` (int64, R), and float64 ``precision_at_1``,
        ``recall_at_{k}`` (any relevant in the top k), ``precision_at_{k}`` (relevant in
        the top k / k), ``r_precision``, ``map_at_r``, ``average_precision`` (full AP) and
        ``reciprocal_rank`` (1 / rank of the first relevant). Values of queries with
        ``R == 0`` are meaningless; callers drop them.
    """
    ks = sorted({int(v) for v in k})
    if any(v < 1 for v in ks):
        raise ValueError(f"k values must be >= 1, got {list(k)}")
    exclude_self = reference is None or ref_includes_query
    if reference is None:
        reference, reference_labels = query, query_labels
    n, m = query.shape[0], reference.shape[0]
    m_eff = m - int(exclude_self)
    ref_p = prepare_vectors(reference, metric)
    dtype = ref_p[0].dtype
    chunk = chunk_size or chunk_size_for(n, m, RETRIEVAL_BUDGET)
    out: dict[str, list[Tensor]] = {}
    for s, e in row_chunks(n, chunk):
        keys = ranking_keys(prepare_vectors(query[s:e].to(dtype), metric), ref_p)  # (c, m)
        rel = same_label(query_labels[s:e], reference_labels)  # (c, m)
        if exclude_self:
            rows = torch.arange(e - s, device=keys.device)
            keys[rows, rows + s] = float("inf")
            rel[rows, rows + s] = False
        for name, val in _chunk_values(keys, rel, ks, m_eff, average_precision,
                                       reciprocal_rank).items():
            out.setdefault(name, []).append(val)
    if not out:  # no queries
        return {"num_relevant": torch.zeros(0, dtype=torch.long)}
    return {name: torch.cat(vals) for name, vals in out.items()}


def _chunk_values(
    keys: Tensor, rel: Tensor, ks: list[int], m_eff: int, ap: bool, rr: bool
) -> dict[str, Tensor]:
    """Per-query values for one chunk of ranking keys ``(c, m)`` and relevance ``(c, m)``."""
    c, m = keys.shape
    r = rel.sum(dim=1)  # (c,) R per query
    r_f = r.to(torch.float64).clamp_min(1.0)
    depth = min(max(int(r.max()) if c else 0, ks[-1], 1), m_eff)
    _, idx = topk_lexicographic(keys, depth)  # (c, K)
    hits = rel.gather(1, idx)  # (c, K) bool, ranking order
    csum = hits.cumsum(dim=1)  # (c, K)
    pos = torch.arange(1, depth + 1, device=keys.device, dtype=torch.float64)  # (K,)
    in_r = pos[None, :] <= r[:, None]  # (c, K) within the first R
    vals: dict[str, Tensor] = {"num_relevant": r}
    vals["precision_at_1"] = hits[:, 0].to(torch.float64)
    for kv in ks:
        vals[f"recall_at_{kv}"] = hits[:, :kv].any(dim=1).to(torch.float64)
        vals[f"precision_at_{kv}"] = hits[:, :kv].sum(dim=1).to(torch.float64) / kv
    vals["r_precision"] = (hits & in_r).sum(dim=1).to(torch.float64) / r_f
    prec_at_hits = torch.where(hits & in_r, csum / pos, 0.0)  # (c, K) float64
    vals["map_at_r"] = prec_at_hits.sum(dim=1) / r_f
    if rr:
        # rank of the first relevant = 1 + number of references ranked before it
        inf = torch.tensor(float("inf"), dtype=keys.dtype, device=keys.device)
        best = torch.where(rel, keys, inf).min(dim=1, keepdim=True).values  # (c, 1)
        first = (rel & (keys == best)).to(torch.uint8).argmax(dim=1, keepdim=True)  # (c, 1)
        cols = torch.arange(m, device=keys.device)[None, :]
        before = (keys < best) | ((keys == best) & (cols < first))  # (c, m)
        vals["reciprocal_rank"] = 1.0 / (before.sum(dim=1).to(torch.float64) + 1.0)
    if ap:
        order = keys.argsort(dim=1, stable=True)  # (c, m) full ranking
        full_hits = rel.gather(1, order)  # (c, m)
        full_pos = torch.arange(1, m + 1, device=keys.device, dtype=torch.float64)
        prec = torch.where(full_hits, full_hits.cumsum(dim=1) / full_pos, 0.0)
        vals["average_precision"] = prec.sum(dim=1) / r_f
    return vals


__all__ = [
    "RETRIEVAL_BUDGET",
    "canonical_metric",
    "prepare_vectors",
    "ranking_keys",
    "scores_from_keys",
    "topk_lexicographic",
    "knn",
    "retrieval_per_query",
]
