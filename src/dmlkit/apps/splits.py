"""Seeded splits of a labelled set into a part to fit a kit on and a part to test it on.

Verification and open-set identification are tested on identities the fitted threshold
has never seen (the protocol of face and re-identification benchmarks: LFW's folds,
Market-1501's disjoint train and test identities), so a split is by identity, not by item.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def split_identities(labels: Any, fraction: float, seed: int,
                     source: str = "the data") -> tuple[Any, Any]:
    """Rows of a seeded split by identity: a ``fraction`` of the identities to fit on, the
    others to test on (unseen identities, as verification benchmarks test).

    Identities with two or more items (the only ones with same-identity pairs) and those
    with one are split apart, so that each side has same- and different-identity pairs.

    Raises
    ------
    ValueError
        When that cannot be: labels that are not one per item (``(n,)``; a column
        ``(n, 1)`` is flattened with a warning, as scikit-learn does), fewer than four
        identities, or fewer than two with two or more items.
    """
    from sklearn.utils.validation import column_or_1d

    labels = column_or_1d(np.asarray(labels), warn=True)  # (n,), or scikit-learn's error
    ids, counts = np.unique(labels, return_counts=True)
    multi, single = ids[counts >= 2], ids[counts < 2]
    if ids.size < 2:
        raise ValueError(f"{source} has {ids.size} identity: verification needs at least two "
                         "identities")
    if ids.size < 4 or multi.size < 2:
        raise ValueError(
            f"{source} has {ids.size} identities, {multi.size} of them with two or more "
            "items: fitting the threshold on some identities and testing it on the others "
            "needs at least four identities, two of them with two or more items (so that "
            "both sides have same-identity pairs); give more identities, or fit on "
            "separate labelled data, or on given pairs")
    rng = np.random.default_rng(seed)
    fit_multi = min(max(int(round(fraction * multi.size)), 1), multi.size - 1)
    low = max(0, 2 - fit_multi)
    high = single.size - max(0, 2 - (multi.size - fit_multi))
    fit_single = min(max(int(round(fraction * single.size)), low), high)
    fit_ids = np.concatenate([rng.permutation(multi)[:fit_multi],
                              rng.permutation(single)[:fit_single]])
    fit = np.isin(labels, fit_ids)
    return np.flatnonzero(fit), np.flatnonzero(~fit)


__all__ = ["split_identities"]
