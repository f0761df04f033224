"""Checks and conversions of the embeddings every evaluation section reads.

* :func:`float64_array`: embeddings of any float dtype (bfloat16 included, which numpy
  lacks) as a float64 array, for the sections computed with numpy and scikit-learn;
* :func:`check_magnitude`: refuse embeddings whose squared distances (or inner products)
  overflow their dtype;
* :func:`warn_queries_in_reference`: warn when queries appear verbatim, with their
  labels, in a separate reference set, where each would retrieve itself.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from dmlkit.functional.chunking import row_chunks

#: rows hashed (or compared) at once: bounds the uint64 copy of a chunk
_ROWS = 1 << 14
#: seed of the fixed per-column hash weights (hashes are compared within one call only)
_HASH_SEED = 0x5EED
#: share of a set's rows that may repeat another row of it before its embeddings count
#: as discrete (binary codes, integer grids), where equal rows across sets are common
DISCRETE_SHARE = 0.01


def float64_array(embeddings) -> np.ndarray:
    """``embeddings`` (a tensor of any dtype, bfloat16 included, an array or a nested
    list) as a float64 numpy array, values unchanged (bfloat16 and float16 widen
    exactly)."""
    if isinstance(embeddings, Tensor):
        x = embeddings.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # (numpy has no bfloat16; float32 holds every value exactly)
        embeddings = x.numpy()
    return np.asarray(embeddings, dtype=np.float64)


def check_magnitude(x: Tensor, name: str) -> None:
    """A one-line ``ValueError`` when squared distances of ``x`` (up to ``4 d max|x|^2``,
    which also bounds inner products) overflow its dtype (float32 for narrower floats):
    every distance-based score would be garbage."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    biggest = float(x.detach().abs().max()) if x.numel() else 0.0
    limit = math.sqrt(torch.finfo(x.dtype).max / (4 * max(1, x.shape[1])))
    if biggest > limit:
        raise ValueError(f"{name} reach {biggest:.3g}: their squared distances overflow "
                         f"{str(x.dtype).removeprefix('torch.')} (values must stay below "
                         f"{limit:.3g}); rescale them, e.g. divide by {biggest:.0e}")


def _common(a: Tensor, b: Tensor) -> torch.dtype:
    dtype = torch.promote_types(a.dtype, b.dtype)
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _row_hashes(x: Tensor, dtype: torch.dtype, weights: np.ndarray) -> np.ndarray:
    """A 64-bit hash ``(n,)`` of each row's bit pattern in ``dtype`` (equal rows, ``-0.0``
    and ``0.0`` alike, hash alike): the bits times fixed random weights, summed mod 2**64."""
    out = np.empty(x.shape[0], dtype=np.uint64)
    view = np.uint32 if dtype == torch.float32 else np.uint64
    for s, e in row_chunks(x.shape[0], _ROWS):
        part = x[s:e].detach().cpu().to(dtype) + 0.0  # (c, d); (+ 0.0 turns -0.0 into 0.0)
        bits = part.numpy().view(view).astype(np.uint64)  # (c, d)
        out[s:e] = (bits * weights).sum(axis=1, dtype=np.uint64)  # (wraps mod 2**64)
    return out


def _once(hashes: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """``(len(hashes),)`` bool: each hash occurs exactly once in the sorted ``ranked``."""
    return (np.searchsorted(ranked, hashes, side="right")
            - np.searchsorted(ranked, hashes, side="left")) == 1


def queries_in_reference(
    query: Tensor, reference: Tensor, query_labels: Tensor | None = None,
    reference_labels: Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(query rows, reference rows)``: the queries equal, entry for entry (and label
    for label, when the labels are given), to a reference row, each with that row.

    Only rows that occur once among the queries and once in the reference count, and
    none when more than :data:`DISCRETE_SHARE` of either set's rows repeat another row
    of it: equal rows are then common (discrete embeddings, e.g. binary codes) and say
    nothing about the queries being in the reference. Rows are found by hashing them:
    ``O((n + m) d)`` time, ``O(n + m)`` memory besides bounded chunks."""
    none = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    dtype = _common(query, reference)
    rng = np.random.default_rng(_HASH_SEED)
    weights = rng.integers(0, 2**63, size=query.shape[1], dtype=np.uint64) * 2 + 1  # odd
    q_hash = _row_hashes(query, dtype, weights)  # (n,)
    r_hash = _row_hashes(reference, dtype, weights)  # (m,)
    if not len(r_hash):
        return none
    order = np.argsort(r_hash, kind="stable")  # (m,)
    ranked = r_hash[order]
    q_ranked = np.sort(q_hash)
    if any((np.diff(h) == 0).sum() > DISCRETE_SHARE * len(h) for h in (q_ranked, ranked)):
        return none  # (discrete embeddings)
    pos = np.minimum(np.searchsorted(ranked, q_hash), len(ranked) - 1)  # (n,)
    rows = np.flatnonzero((ranked[pos] == q_hash) & _once(q_hash, q_ranked)
                          & _once(q_hash, ranked))  # candidate queries
    refs = order[pos[rows]]  # (c,) the reference row of the same hash
    same = np.zeros(len(rows), dtype=bool)
    for s, e in row_chunks(len(rows), _ROWS):  # (equal hashes of unequal rows are dropped)
        qi, ri = torch.from_numpy(rows[s:e]), torch.from_numpy(refs[s:e])
        a = query.detach().cpu().index_select(0, qi).to(dtype)
        b = reference.detach().cpu().index_select(0, ri).to(dtype)
        same[s:e] = (a == b).all(dim=1).numpy()
        if query_labels is not None and reference_labels is not None:
            la = query_labels.detach().cpu().index_select(0, qi)
            lb = reference_labels.detach().cpu().index_select(0, ri).to(la.dtype)
            same[s:e] &= (la == lb).reshape(len(qi), -1).all(dim=1).numpy()
    return rows[same].astype(np.int64), refs[same].astype(np.int64)


def warn_queries_in_reference(query: Tensor, reference: Tensor, query_labels: Tensor,
                              reference_labels: Tensor) -> None:
    """Warn when queries appear verbatim, with their labels, in the separate
    ``reference`` set (:func:`queries_in_reference`; with ``ref_includes_query=False``):
    each such query retrieves its own copy first, at distance 0, so Precision@1 and the
    other metrics are inflated (all of them 1.0 when every query is in the reference)."""
    if query_labels.shape[1:] != reference_labels.shape[1:]:
        return  # (labels of two kinds: the metrics refuse them)
    n = int(query.shape[0])
    dtype = _common(query, reference)
    lead = (0 < n <= reference.shape[0]
            and bool((reference[:n].to(dtype) == query.to(dtype)).all())
            and bool((reference_labels[:n].to(query_labels.dtype) == query_labels).all()))
    if not lead:
        rows, refs = queries_in_reference(query, reference, query_labels, reference_labels)
        if not len(rows):
            return
    if lead:
        what = (f"the reference's first {n} rows are the {n} queries, so each query "
                "retrieves itself first and the metrics are inflated")
        fix = "pass ref_includes_query=True to leave each query's own row out of its ranking"
    else:
        what = (f"{len(rows)} of the {n} queries appear verbatim, with their labels, in "
                f"the reference set (e.g. query {int(rows[0])} is reference row "
                f"{int(refs[0])}), so each of them retrieves its own copy first and the "
                "metrics are inflated")
        fix = ("if the reference holds the queries as its first rows, pass "
               "ref_includes_query=True; otherwise remove the copies from the reference")
    warnings.warn(f"{what}; {fix}", UserWarning, stacklevel=3)


__all__ = ["check_magnitude", "float64_array", "queries_in_reference",
           "warn_queries_in_reference"]
