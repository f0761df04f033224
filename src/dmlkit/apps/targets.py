"""Checked identity / class labels for the application kits (scikit-learn's messages)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def check_targets(y: Any, n: int) -> np.ndarray:
    """``y`` as a ``(n,)`` array of class labels.

    A column vector ``(n, 1)`` is flattened with scikit-learn's ``DataConversionWarning``;
    ``None``, continuous values (:func:`check_label_values`) and wrong lengths raise
    ``ValueError``. Identities may be
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
    check_label_values(y)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The number of unique classes is greater")
        check_classification_targets(y)
    if y.dtype.hasobject:
        y = y.astype(str)
    return y


def check_label_values(labels: Any, name: str = "labels y") -> None:
    """Refuse float ``labels`` that are not whole numbers (``0.5``, NaN, infinity): class
    ids are whole numbers (``1.0`` is class ``1``); names and integers always pass.

    Raises
    ------
    ValueError
        Naming ``name``, the first offending value and how many more there are.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind != "f":
        return
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
    if not bad.any():
        return
    values = labels[bad]
    nan = np.isnan(values)
    if nan.any():
        raise ValueError(f"{name} must be whole-number class ids; got NaN for "
                         f"{int(nan.sum())} of {labels.size} labels (label every item)")
    more = values.size - 1
    raise ValueError(f"{name} must be whole-number class ids (Unknown label type: continuous); "
                     f"got {label_text(values[0])}"
                     + (f" (and {more} more non-integer values)" if more else ""))


def label_text(value: Any) -> str:
    """A label as messages print it: ``0``, ``'alice'`` (not ``np.int64(0)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


__all__ = ["check_label_values", "check_targets", "label_text"]
