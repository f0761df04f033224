"""Bootstrap intervals and curves of scored verification pairs (used by the Verifier).

Scores are similarities (larger = "same"). The bootstrap resamples pairs with
replacement; each replicate re-weights the pairs sorted once, so a replicate costs
``O(n)`` (no re-sort), and its EER and TAR@FAR are read from the weighted ROC. The 95%
interval is the 2.5 and 97.5 percentiles of the replicates; a replicate that drew pairs
of one kind only has no ROC and is left out (with a warning). Pairs drawn from one labelled
set share items, so these intervals treat pairs as independent and are somewhat narrow.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from dmlkit.functional.verification import (
    check_scored_pairs,
    equal_error_rate,
    roc_curve,
    tar_at_far,
)


def bootstrap_intervals(
    scores, is_same, *, fars: Sequence[float], n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, list[float] | None]:
    """95% percentile-bootstrap intervals of EER and of TAR at each FAR.

    Replicates that drew pairs of one kind only are left out, with one warning; when
    every replicate is, no interval can be given.

    Returns
    -------
    dict
        ``eer`` and ``tar_at_far_{far:g}`` -> ``[low, high]``, or ``None`` where no
        replicate held both kinds of pair.
    """
    if not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be a positive integer, got {n_bootstrap!r}")
    s, y = check_scored_pairs(scores, is_same)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]  # (n,) descending
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    thr = np.r_[np.inf, s[last]]
    rng = np.random.default_rng(seed)
    n = s.size
    keys = ["eer", *(f"tar_at_far_{f:g}" for f in fars)]
    draws: dict[str, list[float]] = {k: [] for k in keys}
    yf = y.astype(np.float64)
    for _ in range(int(n_bootstrap)):
        w = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)  # (n,)
        tp = np.cumsum(w * yf)[last]
        fp = np.cumsum(w * (1.0 - yf))[last]
        if tp[-1] == 0 or fp[-1] == 0:  # a replicate without one kind of pair
            continue
        tpr, fpr = np.r_[0.0, tp / tp[-1]], np.r_[0.0, fp / fp[-1]]
        draws["eer"].append(equal_error_rate(fpr, tpr, thr)[0])
        for f in fars:
            draws[f"tar_at_far_{f:g}"].append(tar_at_far(fpr, tpr, f))
    if dropped := int(n_bootstrap) - len(draws["eer"]):
        kept = "the intervals come from the others" if draws["eer"] else "no interval is given"
        warnings.warn(
            f"{dropped} of {int(n_bootstrap)} bootstrap replicates drew pairs of one kind "
            f"only (of {int(y.sum())} same and {int((~y).sum())} different pairs) and were "
            f"left out, so {kept}; add pairs of the rarer kind", UserWarning, stacklevel=2)
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None
            for k, v in draws.items()}


def verification_curves(scores, is_same) -> dict[str, list[float]]:
    """ROC and DET curves as data, at every distinct score (highest threshold first).

    Returns
    -------
    dict
        ``thresholds``, ``fpr`` (= FAR), ``tpr`` (= TAR), ``frr`` (= 1 - TAR) and the DET
        axes on the normal-deviate scale, ``far_probit`` and ``frr_probit`` (``+-inf`` at
        rates 0 and 1 are clipped to +-8).
    """
    from scipy.stats import norm

    fpr, tpr, thr = roc_curve(scores, is_same)
    frr = 1.0 - tpr
    probit = lambda p: np.clip(norm.ppf(p), -8.0, 8.0)  # noqa: E731
    return {"thresholds": thr.tolist(), "fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "frr": frr.tolist(), "far_probit": probit(fpr).tolist(),
            "frr_probit": probit(frr).tolist()}


__all__ = ["bootstrap_intervals", "verification_curves"]
