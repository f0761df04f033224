"""Few-shot classification episodes on embeddings: N-way K-shot accuracy with a 95% CI.

Each seeded episode draws ``n_way`` classes, ``k_shot`` support and ``n_query`` query
items per class (disjoint), and classifies queries by the nearest class prototype (mean
support embedding; Snell et al. 2017, "Prototypical Networks"; with ``metric="cosine"``
the mean of the L2-normalized support embeddings, compared by cosine) or by the nearest
support item. The interval half-width is ``1.96 * std / sqrt(episodes)`` with the
sample standard deviation of the episode accuracies (``ddof=1``: the standard error of
their mean, as the usual few-shot evaluation code reports it); NaN for a single episode,
whose spread is unknown.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dmlkit._checks import is_int
from dmlkit.evaluation.embedding_checks import float64_array
from dmlkit.functional.distances import unit_rows
from dmlkit.functional.retrieval import canonical_metric

CLASSIFIERS = ("prototype", "nearest_neighbor")

# why ``n_way`` must be 2 or more, as every refusal of a 1-way episode gives it
ONE_WAY_REASON = ("a 1-way episode has one class to choose, so its accuracy is always 1.0 "
                  "and says nothing about the embeddings")


class NotEnoughClassesError(ValueError):
    """The labelled set has too few classes with enough items for the episodes asked
    for (a property of the data, as opposed to a bad argument)."""


def sample_episode(
    labels: np.ndarray, n_way: int, k_shot: int, n_query: int, rng: np.random.Generator,
    eligible: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(support (n_way, k_shot), query (n_way, n_query))`` of one episode."""
    classes = rng.choice(eligible, size=n_way, replace=False)
    support, query = [], []
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))[: k_shot + n_query]
        support.append(members[:k_shot])
        query.append(members[k_shot:])
    return np.stack(support), np.stack(query)


def few_shot_accuracy(
    embeddings,
    labels,
    *,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    episodes: int = 600,
    classifier: str = "prototype",
    metric: str = "euclidean",
    seed: int = 0,
) -> dict:
    """Mean accuracy and 95% confidence interval over seeded N-way K-shot episodes.

    Returns
    -------
    dict
        ``accuracy``, ``ci95`` (half-width of the 95% interval of the mean accuracy,
        ``1.96 * std(ddof=1) / sqrt(episodes)``; NaN for one episode), ``episodes``,
        ``n_way``, ``k_shot``, ``n_query``, ``classifier``.

    Raises
    ------
    ValueError
        A bad argument (``n_way`` below 2: one class to choose from is always right;
        a count below 1, a negative ``seed``, an unknown classifier or metric), or
        :class:`NotEnoughClassesError` when fewer than ``n_way`` classes have
        ``k_shot + n_query`` items.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    for name, v, low in (("n_way", n_way, 2), ("k_shot", k_shot, 1), ("n_query", n_query, 1),
                         ("episodes", episodes, 1), ("seed", seed, 0)):
        if not is_int(v) or v < low:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            hint = f": {ONE_WAY_REASON}" if name == "n_way" and v == 1 else ""
            raise ValueError(f"{name} must be {what}, got {v!r}{hint}")
    n_way, k_shot, n_query, episodes = int(n_way), int(k_shot), int(n_query), int(episodes)
    metric = canonical_metric(metric)
    x = float64_array(embeddings)  # (any float dtype, bfloat16 included)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if x.ndim != 2 or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"need embeddings (n, d) and labels (n,), got {x.shape}, {y.shape}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        raise ValueError(f"embeddings contain NaN or infinite values ({bad} of {len(x)} rows)")
    if metric == "cosine":  # (unit rows at any magnitude: tiny and huge ones alike)
        x = unit_rows(torch.from_numpy(x)).numpy()
    uniq, counts = np.unique(y, return_counts=True)
    eligible = uniq[counts >= k_shot + n_query]
    if eligible.size < n_way:
        raise NotEnoughClassesError(
            f"{n_way}-way episodes need {n_way} classes with at least {k_shot + n_query} "
            f"items each (k_shot={k_shot} support + n_query={n_query} queries), but only "
            f"{eligible.size} of the {uniq.size} classes have that many; lower n_way, "
            "k_shot or n_query (or pass more items per class)"
        )
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_way), n_query)  # (n_way * n_query,)
    accs = np.empty(episodes)
    for e in range(episodes):
        sup, qry = sample_episode(y, n_way, k_shot, n_query, rng, eligible)
        xs = x[sup.reshape(-1)]  # (n_way * k_shot, d)
        xq = x[qry.reshape(-1)]  # (n_way * n_query, d)
        owner = np.repeat(np.arange(n_way), k_shot)  # (n_way * k_shot,)
        if classifier == "prototype":
            xs = xs.reshape(n_way, k_shot, -1).mean(axis=1)  # (n_way, d)
            owner = np.arange(n_way)
            if metric == "cosine":  # cosine to the prototype: the mean direction
                xs = xs / np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-12)
        if metric == "euclidean":  # |s|^2 - 2 q.s: the distance order within each query
            keys = (xs * xs).sum(axis=1)[None, :] - 2.0 * (xq @ xs.T)  # (nq, s)
        else:
            keys = -(xq @ xs.T)  # (nq, s)
        pred = owner[keys.argmin(axis=1)]  # ties -> first support item
        accs[e] = float((pred == truth).mean())
    return {
        "accuracy": float(accs.mean()),
        "ci95": (float(1.96 * accs.std(ddof=1) / math.sqrt(episodes)) if episodes > 1
                 else float("nan")),
        "episodes": episodes, "n_way": n_way, "k_shot": k_shot, "n_query": n_query,
        "classifier": classifier,
    }


__all__ = ["CLASSIFIERS", "ONE_WAY_REASON", "NotEnoughClassesError", "sample_episode",
           "few_shot_accuracy"]
