"""Identification metrics: CMC and mAP under the re-identification protocol, and the
open-set rates DIR@FAR and the open-set ROC.

Re-identification (Zheng et al., ICCV 2015, "Scalable Person Re-identification: A
Benchmark", the Market-1501 protocol): each query ranks the whole gallery by similarity;
gallery items with the query's identity *and* the query's camera (or session, or any
key) are removed from its ranking, so that a match must come from another view. CMC at
rank r is the fraction of queries whose first match is within the top r; AP is the mean
of the precision at each match's rank (the convention of open-reid and torchreid). Queries
without any match left in the gallery are skipped (reported as ``num_skipped``).
Multi-shot queries pool all query items of one group (by default one identity under one
camera) into one query: the mean embedding (``"mean"``) or the best score of any member
for each gallery item (``"max"``).

Open-set identification (Phillips et al., FRVT; Jain & Li, Handbook of Face
Recognition): a query of an enrolled identity is *detected and identified* at threshold
t when its top-1 gallery identity is correct and its top-1 score is ``>= t``; a query of
an unknown identity raises a *false alarm* when its top-1 score is ``>= t``. DIR@FAR is
the detection-and-identification rate at the threshold whose false-alarm rate is at most
FAR; ``m`` unknown queries measure no false-alarm rate between 0 and ``1 / m``, so a FAR
below it gives NaN (with a warning), as TAR@FAR does for too few different pairs.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from dmlkit.evaluation.verification import pairs_needed, resolvable
from dmlkit.functional.retrieval import canonical_metric
from dmlkit.functional.verification import check_far


def check_fars(fars: Any) -> tuple[float, ...]:
    """``fars`` (one FAR or a sequence of them) as a tuple of floats in ``(0, 1)``."""
    if isinstance(fars, numbers.Real) and not isinstance(fars, bool):
        fars = (fars,)  # one FAR
    if isinstance(fars, (str, bytes)) or not isinstance(fars, (Sequence, np.ndarray)):
        raise TypeError(f"fars must be a FAR or a sequence of FARs in (0, 1), got {fars!r}")
    try:
        return tuple(check_far(f) for f in np.asarray(fars, dtype=object).reshape(-1))
    except ValueError as err:
        raise ValueError(f"fars: {err}") from None


def far_threshold(impostor_scores: Any, far: float) -> float:
    """Lowest threshold at which at most a ``far`` fraction of ``impostor_scores`` is
    ``>= threshold`` (a score just above the ``floor(far * m)``-th highest impostor)."""
    s = np.sort(np.asarray(impostor_scores, dtype=np.float64).reshape(-1))[::-1]
    if s.size == 0:
        raise ValueError("need at least one impostor (unknown) score to set a threshold")
    if not np.isfinite(s).all():
        raise ValueError("impostor scores contain NaN or infinite values")
    far = check_far(far)
    allowed = int(np.floor(far * s.size))  # false accepts we may make
    return float(np.nextafter(s[min(allowed, s.size - 1)], np.inf))


def calibration_threshold(impostor_scores: Any, far: float) -> float:
    """:func:`far_threshold` of a kit's calibration (impostor) scores, with a warning
    where too few of them resolve ``far`` (as
    :meth:`~dmlkit.evaluation.ThresholdCalibrator.fit` warns of too few different pairs),
    attributed to the caller of :meth:`Identifier.fit` / ``calibrate``: the threshold
    then lies just above the highest of them."""
    m = np.asarray(impostor_scores).size
    if m and not resolvable(check_far(far), m):
        warnings.warn(
            f"the calibration set cannot resolve target_far={far:g}: its {m} impostor "
            "scores (each item's best score against an identity other than its own) "
            f"resolve no FAR between 0 and 1/{m} = {1.0 / m:.3g}, so the threshold rejects "
            f"all of them (FAR 0 here, unmeasured below {1.0 / m:.3g}); that FAR needs at "
            f"least {pairs_needed(far)} impostor scores: calibrate on more items (a larger "
            "gallery or calibration_size, or more unknown queries)", UserWarning,
            stacklevel=4)  # (the caller of Identifier.fit / calibrate)
    return far_threshold(impostor_scores, far)


def dir_at_far(
    known_scores: Any, known_correct: Any, unknown_scores: Any, fars: Sequence[float]
) -> dict[str, float]:
    """DIR at each FAR: ``dir_at_far_{far:g}`` (and the threshold, ``threshold_at_far_*``).

    ``known_scores`` ``(n,)`` and ``known_correct`` ``(n,)`` bool are the top-1 scores and
    rank-1 correctness of queries of enrolled identities; ``unknown_scores`` ``(m,)`` the
    top-1 scores of queries of identities not enrolled. Both values are NaN, with one
    warning, for a FAR below ``1 / m``: ``m`` unknowns cannot measure it.
    """
    ks = np.asarray(known_scores, dtype=np.float64).reshape(-1)
    ok = np.asarray(known_correct, dtype=bool).reshape(-1)
    if ks.shape != ok.shape or ks.size == 0:
        raise ValueError(f"need matching, non-empty known scores and flags, got {ks.shape}, "
                         f"{ok.shape}")
    m = np.asarray(unknown_scores).size
    out: dict[str, float] = {}
    unresolved = []
    for far in check_fars(fars):
        if m and not resolvable(far, m):
            unresolved.append(far)
            out[f"dir_at_far_{far:g}"] = out[f"threshold_at_far_{far:g}"] = float("nan")
            continue
        t = far_threshold(unknown_scores, far)
        out[f"dir_at_far_{far:g}"] = float((ok & (ks >= t)).mean())
        out[f"threshold_at_far_{far:g}"] = t
    if unresolved:
        lowest = min(unresolved)
        warnings.warn(
            f"DIR at FAR {', '.join(f'{f:g}' for f in unresolved)} is NaN: {m} unknown "
            f"queries resolve no false-alarm rate between 0 and 1/{m} = {1.0 / m:.3g}; FAR "
            f"{lowest:g} needs at least {pairs_needed(lowest)} unknown queries", UserWarning,
            stacklevel=2)
    return out


def open_set_metrics(
    top_scores: Any, hit: Any, true_rank: Any, known: Any, threshold: float, *,
    fars: Sequence[float], max_rank: int, curves: bool = False,
) -> dict[str, Any]:
    """The metrics of :meth:`~dmlkit.apps.Identifier.evaluate`.

    ``top_scores`` ``(n,)`` is each query's top-1 score and ``known`` ``(n,)`` whether its
    identity is enrolled; for the ``nk`` known queries, ``hit`` ``(nk, K)`` (``K >= 5``,
    ``max_rank``) marks the true identity among the top ``K`` identities and
    ``true_rank`` ``(nk,)`` is its 0-based rank among all enrolled identities (``-1``:
    not found, reciprocal rank 0), which ``mrr`` averages.
    """
    top = np.asarray(top_scores, dtype=np.float64).reshape(-1)
    known = np.asarray(known, dtype=bool).reshape(-1)
    if not known.any():  # unknowns only: the false-alarm rate alone
        return {"num_known": 0, "num_unknown": int(known.size), "threshold": float(threshold),
                "far_at_threshold": float((top >= threshold).mean())}
    hit = np.asarray(hit, dtype=bool)
    rank = np.asarray(true_rank).reshape(-1)
    cmc = np.cumsum(hit, axis=1).clip(0, 1).mean(0)  # (K,)
    correct = hit[:, 0]
    out: dict[str, Any] = {
        "cmc": cmc[:max_rank].tolist(), "rank1": float(cmc[0]), "rank5": float(cmc[4]),
        "mrr": float(np.where(rank >= 0, 1.0 / (np.clip(rank, 0, None) + 1.0), 0.0).mean()),
        "num_known": int(known.sum()), "num_unknown": int((~known).sum()),
        "threshold": float(threshold),
        "dir_at_threshold": float((correct & (top[known] >= threshold)).mean()),
    }
    if (~known).any():
        unknown_top = top[~known]
        out["far_at_threshold"] = float((unknown_top >= threshold).mean())
        out.update(dir_at_far(top[known], correct, unknown_top, fars))
        if curves:
            out["open_set_roc"] = open_set_roc(top[known], correct, unknown_top)
    return out


def open_set_roc(
    known_scores: Any, known_correct: Any, unknown_scores: Any, max_points: int = 1000
) -> dict[str, list[float]]:
    """Open-set ROC as data: ``far`` (false-alarm rate on unknowns) against ``dir`` at
    each distinct unknown score used as threshold (thinned to ``max_points``)."""
    ks = np.asarray(known_scores, dtype=np.float64).reshape(-1)
    ok = np.asarray(known_correct, dtype=bool).reshape(-1)
    us = np.sort(np.asarray(unknown_scores, dtype=np.float64).reshape(-1))  # ascending
    thr = np.unique(np.r_[us, np.inf])[::-1]  # (t,) from +inf down
    if thr.size > max_points:
        thr = thr[np.linspace(0, thr.size - 1, max_points).round().astype(int)]
    far = 1.0 - np.searchsorted(us, thr, side="left") / max(us.size, 1)  # frac >= t
    good = np.sort(ks[ok])
    dir_ = (good.size - np.searchsorted(good, thr, side="left")) / max(ks.size, 1)
    return {"thresholds": thr.tolist(), "far": far.tolist(), "dir": dir_.tolist()}


def _similarity(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    """``(nq, ng)`` float64 similarity (negated squared distance for Euclidean)."""
    if metric == "euclidean":
        return 2.0 * (q @ g.T) - (q * q).sum(1)[:, None] - (g * g).sum(1)[None, :]
    return q @ g.T


def reid_metrics(
    query: Any,
    gallery: Any,
    query_ids: Any,
    gallery_ids: Any,
    query_cams: Any = None,
    gallery_cams: Any = None,
    *,
    metric: str = "euclidean",
    max_rank: int = 50,
    multi_shot: str | None = None,
    query_groups: Any = None,
    junk_ids: Sequence[Any] = (),
    chunk: int = 256,
) -> dict[str, Any]:
    """CMC and mAP of queries against a gallery under the re-identification protocol.

    Parameters
    ----------
    query, gallery : ``(nq, d)``, ``(ng, d)`` embeddings.
    query_ids, gallery_ids : ``(nq,)``, ``(ng,)`` identities.
    query_cams, gallery_cams : ``(nq,)``, ``(ng,)``, optional
        Camera (or any) key; gallery items sharing a query's identity and key are
        excluded from its ranking. Without keys nothing is excluded.
    metric : {"euclidean", "cosine", "dot"}
    max_rank : int
        Length of the returned CMC curve.
    multi_shot : {None, "mean", "max"}
        Pool the queries of each group into one query (see the module notes).
    query_groups : ``(nq,)``, optional
        Group of each query for ``multi_shot`` (default: identity and key).
    junk_ids : identities whose gallery items are never ranked (e.g. Market's ``-1``).

    Returns
    -------
    dict
        ``cmc`` (list of ``max_rank`` rates), ``rank1``, ``rank5``, ``rank10``, ``map``,
        ``num_queries`` (scored), ``num_skipped`` (no valid match).
    """
    metric = canonical_metric(metric)
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    qid, gid = np.asarray(query_ids).reshape(-1), np.asarray(gallery_ids).reshape(-1)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery must be (n, d) with one d, got {q.shape}, {g.shape}")
    if g.shape[0] == 0 or q.shape[0] == 0:
        raise ValueError(f"query and gallery must be non-empty, got {q.shape[0]}, {g.shape[0]}")
    if qid.shape[0] != q.shape[0] or gid.shape[0] != g.shape[0]:
        raise ValueError(f"ids must have {q.shape[0]} and {g.shape[0]} entries, got "
                         f"{qid.shape[0]}, {gid.shape[0]}")
    if not (np.isfinite(q).all() and np.isfinite(g).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError("pass camera keys for both queries and gallery, or for neither")
    qcam = None if query_cams is None else np.asarray(query_cams).reshape(-1)
    gcam = None if gallery_cams is None else np.asarray(gallery_cams).reshape(-1)
    if qcam is not None and (qcam.shape != qid.shape or gcam.shape != gid.shape):
        raise ValueError("camera keys must have one entry per query and per gallery item")
    if multi_shot not in (None, "mean", "max"):
        raise ValueError(f"multi_shot must be None, 'mean' or 'max', got {multi_shot!r}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    # groups: one list of query rows per (pooled) query
    if multi_shot is None:
        groups = [np.array([i]) for i in range(q.shape[0])]
    else:
        if query_groups is None:  # one group per (identity, key)
            _, a = np.unique(qid, return_inverse=True)
            _, b = np.unique(qcam if qcam is not None else qid, return_inverse=True)
            key = a.astype(np.int64) * (int(b.max()) + 1) + b
        else:
            key = np.asarray(query_groups).reshape(-1)
            if key.shape != qid.shape:
                raise ValueError(f"query_groups must have {qid.shape[0]} entries")
        _, inverse = np.unique(key, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    junk = np.isin(gid, np.asarray(list(junk_ids))) if len(junk_ids) else np.zeros(gid.shape,
                                                                                  bool)
    firsts: list[int] = []  # rank (0-based) of each query's first true match
    aps: list[float] = []
    skipped = 0
    for s in range(0, len(groups), chunk):
        block = groups[s : s + chunk]
        if multi_shot == "max":
            rows = np.concatenate(block)
            sim_all = _similarity(q[rows], g, metric)  # (members, ng)
            starts = np.cumsum([0] + [len(b) for b in block[:-1]])
            sim = np.maximum.reduceat(sim_all, starts, axis=0)  # (groups, ng)
        else:
            qq = np.stack([q[b].mean(0) for b in block])  # (groups, d)
            sim = _similarity(qq, g, metric)  # (groups, ng)
        for r, b in enumerate(block):
            i = b[0]
            keep = ~junk
            if qcam is not None:
                keep &= ~((gid == qid[i]) & (gcam == qcam[i]))
            order = np.argsort(-sim[r][keep], kind="stable")
            match = gid[keep][order] == qid[i]  # (kept,) in rank order
            if not match.any():
                skipped += 1
                continue
            hits = np.flatnonzero(match)
            firsts.append(int(hits[0]))
            aps.append(float(np.mean(np.arange(1, hits.size + 1) / (hits + 1))))
    n = len(aps)
    if n == 0:
        raise ValueError("no query has a valid match in the gallery")
    first = np.asarray(firsts)
    cmc = (first[:, None] < np.arange(1, max_rank + 1)).mean(0)  # (max_rank,)
    return {"cmc": cmc.tolist(), "rank1": float((first < 1).mean()),
            "rank5": float((first < 5).mean()), "rank10": float((first < 10).mean()),
            "map": float(np.mean(aps)), "num_queries": n, "num_skipped": skipped}


__all__ = ["check_fars", "far_threshold", "dir_at_far", "open_set_metrics", "open_set_roc",
           "reid_metrics"]
