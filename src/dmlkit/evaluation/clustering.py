"""Clustering quality of embeddings: NMI and AMI of seeded k-means against the labels.

The number of clusters defaults to the number of classes, as in Musgrave et al. (2020)
and pytorch-metric-learning's ``AccuracyCalculator``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from dmlkit._checks import check_finite_rows, is_int
from dmlkit.evaluation.embedding_checks import float64_array
from dmlkit.functional.distances import unit_rows

#: largest ``random_state`` scikit-learn's k-means takes
_MAX_STATE = 2**32 - 1


def check_seed(seed: int) -> None:
    """A ``ValueError`` naming ``seed`` unless it is an integer ``>= 0``."""
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def warn_trivial_clustering(labels: np.ndarray) -> None:
    """Warn when the ``(n,)`` labels make clustering meaningless: one class (one cluster
    holds everything) or every item its own class (one cluster per item): NMI and AMI
    are trivially perfect or undefined, whatever the embeddings."""
    n, classes = int(labels.shape[0]), int(np.unique(labels).size)
    if classes == 1 or classes == n:
        what = (f"all {n} labels are one class" if classes == 1 else
                f"each of the {n} labels occurs once (one cluster per item)")
        warnings.warn(f"clustering metrics are trivial: {what}, so k-means has nothing to "
                      "find; evaluate on at least two classes with at least two items each",
                      UserWarning, stacklevel=3)


def kmeans_state(seed: int) -> int:
    """scikit-learn's ``random_state`` for ``seed``: the seed itself up to ``2**32 - 1``,
    larger seeds (any integer ``>= 0`` is a seed) mixed down to 32 bits."""
    check_seed(seed)
    seed = int(seed)
    if seed <= _MAX_STATE:
        return seed
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def kmeans_labels(
    embeddings, n_clusters: int, *, seed: int = 0, n_init: int = 3, max_iter: int = 300
) -> np.ndarray:
    """Seeded k-means cluster ids ``(n,)`` of ``(n, d)`` embeddings (scikit-learn), of any
    float dtype (bfloat16 included), clustered in float64."""
    x = float64_array(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape (n, d), got {x.shape}")
    if not 1 <= n_clusters <= x.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {x.shape[0]}], got {n_clusters}")
    from sklearn.cluster import KMeans  # imported here: scikit-learn is slow to import

    km = KMeans(
        n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=kmeans_state(seed)
    )
    return km.fit_predict(x)


def clustering_metrics(
    embeddings,
    labels,
    *,
    n_clusters: int | None = None,
    seed: int = 0,
    n_init: int = 3,
    normalize: bool = False,
) -> dict:
    """NMI and AMI between seeded k-means clusters and the class labels.

    Parameters
    ----------
    embeddings : Tensor or ndarray
        ``(n, d)`` embeddings.
    labels : Tensor or ndarray
        ``(n,)`` integer class labels.
    n_clusters : int, optional
        Default: the number of distinct labels.
    seed : int
        k-means seed, an integer ``>= 0`` (:func:`kmeans_state`; else a ``ValueError``).
    normalize : bool
        L2-normalize before clustering (k-means then follows cosine geometry); rows of
        any norm, tiny or huge, are normalized
        (:func:`~dmlkit.functional.distances.unit_rows`).

    Returns
    -------
    dict
        ``nmi``, ``ami`` (floats) and ``n_clusters``.

    Raises
    ------
    ValueError
        A negative or non-integer ``seed``, embeddings with NaN or infinite values, or
        labels that are not one per row. Labels of one class, or one class per item
        (NMI and AMI are then trivial), are warned about.
    """
    check_seed(seed)  # (before k-means: numpy's own message does not name it)
    x = embeddings if isinstance(embeddings, torch.Tensor) else torch.as_tensor(embeddings)
    values = x.detach().cpu()
    check_finite_rows((values if values.dtype in (torch.float32, torch.float64)
                       or not values.is_floating_point() else values.float()).numpy(),
                      "embeddings")
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
    warn_trivial_clustering(y)
    if normalize:  # (float64 stays float64; each row scaled by a power of two first)
        x = unit_rows(x if x.dtype in (torch.float32, torch.float64) else x.float())
    n_clusters = int(np.unique(y).size) if n_clusters is None else int(n_clusters)
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    pred = kmeans_labels(x, n_clusters, seed=seed, n_init=n_init)
    return {
        "nmi": float(normalized_mutual_info_score(y, pred)),
        "ami": float(adjusted_mutual_info_score(y, pred)),
        "n_clusters": n_clusters,
    }


__all__ = ["kmeans_labels", "kmeans_state", "clustering_metrics"]
