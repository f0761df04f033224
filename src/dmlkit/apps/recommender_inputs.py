"""Checks of what :class:`~dmlkit.apps.CMLRecommender` is given: its parameters, ids and
feature rows, each refused with one line naming the offending value."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from dmlkit._checks import check_int_param, check_real, check_real_inputs, is_int
from dmlkit.evaluation.recommendation import id_key

#: the largest integer seed (that of ``--seed``, which torch's generators take)
MAX_SEED = 2**63 - 1


def check_params(model: Any) -> None:
    """Refuse bad constructor parameters of a recommender before it trains."""
    check_real("max_norm", model.max_norm, 0.0, low_open=True,
               what="a radius (the ball every embedding is kept in)")
    for name in ("dim", "n_negatives", "epochs", "batch_size"):
        check_int_param(name, getattr(model, name), 1)
    margin = model.margin
    if (isinstance(margin, bool) or not isinstance(margin, numbers.Real)
            or not 0.0 < float(margin) < math.inf):
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}: it is "
                         "how much farther than a user's items the sampled negatives are "
                         "pushed (with margin <= 0 the hinge is almost always 0 and "
                         "little is learned); use e.g. 0.5 or 1.0")
    check_real("feature_weight", model.feature_weight, 0.0, math.inf, high_open=True,
               what="a finite weight (of the item-feature loss)")
    check_real("lr", model.lr, 0.0, math.inf, low_open=True, high_open=True,
               what="a finite learning rate")
    if model.schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {model.schedule!r}")
    check_seed_param(model.random_state)


def check_seed_param(random_state: Any) -> None:
    """Refuse a ``random_state`` that is not None, a :class:`numpy.random.RandomState` or
    an integer seed (from 0 to ``2**63 - 1``, the range of ``--seed``)."""
    if is_int(random_state):
        ok = 0 <= random_state <= MAX_SEED
    else:
        ok = random_state is None or isinstance(random_state, np.random.RandomState)
    if not ok:
        raise ValueError(f"random_state must be None, an integer in [0, 2**63) or a numpy "
                         f"RandomState, got {random_state!r} ({type(random_state).__name__})")


def ids(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D array of ids: integers (signed), floats or strings."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "O":
        arr = _numeric_objects(arr)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN")
    if arr.dtype.kind == "b":
        raise TypeError(f"{name} must be ids (strings or integers), got booleans")
    if arr.dtype.kind == "u" and (not arr.size or arr.max() <= np.iinfo(np.int64).max):
        arr = arr.astype(np.int64)  # signed, so that -1 can pad a recommendation list
    if arr.dtype.kind not in "iufUS":  # objects, mixed types, huge unsigned: as strings
        arr = arr.astype(str)
    return arr


def _numeric_objects(arr: np.ndarray) -> np.ndarray:
    """An object array of integers as int64, of real numbers as float64 (as a pandas
    column of numbers holds them, sorted by value as ``np.unique`` sorts it); other object
    arrays (strings, bools, mixed types, integers beyond int64) unchanged."""
    values = arr.tolist()
    if not values or any(isinstance(v, (bool, np.bool_)) for v in values):
        return arr
    if all(is_int(v) for v in values):
        limits = np.iinfo(np.int64)
        return (arr.astype(np.int64) if all(limits.min <= v <= limits.max for v in values)
                else arr)
    if all(isinstance(v, numbers.Real) for v in values):
        return arr.astype(np.float64)
    return arr


def float_rows(values: Any, name: str) -> np.ndarray:
    """``values`` as a float32 array: sparse matrices, text and float64 values beyond
    float32's range refused with one line naming ``name``."""
    from dmlkit.apps.embedding import check_finite_rows, check_float32_range, dense_array

    try:
        x = dense_array(values)
    except TypeError as err:
        raise TypeError(f"{name}: {err}") from None
    check_real_inputs(x, "", name)
    check_finite_rows(x, name)
    check_float32_range(x, name)
    return x.astype(np.float32)


def check_not_padding(items: np.ndarray, name: str) -> None:
    """Refuse item ids equal to the padding of :meth:`CMLRecommender.recommend`."""
    text = items.dtype.kind in "US"
    if (items == (items.dtype.type() if text else -1)).any():
        raise ValueError(
            f"{name} hold {'an empty id' if text else 'the id -1'}, the value that pads "
            "recommendation lists shorter than k (the item would be taken for padding): "
            "give that item another id")


__all__ = ["MAX_SEED", "check_not_padding", "check_params", "check_seed_param", "float_rows",
           "id_key", "ids"]
