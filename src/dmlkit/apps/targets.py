"""Checked identity / class labels for the application kits (scikit-learn's messages)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def check_targets(y: Any, n: int) -> np.ndarray:
    """``y`` as a ``(n,)`` array of class labels.

    A column vector ``(n, 1)`` is flattened with scikit-learn's ``DataConversionWarning``;
    ``None``, continuous values and wrong lengths raise ``ValueError``. Identities may be
    many, with one item each (a gallery of one photo per person): scikit-learn's warning
    that the classes outnumber half the samples is not raised for them.
    """
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import column_or_1d

    if y is None:
        raise ValueError("this kit requires y to be passed, but the target y is None")
    y = column_or_1d(np.asarray(y), warn=True)
    if y.shape[0] != n:
        raise ValueError(f"y must have one label per row of X ({n}), got {y.shape[0]}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The number of unique classes is greater")
        check_classification_targets(y)
    if y.dtype.hasobject:
        y = y.astype(str)
    return y


__all__ = ["check_targets"]
