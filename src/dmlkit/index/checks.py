"""Argument checks of the index surface: plain numbers, chunk sizes, per-item sequences and
JSON headers, each refusal naming the parameter and the value it got."""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

import numpy as np


def finite_number(value: Any, name: str) -> float:
    """``value`` as a float when it is a real, finite number (an int, a float or a numpy
    scalar; not a bool, a string or None), else a ``TypeError`` / ``ValueError`` naming
    ``name`` and the value."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return out


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int when it is an integer ``>= 1`` (not a bool, nor a float such
    as ``1.5`` or ``2.0``), else a ``TypeError`` / ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def per_item(values: Any, name: str) -> Any:
    """Refuse a ``str`` / ``bytes`` given as ``name``, a sequence of one value per item
    (a string would be taken apart into its characters); anything else passes."""
    if isinstance(values, (str, bytes, bytearray)):
        raise TypeError(
            f"{name} must be a sequence of one value per item (e.g. a list), "
            f"got the {type(values).__name__} {values!r}: wrap a single "
            f"item's value in a list"
        )
    return values


def json_text(value: Any, name: str, *, allow_nan: bool = False, **dumps: Any) -> str:
    """``value`` as JSON text, strict unless ``allow_nan`` (no ``NaN`` / ``Infinity``), or
    a ``TypeError`` / ``ValueError`` naming ``name`` when it is not plain JSON (with
    finite numbers)."""
    try:
        return json.dumps(value, allow_nan=allow_nan, **dumps)
    except (TypeError, ValueError) as err:
        finite = (
            "" if allow_nan else (" with finite numbers (use null or a string for NaN or infinity)")
        )
        raise type(err)(f"{name} must be plain JSON{finite}: {err}") from None


__all__ = ["finite_number", "json_text", "per_item", "positive_int"]
