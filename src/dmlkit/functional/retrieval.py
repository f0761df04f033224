"""Exact, chunked nearest-neighbour ranking and per-query retrieval metrics.

Ranking convention (every metric and :class:`dmlkit.index.ExactIndex` use it): the
references are ordered by a *ranking key* where smaller is closer (squared Euclidean
distance, or the negated similarity for ``"cosine"`` / ``"dot"``), and **ties are broken
by reference index, lower first**. This is the order ``faiss.IndexFlatL2`` returns, so
the metrics equal pytorch-metric-learning's ``AccuracyCalculator`` (which ranks with
``IndexFlatL2`` by default) even when many distances tie. ``faiss.IndexFlatIP`` lists
tied similarities highest index first, so by inner product or cosine the order among
ties can differ from that index's. Euclidean ranking uses
``|r|^2 - 2 q.r`` (the squared distance minus the query's own constant ``|q|^2``, one
matrix product), never a square root, which could merge distinct values into new ties.
Exact ties of the keys (e.g. integer-valued embeddings by Euclidean distance or dot
product) are reproduced exactly, copies of one vector included. By cosine the vectors
are scaled to unit length first (:func:`~dmlkit.functional.distances.unit_rows`: of any
magnitude, tiny or huge rows included), so parallel vectors of different lengths, tied in
exact arithmetic, can differ in the last bit and rank in either order. Sets of up to
``FLOAT64_MAX_PAIRS`` query-reference pairs are ranked by float64 keys; larger ones by
float32 keys, where two references whose distances differ by less
than float32 rounding may come out in either order (faiss's matrix products round
differently again). Each such swap across a relevance boundary moves a top-R metric by
``1 / (n R)`` (about 1e-5 on a thousand queries), so on large real-valued sets the
metrics can differ from ``AccuracyCalculator`` by that much rather than bit for bit.
:func:`retrieval_per_query` first moves Euclidean embeddings by one common vector next to
the origin (:mod:`dmlkit.functional.ranking_frame`): distances are unchanged, and
embeddings far from the origin keep that accuracy instead of losing their precision to
``|r|^2`` and ``2 q.r`` cancelling.

Queries are processed in row chunks, so memory is ``O(chunk * m)``: no ``(n, m)`` matrix
is ever formed. Definitions follow Musgrave, Belongie and Lim, "A Metric Learning Reality
Check", ECCV 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.distances import unit_rows
from dmlkit.functional.labels import same_label
from dmlkit.functional.ranking_frame import ranking_frame
from dmlkit.functional.relevant_ranks import ClassMembers, relevant_ranks

_ALIASES = {
    "euclidean": "euclidean",
    "l2": "euclidean",
    "squared_euclidean": "euclidean",
    "cosine": "cosine",
    "dot": "dot",
    "ip": "dot",
    "inner_product": "dot",
}
#: ranking-key elements per chunk of queries (128M floats = 512 MB): large chunks keep the
#: matrix product efficient (per query it costs ~1.7x more at 111 rows than at 1024)
RETRIEVAL_BUDGET = 1 << 27
#: smaller chunks when full average precision is on (it sorts every row: ~8 arrays per key)
FULL_RANKING_BUDGET = 1 << 24
#: query-reference pairs from which the top-R metrics use threshold filtering
#: (:func:`dmlkit.functional.topk_filter.exact_topk`) instead of a selection over whole rows
FILTER_MIN_PAIRS = 1 << 24
#: most neighbour slots (queries x deepest R) the filtering path holds at once
FILTER_MAX_SLOTS = 1 << 27
#: query-reference pairs up to which keys are computed in float64 (a few percent slower
#: there): distances that differ by less than float32 rounding keep their exact order
FLOAT64_MAX_PAIRS = 1 << 22


def canonical_metric(metric: str) -> str:
    """Map a metric name or alias to ``"euclidean"``, ``"cosine"`` or ``"dot"``."""
    if not isinstance(metric, str) or metric.lower() not in _ALIASES:
        raise ValueError(f"metric must be one of {sorted(_ALIASES)}, got {metric!r}")
    return _ALIASES[metric.lower()]


def prepare_vectors(x: Tensor, metric: str) -> tuple[Tensor, Tensor | None]:
    """``(vectors, squared norms or None)``: float, L2-normalized for ``"cosine"``
    (:func:`~dmlkit.functional.distances.unit_rows`: whatever the rows' magnitude)."""
    metric = canonical_metric(metric)
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if metric == "cosine":
        return unit_rows(x), None
    if metric == "euclidean":
        return x, (x * x).sum(dim=1)  # (n,)
    return x, None


def prepare_reference(reference: Tensor, metric: str) -> tuple[Tensor, bool]:
    """Reference ready for :func:`ranking_keys`: ``(matrix (d', m), augmented)``.

    Euclidean keys are ``|r|^2 - 2 q.r`` (the squared distance minus the query's constant
    ``|q|^2``: same order and ties within a row); the reference is stored as
    ``[-2 r; |r|^2]`` (``d + 1`` rows, ``augmented=True``) so that one matrix product with
    ``[q, 1]`` yields the keys without another pass over them. Similarity keys are
    ``-q.r``. The factors ``-2`` and ``-1`` are exact in floating point.
    """
    r, r_sq = prepare_vectors(reference, metric)
    if r_sq is None:
        return (-r).T.contiguous(), False
    return torch.cat([-2.0 * r, r_sq[:, None]], dim=1).T.contiguous(), True  # (d + 1, m)


def ranking_keys(
    query: Tensor, reference: tuple[Tensor, bool], out: Tensor | None = None
) -> Tensor:
    """Ranking keys ``(c, m)`` (smaller = closer) of prepared queries against a prepared
    reference (see :func:`prepare_reference`), written into ``out`` when given (a
    contiguous ``(c, m)`` buffer reused across chunks avoids faulting in fresh pages for
    every chunk, which costs about half as much as the matrix product itself)."""
    mat, augmented = reference
    if augmented:
        query = torch.cat([query, query.new_ones(query.shape[0], 1)], dim=1)  # (c, d + 1)
    if out is None:
        return query @ mat  # (c, m)
    return torch.mm(query, mat, out=out)  # (c, m)


def scores_from_keys(keys: Tensor, metric: str, query_sq: Tensor | None = None) -> Tensor:
    """Scores from ranking keys: squared L2 distance (clamped at 0), or the similarity."""
    if canonical_metric(metric) == "euclidean":
        return (keys + query_sq[:, None]).clamp_min(0.0)
    return -keys


def topk_lexicographic(keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest keys per row in ``(key, column)`` order: ``(c, k)`` values, indices.

    Among equal keys lower columns come first, and a tie that straddles the k-th
    position keeps the lowest columns, so the result is deterministic. One ``topk`` of
    ``k + 1`` finds the rows where a tie straddles the boundary (the k-th and (k+1)-th
    smallest keys are equal); only those rows are redone exactly.
    """
    c, m = keys.shape
    k = min(int(k), m)
    if k <= 0 or c == 0:
        empty = keys.new_empty((c, max(k, 0)))
        return empty, torch.empty((c, max(k, 0)), dtype=torch.long, device=keys.device)
    if 4 * k >= m:
        vals, idx = keys.sort(dim=1, stable=True)
        return vals[:, :k], idx[:, :k]
    vals, idx = torch.topk(keys, k + 1, dim=1, largest=False, sorted=True)  # (c, k + 1)
    cut = vals[:, k] == vals[:, k - 1]  # (c,) a tie straddles the k-th position
    vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    if bool(cut.any()):
        rows = cut.nonzero().squeeze(1)
        sub = keys.index_select(0, rows)  # (r, m)
        t = vals.index_select(0, rows)[:, k - 1 :]  # (r, 1) boundary key
        below = sub < t
        tied = sub == t
        need = k - below.sum(dim=1, keepdim=True)  # (r, 1) ties to keep, lowest columns first
        take = below | (tied & (tied.cumsum(dim=1) <= need))  # exactly k per row
        cols = take.nonzero()[:, 1].view(len(rows), k)  # (r, k) ascending columns
        idx.index_copy_(0, rows, cols)
        vals.index_copy_(0, rows, sub.gather(1, cols))
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
    prepared: tuple[Tensor, bool] | None = None,
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
    query_chunk, ref_chunk : int
        Shape of the block of keys computed at once.
    prepared : (Tensor, bool), optional
        ``prepare_reference(reference, metric)`` computed earlier (an index that searches
        the same references many times keeps it), so it is not recomputed per call.

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
    if prepared is None:
        prepared = prepare_reference(reference, metric)
    elif prepared[0].shape[1] != m:
        raise ValueError(f"prepared reference has {prepared[0].shape[1]} rows, reference {m}")
    mat, augmented = prepared
    out_keys = torch.full((n, k), float("inf"), dtype=mat.dtype, device=query.device)
    out_idx = torch.full((n, k), -1, dtype=torch.long, device=query.device)
    for s, e in row_chunks(n, query_chunk):
        q, q_sq = prepare_vectors(query[s:e].to(mat.dtype), metric)
        cand_keys, cand_idx = [], []
        for rs, re_ in row_chunks(m, ref_chunk):
            block = (mat[:, rs:re_], augmented)
            keys = ranking_keys(q, block)  # (c, b)
            lo, hi = max(s, rs), min(e, re_)
            if exclude_self and lo < hi:  # query i's own row is reference i
                keys[lo - s : hi - s, lo - rs : hi - rs].diagonal().fill_(float("inf"))
            v, i = topk_lexicographic(keys, k)
            cand_keys.append(v)
            cand_idx.append(i + rs)
        if not cand_keys:  # empty reference: every row stays padded
            continue
        v, i = torch.cat(cand_keys, dim=1), torch.cat(cand_idx, dim=1)  # (c, blocks * k)
        if len(cand_keys) > 1:  # merge blocks: (key, index) order, first k
            i, perm = i.sort(dim=1)
            v, perm2 = v.gather(1, perm).sort(dim=1, stable=True)
            i = i.gather(1, perm2)
        kk = min(k, v.shape[1])
        out_keys[s:e, :kk] = scores_from_keys(v[:, :kk], metric, q_sq)
        out_idx[s:e, :kk] = i[:, :kk]
    pad = torch.isinf(out_keys)
    out_idx[pad] = -1
    if canonical_metric(metric) != "euclidean":
        out_keys[pad] = float("-inf")
    return out_keys, out_idx


#: relative tolerance of :func:`check_reference_includes_queries` (of each row's largest
#: entry): the queries embedded apart from the reference may differ by rounding
INCLUDED_QUERY_RTOL = 1e-5


def check_reference_includes_queries(
    query: Tensor, query_labels: Tensor, reference: Tensor, reference_labels: Tensor
) -> None:
    """A ``ValueError`` unless the first ``n`` rows of ``reference`` are the ``n`` queries
    (each entry within :data:`INCLUDED_QUERY_RTOL` of the row's largest entry, at any
    scale) and the first ``n`` reference labels are the query labels, as
    ``ref_includes_query=True`` states (pytorch-metric-learning's ``AccuracyCalculator``
    checks the same): otherwise query ``i`` would skip an unrelated reference row ``i``."""
    n = query.shape[0]
    if reference.shape[0] < n:
        raise ValueError(f"the reference ({reference.shape[0]} rows) cannot include all {n} "
                         "queries")
    dtype = torch.promote_types(query.dtype, reference.dtype)
    dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    q, r = query.detach().to(dtype), reference[:n].detach().to(dtype)  # (n, d)
    peak = torch.maximum(q.abs().amax(dim=1), r.abs().amax(dim=1))  # (n,)
    rows_ok = ((q - r).abs() <= INCLUDED_QUERY_RTOL * peak[:, None]).all(dim=1)  # (n,)
    ql, rl = query_labels, reference_labels[:n]
    if ql.shape == rl.shape:
        labels_ok = (ql == rl.to(ql.dtype)).reshape(n, -1).all(dim=1)  # (n,)
    else:
        labels_ok = torch.zeros(n, dtype=torch.bool, device=ql.device)
    for ok, what in ((rows_ok, "embedding"), (labels_ok, "label")):
        bad = (~ok).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            shown = (f"has label {rl[i].tolist()} but query {i} has {ql[i].tolist()}"
                     if what == "label" else f"is not query {i}")
            raise ValueError(
                f"ref_includes_query=True says the reference's first {n} rows are the "
                f"queries, but {len(bad)} of them differ from the queries in their {what} "
                f"(e.g. reference row {i} {shown}); put the queries first in the "
                "reference, in order, with their labels, or pass ref_includes_query=False "
                "for a reference that does not contain them")


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
    reference whose first ``n`` rows are the queries, and their labels the query labels
    (:func:`check_reference_includes_queries`: else a ``ValueError``). Relevance is
    ``same_label(query_labels, reference_labels)``, so multi-label and hierarchical labels
    work (class labels take an equivalent faster path). ``R`` is the number of relevant
    references of a query.

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
    if not ks or ks[0] < 1:
        raise ValueError(f"k values must be >= 1, got {list(k)}")
    exclude_self = reference is None or ref_includes_query
    self_is_ref = reference is None
    n = query.shape[0]
    m = n if reference is None else reference.shape[0]
    if exclude_self and m < n:
        raise ValueError(f"the reference ({m} rows) cannot include all {n} queries")
    if reference is not None and ref_includes_query:
        check_reference_includes_queries(query, query_labels, reference, reference_labels)
    # Euclidean: one common shift (and power-of-two scale) keeps float32 keys of embeddings
    # far from the origin accurate; float64 keys on small sets
    wide = torch.float64 if n * m <= FLOAT64_MAX_PAIRS else None
    query, reference = ranking_frame(query, reference, dtype=wide,
                                     euclidean=canonical_metric(metric) == "euclidean")
    if reference is None:
        reference, reference_labels = query, query_labels
    m_eff = m - int(exclude_self)
    classes = query_labels.dim() == 1
    if classes:  # R from label counts, no (c, m) relation needed for the top-R metrics
        members = ClassMembers(reference_labels)
        r_all = members.sizes(query_labels) - int(exclude_self)
    if (classes and not average_precision and not reciprocal_rank and chunk_size is None
            and n * m >= FILTER_MIN_PAIRS and m_eff > 0 and query.device.type == "cpu"
            and n * min(max(int(r_all.max()), ks[-1]), m_eff) <= FILTER_MAX_SLOTS):
        return _filtered_top_values(query, query_labels, reference, reference_labels,
                                    r_all, ks, metric, self_is_ref, exclude_self, m_eff)
    ref = prepare_reference(reference, metric)  # (float64 up to FLOAT64_MAX_PAIRS pairs)
    # full AP of class labels: ranks of the relevant references by counting (the reciprocal
    # rank comes with them); otherwise a relation and sorting
    counted = classes and average_precision
    budget = FULL_RANKING_BUDGET if average_precision else RETRIEVAL_BUDGET
    chunk = chunk_size or chunk_size_for(n, m, budget)
    out: dict[str, list[Tensor]] = {}
    buf = ref[0].new_empty((min(chunk, n), m))  # (chunk, m) reused key buffer
    for s, e in row_chunks(n, chunk):
        q, _ = prepare_vectors(query[s:e].to(ref[0].dtype), metric)
        keys = ranking_keys(q, ref, out=buf[: e - s])  # (c, m)
        if exclude_self:  # (advanced indexing is slow on busy CPUs; views are not)
            keys[:, s:e].diagonal().fill_(float("inf"))
        rel = None
        if not classes or (not counted and reciprocal_rank):
            rel = _relation(query_labels[s:e], reference_labels, s, exclude_self)  # (c, m)
        r = r_all[s:e] if classes else rel.sum(dim=1)  # (c,)
        depth = min(max(int(r.max()) if e > s else 0, ks[-1], 1), m_eff)
        _, idx = topk_lexicographic(keys, depth)  # (c, K)
        if classes:
            hits = reference_labels.index_select(0, idx.reshape(-1)).view(idx.shape)
            hits = hits == query_labels[s:e, None]  # (c, K)
        else:
            hits = rel.gather(1, idx)  # (c, K)
        vals = _top_values(hits, r, ks)
        if counted:  # ranks of the relevant references by counting
            vals.update(_counted_values(keys, query_labels[s:e], reference_labels, members, r,
                                        s, exclude_self, reciprocal_rank))
        else:
            if reciprocal_rank:
                vals["reciprocal_rank"] = _reciprocal_rank(keys, rel)
            if average_precision:
                vals["average_precision"] = _average_precision(keys, rel, r)
        for name, val in vals.items():
            out.setdefault(name, []).append(val)
    if not out:  # no queries
        return {"num_relevant": torch.zeros(0, dtype=torch.long)}
    return {name: torch.cat(vals) for name, vals in out.items()}


def _filtered_top_values(query, query_labels, reference, reference_labels, r_all, ks,
                         metric, self_is_ref, exclude_self, m_eff) -> dict[str, Tensor]:
    """Top-R metrics from each query's ``max(R, k)`` nearest references, found by
    threshold filtering (leave-one-out computes each pair's distance once)."""
    from dmlkit.functional.topk_filter import exact_topk

    depth = r_all.clamp_min(ks[-1]).clamp(1, m_eff)  # (n,)
    _, idx = exact_topk(query, None if self_is_ref else reference, depth, metric=metric,
                        exclude_self=exclude_self)  # (n, D), -1 beyond a query's depth
    out: dict[str, list[Tensor]] = {}
    for s, e in row_chunks(query.shape[0], 1 << 14):
        block = idx[s:e]
        hits = reference_labels.index_select(0, block.clamp_min(0).view(-1)).view(block.shape)
        hits = (hits == query_labels[s:e, None]) & (block >= 0)  # (c, D)
        for name, val in _top_values(hits, r_all[s:e], ks).items():
            out.setdefault(name, []).append(val)
    return {name: torch.cat(vals) for name, vals in out.items()}


def _top_values(hits: Tensor, r: Tensor, ks: list[int]) -> dict[str, Tensor]:
    """Metrics from the top-K relevance ``hits (c, K)`` (ranking order) and ``R (c,)``."""
    if hits.shape[1] == 0:  # no reference at all (one item, left out of its own ranking)
        hits = hits.new_zeros((hits.shape[0], 1))
    depth = hits.shape[1]
    r_f = r.to(torch.float64).clamp_min(1.0)  # (c,)
    csum = hits.cumsum(dim=1)  # (c, K)
    pos = torch.arange(1, depth + 1, device=hits.device, dtype=torch.float64)  # (K,)
    in_r = hits & (pos[None, :] <= r[:, None])  # (c, K) relevant within the first R
    vals: dict[str, Tensor] = {"num_relevant": r}
    vals["precision_at_1"] = hits[:, 0].to(torch.float64)
    for kv in ks:
        vals[f"recall_at_{kv}"] = hits[:, :kv].any(dim=1).to(torch.float64)
        vals[f"precision_at_{kv}"] = hits[:, :kv].sum(dim=1).to(torch.float64) / kv
    vals["r_precision"] = in_r.sum(dim=1).to(torch.float64) / r_f
    vals["map_at_r"] = torch.where(in_r, csum / pos, 0.0).sum(dim=1) / r_f
    return vals


def _relation(query_labels: Tensor, reference_labels: Tensor, s: int, exclude_self: bool,
              rows: Tensor | None = None) -> Tensor:
    """Relevance ``(c, m)`` of chunk queries ``s + rows`` (all when ``rows`` is None),
    each query's own reference row excluded when ``exclude_self``."""
    device = query_labels.device
    rows = torch.arange(len(query_labels), device=device) if rows is None else rows
    rel = same_label(query_labels.index_select(0, rows), reference_labels)  # (c, m)
    if exclude_self:
        rel[torch.arange(len(rows), device=device), rows + s] = False
    return rel


def _counted_values(keys, query_labels, reference_labels, members, r, s, exclude_self,
                    reciprocal_rank) -> dict[str, Tensor]:
    """Full AP (and the reciprocal rank) of a chunk from the counted ranks of its relevant
    references (:mod:`dmlkit.functional.relevant_ranks`); rows with exact ties between a
    relevant key and another key are ranked by sorting instead."""
    cols, valid = members.members(query_labels)
    ranks, tied = relevant_ranks(keys, cols, valid, r)  # (c, w), (c,)
    r_f = r.to(torch.float64).clamp_min(1.0)
    k = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64, device=keys.device)
    terms = torch.where(k[None, :] <= r[:, None], k / ranks.clamp_min(1), 0.0)
    out = {"average_precision": terms.sum(dim=1) / r_f}
    if reciprocal_rank:
        first = ranks[:, 0] if ranks.shape[1] else torch.ones_like(r)
        out["reciprocal_rank"] = torch.where(r > 0, 1.0 / first.clamp_min(1).double(), 0.0)
    rows = tied.nonzero().squeeze(1)
    if len(rows):  # ties broken by reference index: rank those rows by sorting
        rel = _relation(query_labels, reference_labels, s, exclude_self, rows)
        sub = keys.index_select(0, rows)
        out["average_precision"][rows] = _average_precision(sub, rel, r[rows])
        if reciprocal_rank:
            out["reciprocal_rank"][rows] = _reciprocal_rank(sub, rel)
    return out


def _reciprocal_rank(keys: Tensor, rel: Tensor) -> Tensor:
    """1 / (1 + references ranked before the first relevant one), ``(c,)`` float64."""
    inf = torch.tensor(float("inf"), dtype=keys.dtype, device=keys.device)
    best = torch.where(rel, keys, inf).amin(dim=1, keepdim=True)  # (c, 1)
    first = (rel & (keys == best)).to(torch.uint8).argmax(dim=1, keepdim=True)  # (c, 1)
    cols = torch.arange(keys.shape[1], device=keys.device)[None, :]
    before = (keys < best) | ((keys == best) & (cols < first))  # (c, m)
    return 1.0 / (before.sum(dim=1).to(torch.float64) + 1.0)


def _average_precision(keys: Tensor, rel: Tensor, r: Tensor) -> Tensor:
    """Average precision over the full ranking (a stable sort per row), ``(c,)``."""
    m = keys.shape[1]
    order = keys.argsort(dim=1, stable=True)  # (c, m)
    hits = rel.gather(1, order)  # (c, m)
    pos = torch.arange(1, m + 1, device=keys.device, dtype=torch.float64)
    prec = torch.where(hits, hits.cumsum(dim=1) / pos, 0.0)
    return prec.sum(dim=1) / r.to(torch.float64).clamp_min(1.0)


__all__ = [
    "RETRIEVAL_BUDGET",
    "FULL_RANKING_BUDGET",
    "canonical_metric",
    "prepare_vectors",
    "ranking_keys",
    "scores_from_keys",
    "topk_lexicographic",
    "prepare_reference",
    "knn",
    "check_reference_includes_queries",
    "retrieval_per_query",
]
