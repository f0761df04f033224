"""The rules for the limits a service instance runs under, one place for each.

:class:`~dmlkit.service.ServiceConfig`, :class:`~dmlkit.service.RateLimiter`,
:class:`~dmlkit.service.DurableIndex` and ``dmlkit serve`` all check their settings here.
Each check raises a one-line ``ValueError`` naming the setting as its caller spells it
(``name``: a keyword argument, a config field or a command-line option) and, where the
caller words it otherwise, what it must be (``rule``).
"""

from __future__ import annotations

import math
from typing import Any

from dmlkit._checks import is_int


def check_rate(rate: Any, *, name: str = "rate",
               rule: str = "> 0 (a finite number of requests per second)") -> None:
    """Refuse a request rate that is not a finite number above 0."""
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"{name} must be {rule}, got {rate}")


def check_at_least_one(value: Any, *, name: str) -> None:
    """Refuse a count limit (a burst, a batch, a body size) below 1, which would refuse
    every request, or that is not a whole number (a fraction of a request means nothing)."""
    if not is_int(value):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def check_threshold(value: Any, *, name: str,
                    rule: str = "a finite number or None") -> None:
    """Refuse a score threshold that is given and not finite."""
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be {rule}, got {value}")


def check_checkpoint_every(
    value: Any, *, name: str = "checkpoint_every",
    rule: str = "an integer >= 1 (1: a checkpoint after every write)",
) -> None:
    """Refuse a number of writes between checkpoints that is not an integer >= 1."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


__all__ = ["check_at_least_one", "check_checkpoint_every", "check_rate", "check_threshold"]
