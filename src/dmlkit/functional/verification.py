"""Verification math on scored pairs: ROC curve, AUC, EER, TAR at FAR, best threshold.

Scores are similarities: larger means "same". A pair is predicted "same" when its score
is ``>= threshold``. ROC points are taken at every distinct score (plus a first point at
``+inf`` where nothing is accepted), as scikit-learn's ``roc_curve`` with
``drop_intermediate=False`` does, so AUC equals ``roc_auc_score``.
"""

from __future__ import annotations

import numpy as np

from dmlkit._checks import check_real, is_int


def check_scored_pairs(scores, is_same) -> tuple[np.ndarray, np.ndarray]:
    """``(scores float64 (n,), is_same bool (n,))`` with both classes present; both must
    be 1-d, one entry per pair (a matrix would be flattened into pairs it does not hold)."""
    s = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores)
    y = np.asarray(is_same.detach().cpu() if hasattr(is_same, "detach") else is_same)
    for name, value in (("scores", s), ("is_same", y)):
        if value.ndim != 1:
            raise ValueError(f"{name} must be a 1-d array with one entry per pair, got "
                             f"shape {value.shape}")
    s = s.astype(np.float64).reshape(-1)
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("is_same must be boolean or 0/1")
        y = y.astype(bool)
    y = y.reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and is_same {y.shape} must have the same length")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    if y.all() or not y.any():
        raise ValueError("need both same and different pairs")
    return s, y


def roc_curve(scores, is_same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` at every distinct score, highest threshold first.

    ``thresholds[0]`` is ``+inf`` (accept nothing); point ``i`` accepts pairs with
    ``score >= thresholds[i]``.
    """
    s, y = check_scored_pairs(scores, is_same)
    order = np.argsort(-s, kind="stable")  # (n,) descending scores
    return _roc_sorted(s[order], y[order])


def _roc_sorted(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of scores already sorted in descending order."""
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (~y).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve by the trapezoidal rule."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def equal_error_rate(
    fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray
) -> tuple[float, float]:
    """``(eer, threshold)``: where FAR equals FRR, linearly interpolated between points."""
    gap = (1.0 - tpr) - fpr  # FRR - FAR, non-increasing along the curve
    i = int(np.argmax(gap <= 0.0))  # first point where FAR >= FRR (gap[-1] = -1 <= 0)
    if i == 0 or gap[i] == 0.0:
        return float(fpr[i]), float(thresholds[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    hi = thresholds[i - 1] if np.isfinite(thresholds[i - 1]) else thresholds[i]
    return float(eer), float(hi + t * (thresholds[i] - hi))


def min_dcf(
    fpr: np.ndarray,
    tpr: np.ndarray,
    thresholds: np.ndarray,
    *,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> tuple[float, float]:
    """``(min_dcf, threshold)``: the minimum normalized detection cost over ROC points.

    ``DCF = c_miss P_miss p_target + c_fa P_fa (1 - p_target)``, divided by
    ``min(c_miss p_target, c_fa (1 - p_target))`` (the cost of always accepting or always
    rejecting), as in the NIST speaker recognition evaluations. ``P_miss = 1 - tpr``,
    ``P_fa = fpr``; the threshold accepts ``score >= threshold``.
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if not (c_miss > 0 and c_fa > 0):
        raise ValueError(f"c_miss and c_fa must be > 0, got {c_miss}, {c_fa}")
    dcf = c_miss * (1.0 - tpr) * p_target + c_fa * fpr * (1.0 - p_target)  # (points,)
    i = int(np.argmin(dcf))
    return float(dcf[i] / min(c_miss * p_target, c_fa * (1.0 - p_target))), float(thresholds[i])


def check_far(far: float, name: str = "far") -> float:
    """``far`` as a float, or a ``ValueError`` naming ``name`` unless it is a real number
    in ``(0, 1)`` (:func:`~dmlkit._checks.check_real`): a false-accept rate of 0 or below
    accepts nothing, one of 1 or above everything, and neither is a point of a ROC curve
    worth reporting."""
    return check_real(name, far, 0.0, 1.0, low_open=True, high_open=True, what="")


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """Highest true-accept rate among ROC points whose false-accept rate is ``<= far``
    (``far`` in ``(0, 1)``)."""
    ok = fpr <= check_far(far)
    return float(tpr[ok].max())  # the first point (0, 0) always qualifies


def threshold_between(thresholds: np.ndarray, i: int) -> float:
    """A threshold accepting exactly what ROC point ``i`` accepts (``score >= t``).

    Midway between the point's lowest accepted score and the next lower score, kept
    within ``[nextafter(next lower, +inf), lowest accepted]``: the midpoint of two
    adjacent floats rounds onto one of them, and must never land on the rejected one.
    Point 0 (accept nothing) lies above the highest score (by 1, or by one float step
    where 1 is lost to rounding at large scale); the last point (accept everything) at
    or below the lowest score.
    """
    if i == 0:
        if thresholds.size < 2:
            return float("inf")
        top = float(thresholds[1])
        return max(top + 1.0, float(np.nextafter(top, np.inf)))
    if i == thresholds.size - 1:
        return min(float(thresholds[i]) - 1.0, float(thresholds[i]))
    accepted, rejected = float(thresholds[i]), float(thresholds[i + 1])
    mid = accepted / 2.0 + rejected / 2.0  # (halves first: no overflow at the float limits)
    return min(max(mid, float(np.nextafter(rejected, np.inf))), accepted)


def best_accuracy_threshold(scores, is_same) -> tuple[float, float]:
    """``(threshold, accuracy)`` maximizing accuracy of ``score >= threshold``.

    Among equally accurate points the highest threshold wins; the threshold lies midway
    between the accepted and the next lower score.
    """
    s, y = check_scored_pairs(scores, is_same)
    order = np.argsort(-s, kind="stable")
    return _best_sorted(s[order], y[order])


def _best_sorted(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    fpr, tpr, thr = _roc_sorted(s, y)
    n_pos, n_neg = y.sum(), (~y).sum()
    acc = (tpr * n_pos + (1.0 - fpr) * n_neg) / y.size  # (points,)
    i = int(np.argmax(acc))
    return threshold_between(thr, i), float(acc[i])


class OneKindSplitError(ValueError):
    """A training split of :func:`kfold_accuracy` holds only one kind of pair (the data
    are too few for that many folds), as opposed to a bad argument."""


def kfold_accuracy(
    scores, is_same, *, n_folds: int = 10, seed: int = 0, shuffle: bool = True
) -> dict:
    """Verification accuracy under k-fold cross-validation (the LFW protocol).

    For each fold the accuracy-maximizing threshold is chosen on the other ``k - 1``
    folds and applied to the held-out fold. Returns ``accuracy_mean``, ``accuracy_std``
    (population std over folds), per-fold ``accuracies`` and ``thresholds``.

    Raises
    ------
    ValueError
        ``n_folds`` not an integer in ``[2, n]`` or ``seed`` not an integer ``>= 0``;
        :class:`OneKindSplitError` (a ``ValueError``) when a training split holds only
        one kind of pair.
    """
    s, y = check_scored_pairs(scores, is_same)
    if not is_int(n_folds) or not 2 <= n_folds <= s.size:
        raise ValueError(f"n_folds must be an integer in [2, {s.size}] (the number of pairs), "
                         f"got {n_folds!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    order = np.random.default_rng(seed).permutation(s.size) if shuffle else np.arange(s.size)
    by_score = np.argsort(-s, kind="stable")  # sort once; folds keep this order
    s_sorted, y_sorted = s[by_score], y[by_score]
    accs, thrs = [], []
    for fold in np.array_split(order, n_folds):
        train = np.ones(s.size, dtype=bool)
        train[fold] = False
        train_sorted = train[by_score]
        s_tr, y_tr = s_sorted[train_sorted], y_sorted[train_sorted]
        if y_tr.all() or not y_tr.any():
            raise OneKindSplitError(
                "a training split has only one kind of pair; use fewer folds")
        t, _ = _best_sorted(s_tr, y_tr)
        accs.append(float(((s[fold] >= t) == y[fold]).mean()))
        thrs.append(t)
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "accuracies": accs, "thresholds": thrs}


__all__ = [
    "check_scored_pairs",
    "roc_curve",
    "auc",
    "equal_error_rate",
    "tar_at_far",
    "check_far",
    "min_dcf",
    "threshold_between",
    "best_accuracy_threshold",
    "kfold_accuracy",
    "OneKindSplitError",
]
