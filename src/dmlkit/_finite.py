"""Float hyper-parameters of losses and miners (margins, scales, temperatures, weights)
must be finite: a NaN margin turns every comparison false or every loss NaN, and an
infinite scale overflows, long after the object was built."""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_finite(owner: str, name: str, value: Any, *, allow_inf: bool = False) -> None:
    """Raise a ``ValueError`` naming ``owner`` and ``name`` when ``value`` is a NaN or
    infinite real number, or a list / tuple holding one; anything else passes.

    ``allow_inf`` lets +-inf through (an open end of a range); NaN never passes.
    """
    many = isinstance(value, (list, tuple))
    for v in value if many else (value,):
        if (isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral)
                and not math.isfinite(v) and not (allow_inf and not math.isnan(v))):
            what = ("hold no NaN" if many else "not be NaN") if allow_inf else (
                "hold only finite numbers" if many else "be a finite number")
            raise ValueError(f"{owner}: {name.lstrip('_')} must {what}, got {value!r}")


__all__ = ["check_finite"]
