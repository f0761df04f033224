"""Checks of the learners' numeric parameters, one rule for every learner.

scikit-learn's contract: ``__init__`` stores parameters as given, and ``fit`` refuses a bad
one with a ``ValueError`` naming it, its value and its type. Integers follow
:func:`dmlkit._checks.check_int_param` (Python and numpy integers; bools and floats such as
``2.5`` or ``True`` are refused, never truncated); real numbers are Python / numpy ints or
floats (not bools, not NaN) inside the parameter's interval.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from dmlkit._checks import check_int_param


def check_real_param(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
                     low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float in the interval from ``low`` to ``high`` (closed unless
    ``low_open`` / ``high_open``), else a ``ValueError`` naming ``name``.

    An infinite bound admits infinity only when it is closed (``high=math.inf`` with
    ``high_open=False`` accepts ``inf``).
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    ok = ok and not math.isnan(v)
    ok = ok and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a real number in {interval}, got {value!r} "
                         f"({type(value).__name__})")
    return v


def check_solver_params(max_iter: Any, tol: Any) -> tuple[int, float]:
    """``(max_iter, tol)`` of an iterative solver: at least one iteration, and a finite
    tolerance ``>= 0`` (a negative or NaN one never stops the solver early)."""
    return (check_int_param("max_iter", max_iter, 1),
            check_real_param("tol", tol, 0.0, math.inf, high_open=True))


__all__ = ["check_real_param", "check_solver_params"]
