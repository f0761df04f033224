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

from dmlkit._checks import check_int_param, check_real, is_number_text

#: :func:`dmlkit._checks.check_real` under its former name here, for code that imports it
#: from this module (the learners call ``check_real`` itself)
check_real_param = check_real


#: the text spellings of the non-finite floats that :func:`real_from_text` reads back:
#: ``metric.json`` writes an infinite parameter as ``"inf"`` / ``"-inf"`` (strict JSON has
#: no infinity) and a command line's ``-p gamma=inf`` arrives as the string ``"inf"``
NON_FINITE_TEXT = frozenset({"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity",
                             "nan"})


def real_from_text(value: Any) -> Any:
    """``value`` as a float when it is text that reads as a number: a text spelling of
    infinity or NaN (``"inf"``, ``"-inf"``, ``"nan"``, any case) or a number such as
    ``"1e-3"`` (which YAML 1.1, and so ``--param tol=1e-3``, leaves a string); else
    ``value`` unchanged.

    For parameters read from text (``metric.json``, ``--param``) where a real number is
    expected: it undoes how :func:`dmlkit.classical.frozen.to_json` writes a non-finite
    float, so a saved learner refits with the parameters it was fitted with, and reads
    scientific notation as ``dmlkit train --set`` does. The learner's own check then
    accepts or refuses the number (``gamma=inf`` is allowed, ``tol=inf`` is not).
    """
    if isinstance(value, str) and (value.strip().lower() in NON_FINITE_TEXT
                                   or is_number_text(value)):
        return float(value.strip())
    return value


def check_solver_params(max_iter: Any, tol: Any) -> tuple[int, float]:
    """``(max_iter, tol)`` of an iterative solver: at least one iteration, and a finite
    tolerance ``>= 0`` (a negative or NaN one never stops the solver early)."""
    return (check_int_param("max_iter", max_iter, 1),
            check_real("tol", tol, 0.0, math.inf, high_open=True))


__all__ = ["NON_FINITE_TEXT", "check_real_param", "check_solver_params", "real_from_text"]
