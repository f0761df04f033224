"""Integer settings (sizes, counts, seeds) checked where an object is built, one rule for
every layer: Python and numpy integers pass, bools and floats (even ``4.0``) do not."""

from __future__ import annotations

import numbers
from typing import Any


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int = 1) -> int:
    """``value`` as a Python ``int``: a ``TypeError`` naming ``name`` unless it is an
    integer (:func:`is_int`), a ``ValueError`` when it is below ``low``."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_int_param(name: str, value: Any, low: int = 1) -> int:
    """``value`` as a Python ``int >= low``, else a ``ValueError`` naming ``name``, the
    value and its type: for parameters whose contract refuses every bad value with a
    ``ValueError`` (scikit-learn estimators, model constructors)."""
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r} "
                         f"({type(value).__name__})")
    return int(value)


__all__ = ["check_int", "check_int_param", "is_int"]
