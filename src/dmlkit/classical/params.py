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

import numpy as np

from dmlkit._checks import check_int_param, check_real, is_int

#: :func:`dmlkit._checks.check_real` under its former name here, for code that imports it
#: from this module (the learners call ``check_real`` itself)
check_real_param = check_real


#: the text spellings of the non-finite floats that :func:`real_from_text` reads back:
#: ``metric.json`` writes an infinite parameter as ``"inf"`` / ``"-inf"`` (strict JSON has
#: no infinity) and a command line's ``-p gamma=inf`` arrives as the string ``"inf"``
NON_FINITE_TEXT = frozenset({"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity",
                             "nan"})


def real_from_text(value: Any) -> Any:
    """``value`` as a float when it is a text spelling of infinity or NaN (``"inf"``,
    ``"-inf"``, ``"nan"``, any case), else ``value`` unchanged.

    For parameters read from text (``metric.json``, ``--param``) where a real number is
    expected: it undoes how :func:`dmlkit.classical.frozen.to_json` writes a non-finite
    float, so a saved learner refits with the parameters it was fitted with. The learner's
    own check then accepts or refuses the number (``gamma=inf`` is allowed, ``tol=inf``
    is not).
    """
    if isinstance(value, str) and value.strip().lower() in NON_FINITE_TEXT:
        return float(value.strip())
    return value


def check_solver_params(max_iter: Any, tol: Any) -> tuple[int, float]:
    """``(max_iter, tol)`` of an iterative solver: at least one iteration, and a finite
    tolerance ``>= 0`` (a negative or NaN one never stops the solver early)."""
    return (check_int_param("max_iter", max_iter, 1),
            check_real("tol", tol, 0.0, math.inf, high_open=True))


#: the seeds :func:`check_random_state_seed` passes on: numpy's ``RandomState`` range
SEED_LIMIT = 2**32


def check_target_far(target_far: Any) -> float | None:
    """A kit's ``target_far`` as a float in ``(0, 1)``, or None; anything else (text
    such as ``"0.1"`` included) a ``ValueError`` naming ``target_far``."""
    if target_far is None:
        return None
    try:
        return check_real("target_far", target_far, 0.0, 1.0, low_open=True, high_open=True)
    except ValueError:
        raise ValueError(f"target_far must be a number in (0, 1) (the false-accept rate to "
                         f"reach) or None, got {target_far!r} ({type(target_far).__name__})"
                         ) from None


def check_random_state_param(random_state: Any) -> None:
    """Refuse a ``random_state`` that is not None, an integer in ``[0, 2**32)`` or a
    :class:`numpy.random.RandomState` (a ``ValueError`` naming it); draws nothing."""
    if is_int(random_state):
        if not 0 <= random_state < SEED_LIMIT:
            raise ValueError(f"random_state must be None, an integer in [0, 2**32) or a "
                             f"numpy RandomState, got {random_state!r}")
    elif random_state is not None and not isinstance(random_state, np.random.RandomState):
        raise ValueError(f"random_state must be None, an integer in [0, 2**32) or a numpy "
                         f"RandomState, got {random_state!r} ({type(random_state).__name__})")


def check_random_state_seed(random_state: Any) -> int:
    """An integer seed from a learner's ``random_state``, scikit-learn's three kinds.

    An integer in ``[0, 2**32)`` is the seed itself; ``None`` (numpy's global random
    state) or a :class:`numpy.random.RandomState` gives a seed drawn from it, so one
    ``fit`` uses one seed for all its random steps. Anything else (bools, floats, text,
    negative integers) is a ``ValueError`` naming ``random_state``.
    """
    from sklearn.utils import check_random_state

    check_random_state_param(random_state)
    if is_int(random_state):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


__all__ = ["NON_FINITE_TEXT", "SEED_LIMIT", "check_random_state_param",
           "check_random_state_seed", "check_real_param", "check_solver_params",
           "check_target_far", "real_from_text"]
