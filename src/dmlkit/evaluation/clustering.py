"""Clustering quality of embeddings: NMI and AMI of seeded k-means against the labels.

The number of clusters defaults to the number of classes, as in Musgrave et al. (2020)
and pytorch-metric-learning's ``AccuracyCalculator``.
"""

from __future__ import annotations

import numpy as np
import torch

from dmlkit.functional.distances import l2_normalize

#: largest ``random_state`` scikit-learn's k-means takes
_MAX_STATE = 2**32 - 1


def kmeans_state(seed: int) -> int:
    """scikit-learn's ``random_state`` for ``seed``: the seed itself up to ``2**32 - 1``,
    larger seeds (any integer ``>= 0`` is a seed) mixed down to 32 bits."""
    seed = int(seed)
    if 0 <= seed <= _MAX_STATE:
        return seed
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def kmeans_labels(
    embeddings, n_clusters: int, *, seed: int = 0, n_init: int = 3, max_iter: int = 300
) -> np.ndarray:
    """Seeded k-means cluster ids ``(n,)`` of ``(n, d)`` embeddings (scikit-learn)."""
    x = embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else embeddings
    x = np.asarray(x, dtype=np.float64)
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
        k-means seed, an integer ``>= 0`` (:func:`kmeans_state`).
    normalize : bool
        L2-normalize before clustering (k-means then follows cosine geometry).

    Returns
    -------
    dict
        ``nmi``, ``ami`` (floats) and ``n_clusters``.
    """
    x = embeddings if isinstance(embeddings, torch.Tensor) else torch.as_tensor(embeddings)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
    if normalize:  # (float64 stays float64: float32 overflows huge values, flushes tiny)
        x = l2_normalize(x if x.dtype in (torch.float32, torch.float64) else x.float())
    n_clusters = int(np.unique(y).size) if n_clusters is None else int(n_clusters)
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    pred = kmeans_labels(x, n_clusters, seed=seed, n_init=n_init)
    return {
        "nmi": float(normalized_mutual_info_score(y, pred)),
        "ami": float(adjusted_mutual_info_score(y, pred)),
        "n_clusters": n_clusters,
    }


__all__ = ["kmeans_labels", "kmeans_state", "clustering_metrics"]
