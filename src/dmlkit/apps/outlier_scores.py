"""Distances of :class:`~dmlkit.apps.outliers.MetricOutlierDetector` to its normal data
(the nearest normal points, class prototypes), and the held-out versions of them that set
its threshold.

A threshold cannot come from the training points' own scores: every training point
pulled its own class mean (and, for ``"mahalanobis"``, the covariance) towards itself,
so its score is better than a new normal point's, and a ``contamination`` quantile of
those scores flags far more than ``contamination`` of new normal data. So the threshold
is set on scores each training point gets from a model that did not see it:

* ``"knn"``: exact leave-one-out, each point's nearest neighbours among the others
  (:func:`knn_distance` with no reference).
* ``"prototype"`` with class labels: exact leave-one-out. Removing point ``x`` from its
  class of ``n_c`` points moves only that class's mean, to ``(n_c mean - x) / (n_c - 1)``;
  the other prototypes stay. A point alone in its class has no prototype of its own once
  it is left out, so it is scored against the other classes (as a new point of a class
  never seen would be).
* ``"prototype"`` without labels: cross-fitted (:func:`kmeans_oof_sq`). k-means places
  every centre among the points it was fitted on, so each point's own centre is pulled
  towards it by more than its share of the mean (the assignment moves too), and
  recomputing only its cluster's mean leaves its score too good (0.1 flagged about 18%
  of new normal data, fitted on 50 points). So the points are split into ``n_folds``
  seeded folds; k-means is fitted on the other folds and the held-out fold is scored
  against those centres.
* ``"mahalanobis"``: out-of-fold. The shrunk (Ledoit-Wolf) covariance has no cheap exact
  leave-one-out form, so the points are split into ``n_folds`` class-stratified, seeded
  folds; class means and covariance are fitted on the other folds and the held-out fold
  is scored with them. Each of these models saw ``(n_folds - 1) / n_folds`` of the data,
  so the scores are if anything slightly pessimistic (a slightly lower flagged rate
  than ``contamination`` on new data), never optimistic.
"""

from __future__ import annotations

import numpy as np
import torch

#: folds of the out-of-fold Mahalanobis scores that set the threshold
N_FOLDS = 10


def class_means(z: torch.Tensor, assignment: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(C, d)`` mean of the rows of ``z`` ``(n, d)`` in each class of ``assignment``
    ``(n,)`` (codes ``0 .. C - 1``, every class present)."""
    return torch.stack([z[assignment == c].mean(0) for c in range(n_classes)])


def knn_distance(z: torch.Tensor, reference: torch.Tensor | None, k: int) -> torch.Tensor:
    """``(n,)`` float64 mean Euclidean distance of each row of ``z`` ``(n, d)`` to its ``k``
    nearest rows of ``reference`` ``(m, d)``; with ``reference=None`` to its ``k`` nearest
    other rows of ``z`` (leave-one-out: the held-out scores of the training rows)."""
    from dmlkit.functional.retrieval import knn

    sq, _ = knn(z.double(), None if reference is None else reference.double(), k)  # (n, k)
    return sq.clamp_min(0).sqrt().mean(1)


def shrunk_precision(z: torch.Tensor, centres: torch.Tensor,
                     assignment: torch.Tensor) -> torch.Tensor:
    """``(d, d)`` float64 precision of the residuals ``z - centres[assignment]`` under one
    shared Ledoit-Wolf covariance, plus a small ridge.

    The ridge (``1e-6`` of the mean variance, or of the mean squared norm where the data
    do not vary) keeps the directions in which the normal data do not vary at all (one
    item per class, constant features) measurable: a pseudo-inverse alone would ignore
    exactly the directions in which anything else is anomalous.
    """
    from sklearn.covariance import LedoitWolf

    resid = (z.double() - centres.double()[assignment]).numpy()  # (n, d)
    cov = LedoitWolf(assume_centered=True).fit(resid).covariance_
    scale = max(float(np.trace(cov)), float((z.double() ** 2).sum(1).mean()), 1e-12)
    cov = cov + 1e-6 * scale / cov.shape[0] * np.eye(cov.shape[0])
    return torch.from_numpy(np.linalg.pinv(cov, hermitian=True))


def prototype_sq(z: torch.Tensor, centres: torch.Tensor,
                 precision: torch.Tensor | None = None) -> torch.Tensor:
    """``(n, C)`` float64 squared distance of each row of ``z`` ``(n, d)`` to each
    prototype ``(C, d)``: Euclidean, or Mahalanobis under ``precision`` ``(d, d)``."""
    diff = z.double()[:, None, :] - centres.double()[None]  # (n, C, d)
    if precision is None:
        d2 = diff.pow(2).sum(-1)  # (n, C)
    else:
        d2 = torch.einsum("ncd,de,nce->nc", diff, precision.double(), diff)  # (n, C)
    return d2.clamp_min(0)


def prototype_loo_sq(z: torch.Tensor, centres: torch.Tensor,
                     assignment: torch.Tensor) -> torch.Tensor:
    """``(n,)`` float64 leave-one-out squared Euclidean distance of each row of ``z``
    ``(n, d)`` to its nearest prototype: its own class's ``(C, d)`` prototype recomputed
    without it, ``(n_c centre - x) / (n_c - 1)``, and the other prototypes as they are.
    A row alone in its class is scored against the other prototypes only."""
    z, centres = z.double(), centres.double()
    d2 = prototype_sq(z, centres)  # (n, C)
    rows = torch.arange(len(z))
    counts = torch.bincount(assignment, minlength=len(centres)).double()  # (C,)
    n_c = counts[assignment]  # (n,)
    alone = n_c < 2
    own = (n_c[:, None] * centres[assignment] - z) / (n_c - 1).clamp_min(1)[:, None]  # (n, d)
    d2[rows, assignment] = torch.where(alone, torch.inf, (z - own).pow(2).sum(1))
    return d2.min(1).values


def kmeans_centres(z: torch.Tensor, n_prototypes: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(assignment (n,), centres (C, d))`` of seeded k-means on the rows of ``z``
    ``(n, d)``, with ``C = min(n_prototypes, n)`` centres."""
    from sklearn.cluster import KMeans

    k = min(int(n_prototypes), len(z))
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(z.numpy())
    return (torch.from_numpy(km.labels_.astype(np.int64)),
            torch.from_numpy(km.cluster_centers_).float())


def kmeans_oof_sq(z: torch.Tensor, n_prototypes: int, *, n_folds: int = N_FOLDS,
                  seed: int = 0) -> torch.Tensor:
    """``(n,)`` float64 out-of-fold squared Euclidean distance of each row of ``z``
    ``(n, d)`` to its nearest k-means centre: ``min(n_folds, n)`` seeded folds, each
    scored against the :func:`kmeans_centres` (same ``n_prototypes`` and ``seed``) of the
    other folds."""
    n = len(z)
    k = min(int(n_folds), n)
    folds = torch.from_numpy(stratified_folds(np.zeros(n, dtype=np.int64), k, seed))  # (n,)
    out = torch.empty(n, dtype=torch.float64)
    for f in range(k):
        held = folds == f
        _, centres = kmeans_centres(z[~held], n_prototypes, seed)  # (C, d)
        out[held] = prototype_sq(z[held], centres).min(1).values
    return out


def stratified_folds(assignment: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """``(n,)`` fold of each row: each class's rows, in a seeded random order, are dealt
    round the folds in turn (continuing where the previous class stopped), so every fold
    holds about ``n / n_folds`` rows and about as many of each class."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(assignment), dtype=np.int64)
    start = 0
    for c in np.unique(assignment):
        rows = rng.permutation(np.flatnonzero(assignment == c))
        folds[rows] = (start + np.arange(rows.size)) % n_folds
        start += rows.size
    return folds


def mahalanobis_oof_sq(z: torch.Tensor, assignment: torch.Tensor, *, n_folds: int = N_FOLDS,
                       seed: int = 0) -> torch.Tensor:
    """``(n,)`` float64 out-of-fold squared Mahalanobis distance of each row of ``z``
    ``(n, d)`` to its nearest class mean: ``min(n_folds, n)`` class-stratified folds, each
    scored by class means and a :func:`shrunk_precision` fitted on the other folds (the
    held-out row's class is left out where the fold held all of it)."""
    n = len(z)
    k = min(int(n_folds), n)
    folds = torch.from_numpy(stratified_folds(assignment.numpy(), k, seed))  # (n,)
    out = torch.empty(n, dtype=torch.float64)
    for f in range(k):
        held, rest = folds == f, folds != f
        classes, codes = torch.unique(assignment[rest], return_inverse=True)
        z_rest = z[rest]
        centres = class_means(z_rest.double(), codes, len(classes))  # (C', d)
        precision = shrunk_precision(z_rest, centres, codes)
        out[held] = prototype_sq(z[held], centres, precision).min(1).values
    return out


__all__ = ["N_FOLDS", "class_means", "knn_distance", "shrunk_precision", "prototype_sq",
           "prototype_loo_sq", "kmeans_centres", "kmeans_oof_sq", "stratified_folds",
           "mahalanobis_oof_sq"]
