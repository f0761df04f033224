"""Checks of the learners' numeric parameters, one rule for every learner.

scikit-learn's contract: ``__init__`` stores parameters as given, and ``fit`` refuses a bad
one with a ``ValueError`` naming it, its value and its type. Integers follow
:func:`dmlkit._checks.check_int_param` (Python and numpy integers; bools and floats such as
``2.5`` or ``True`` are refused, never truncated); real numbers follow
:func:`dmlkit._checks.check_real` (Python / numpy ints or floats, not bools, not NaN,
inside the parameter's interval).
"""

from __future__ import annotations

import math
from typing import Any

from dmlkit._checks import check_int_param, check_real

#: :func:`dmlkit._checks.check_real` under its former name here, for code that imports it
#: from this module (the learners call ``check_real`` itself)
check_real_param = check_real


def check_solver_params(max_iter: Any, tol: Any) -> tuple[int, float]:
    """``(max_iter, tol)`` of an iterative solver: at least one iteration, and a finite
    tolerance ``>= 0`` (a negative or NaN one never stops the solver early)."""
    return (check_int_param("max_iter", max_iter, 1),
            check_real("tol", tol, 0.0, math.inf, high_open=True))


__all__ = ["check_real_param", "check_solver_params"]
