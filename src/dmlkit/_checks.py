"""Numeric settings checked where an object is built, one rule for every layer.

Integers (sizes, counts, seeds): Python and numpy integers pass, bools and floats (even
``4.0``) do not. Real numbers (rates, tolerances, weights): Python and numpy integers and
floats pass, bools, complex numbers and NaN do not, and the value must lie in the
setting's interval (infinity only where that interval is closed at an infinite end).
Input arrays (features, embeddings, raw queries) hold real numbers: a bool, integer or
float dtype, never complex numbers, strings or objects.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def first_few(items: Any, limit: int = 5) -> str:
    """``items`` joined by commas for a message: the first ``limit``, then ``...`` when
    there are more."""
    items = list(items)
    return ", ".join(str(v) for v in items[:limit]) + (", ..." if len(items) > limit else "")


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number_text(text: str) -> bool:
    """Whether the text field ``text`` (of a CSV line) reads as a number (``float``)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


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


def check_real(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
               low_open: bool = False, high_open: bool = False,
               what: str = "a real number") -> float:
    """``value`` as a Python ``float`` in the interval from ``low`` to ``high`` (closed
    unless ``low_open`` / ``high_open``), else a ``ValueError`` naming ``name``, the
    interval, the value and its type: ``"tol must be a real number in [0, inf), got -1
    (int)"``.

    Python and numpy integers and floats pass; bools, complex numbers, strings and NaN do
    not. An infinite bound admits infinity only when it is closed (``high=math.inf`` with
    ``high_open=False`` accepts ``inf``). ``what`` says what the number is (``"a
    recall"``); ``""`` leaves it out (``"far must be in (0, 1), got ..."``).
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    ok = ok and not math.isnan(v)
    ok = ok and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {what + ' ' if what else ''}in {interval}, got "
                         f"{value!r} ({type(value).__name__})")
    return v


def check_real_inputs(x: np.ndarray, source: str, subject: str, hint: str = "") -> None:
    """A ``TypeError`` unless array ``x`` holds real numbers (a bool, integer or float
    dtype): the one rule for input arrays, read from files or handed to the library.

    The message names ``source`` (the file; ``""`` leaves it out), ``subject`` (the array:
    ``"'x'"``, ``"the features"``, ``"embeddings"``) and its dtype; complex numbers get
    the way to make them real, strings and other non-numbers ``hint`` (what to check,
    e.g. which array is read): ``"f.npz: 'x' must be real numbers, got dtype <U1
    (strings)"``.
    """
    kind = x.dtype.kind
    if kind in "biuf":
        return
    what = ("complex numbers; keep a real part (x.real, np.abs(x)) or stack the real and "
            "imaginary parts as channels" if kind == "c" else
            f"strings{hint}" if kind in "SU" else f"no numbers{hint}")
    where = f"{source}: " if source else ""
    raise TypeError(f"{where}{subject} must be real numbers, got dtype {x.dtype} ({what})")


#: what to do about non-finite rows of data handed in
FINITE_FIX = "drop those rows or fill in the missing values first"


def check_finite_rows(X: Any, source: str, fix: str = FINITE_FIX) -> None:
    """Raise a one-line ``ValueError`` naming ``source`` when the float array ``X`` ``(n,
    ...)`` holds NaN or infinite values: how many of its rows do, the first few of them,
    and ``fix`` (what to do). Arrays of other dtypes pass (their own checks say what is
    wrong with them)."""
    import numpy as np

    X = np.asarray(X)
    if X.dtype.kind not in "fc" or X.size == 0 or X.ndim == 0:
        return
    finite = np.isfinite(X).reshape(len(X), -1).all(axis=1)  # (n,)
    bad = np.flatnonzero(~finite)  # rows holding a NaN or an infinity
    if bad.size:
        shown = first_few(int(i) for i in bad)
        raise ValueError(
            f"{source} holds NaN or infinite values in {bad.size} of {len(X)} rows "
            f"({'row' if bad.size == 1 else 'rows'} {shown}); {fix}")


#: the largest finite float32: larger values become infinities when stored as float32
FLOAT32_MAX = 3.4028234663852886e38


def check_float32_range(X: Any, source: str,
                        fix: str = "rescale them (e.g. L2-normalize) first") -> None:
    """Raise a one-line ``ValueError`` naming ``source`` and the rows when the float
    array ``X`` ``(n, ...)`` holds finite values beyond the float32 range (``|v| >
    3.4e38``, e.g. float64 ``1e39``), which become infinities where they are computed or
    stored in float32; ``fix`` says what to do. Non-finite values are left to
    :func:`check_finite_rows`. One pass over ``X`` when nothing is wrong."""
    import numpy as np

    X = np.asarray(X)
    if X.dtype.kind != "f" or X.dtype.itemsize <= 4 or not X.size or X.ndim == 0:
        return
    magnitude = np.abs(X)
    finite = np.isfinite(magnitude)
    if float(np.max(magnitude, where=finite, initial=0.0)) <= FLOAT32_MAX:
        return
    big = finite & (magnitude > FLOAT32_MAX)
    bad = np.flatnonzero(big.reshape(len(X), -1).any(axis=1))
    top = float(magnitude[big].max())
    raise ValueError(
        f"{source} holds values that overflow float32 (|value| up to {top:.3g} > "
        f"{FLOAT32_MAX:.3g}, beyond float32's range) in {bad.size} of {len(X)} rows "
        f"({'row' if bad.size == 1 else 'rows'} {first_few(int(i) for i in bad)}); {fix}")


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
    import numpy as np

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
    import numpy as np
    from sklearn.utils import check_random_state

    check_random_state_param(random_state)
    if is_int(random_state):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


__all__ = ["FINITE_FIX", "FLOAT32_MAX", "SEED_LIMIT", "check_finite_rows",
           "check_float32_range", "check_int", "check_int_param", "check_random_state_param",
           "check_random_state_seed", "check_real", "check_real_inputs", "check_target_far",
           "first_few", "is_int", "is_number_text"]
