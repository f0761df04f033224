"""Checks of the integer sizes, rates and switches a model constructor takes (``dim``,
``width``, ``hidden``, ``dropout``, ``normalize``), so an impossible value is an error naming
the parameter when the model is built, not a silent 0-dim embedding, a string read by its
truthiness or a torch error at the first batch."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from dmlkit._checks import check_int_param


def check_size(model: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``.

    Raises
    ------
    ValueError
        Naming ``model``, the parameter and the value.
    """
    return check_int_param(f"{model}: {name}", value, minimum)


def check_sizes(
    model: str, name: str, values: Any, minimum: int = 1, allow_empty: bool = True
) -> tuple[int, ...]:
    """``values`` (a sequence of ints, e.g. hidden widths) as a tuple, each ``>= minimum``."""
    if (
        isinstance(values, (str, bytes))
        or not isinstance(values, Sequence)
        or (not allow_empty and not values)
    ):
        raise ValueError(
            f"{model}: {name} must be a {'' if allow_empty else 'non-empty '}list "
            f"of integers >= {minimum}, got {values!r}"
        )
    return tuple(check_size(model, f"{name}[{i}]", v, minimum) for i, v in enumerate(values))


def check_rate(model: str, name: str, value: Any) -> float:
    """``value`` (a dropout probability) as a float in ``[0, 1)``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (math.isfinite(value) and 0 <= value < 1)
    ):
        raise ValueError(
            f"{model}: {name} must be a number in [0, 1), got {value!r} ({type(value).__name__})"
        )
    return float(value)


def check_bool(model: str, name: str, value: Any) -> bool:
    """``value`` (a switch such as ``normalize``: a Python or numpy bool) as a ``bool``.

    Raises
    ------
    TypeError
        Naming ``model``, the parameter and the value, for anything else (``"false"``, 0, 1).
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{model}: {name} must be a bool (True or False), got {value!r} "
            f"({type(value).__name__})"
        )
    return bool(value)


__all__ = ["check_bool", "check_rate", "check_size", "check_sizes"]
