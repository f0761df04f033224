"""Integer settings of the batch samplers, checked when a sampler is built: a float
``batch_size`` would otherwise fail only at the first batch, as a slice error."""

from __future__ import annotations

from typing import Any

import numpy as np

#: the warning both samplers give when every batch holds a single class
ONE_CLASS_BATCHES = (
    "so no batch holds a negative pair: pair, triplet and tuple losses learn nothing "
    "(their loss is 0 every batch, or only pulls items together); only losses whose "
    "class weights or proxies supply the negatives (normalized_softmax, proxy_anchor, "
    "arcface, ...) or a cross_batch_memory learn; put at least two classes in a batch"
)


def check_int(name: str, value: Any, low: int) -> int:
    """``value`` as an ``int``: a ``TypeError`` unless it is an integer (not a bool, not
    a float such as ``4.0``), a ``ValueError`` when it is below ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


__all__ = ["ONE_CLASS_BATCHES", "check_int"]
