"""Argument checks of the index surface: per-item sequences and JSON headers, each refusal
naming the parameter and the value it got."""

from __future__ import annotations

import json
from typing import Any


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


__all__ = ["json_text", "per_item"]
