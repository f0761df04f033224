"""What a refused request is told: validation errors, few and without the input, and
the check that JSON metadata holds finite numbers only."""

from __future__ import annotations

import math
from typing import Any

#: most validation errors one 422 lists (the rest are counted)
SHOWN_ERRORS = 3
#: longest refused scalar (a short string, a number) a validation error repeats back
ECHO_CHARS = 200
_PLAIN = (str, int, bool, type(None))


def validation_detail(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first :data:`SHOWN_ERRORS` of pydantic's ``errors`` as JSON-safe dicts (type,
    loc, msg, ctx), plus one entry counting the rest. A refused input comes back only when
    it is a short, finite scalar: never a list, an object, a long string or a NaN."""
    out = [_brief(e) for e in errors[:SHOWN_ERRORS]]
    if len(errors) > SHOWN_ERRORS:
        more = len(errors) - SHOWN_ERRORS
        out.append({"type": "more_errors", "loc": [], "msg": f"and {more} more error"
                    f"{'s' if more > 1 else ''} like these (fix the ones above first)"})
    return out


def _brief(error: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": str(error.get("type", "")),
                           "loc": [p if isinstance(p, int) else str(p)
                                   for p in error.get("loc", ())],
                           "msg": str(error.get("msg", ""))}
    ctx = error.get("ctx")
    if isinstance(ctx, dict):
        out["ctx"] = {str(k): v if _echoable(v) else str(v)[:ECHO_CHARS]
                      for k, v in ctx.items()}
    if "input" in error and _echoable(error["input"]):
        out["input"] = error["input"]
    return out


def _echoable(value: Any) -> bool:
    """A scalar that is short and valid JSON (a finite number, a short string)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= ECHO_CHARS
    return isinstance(value, _PLAIN)


def non_finite_at(value: Any) -> str | None:
    """Where inside ``value`` (nested lists and dicts) the first NaN or infinite number
    is, as ``"" `` (the value itself), ``".x"`` or ``"[2].y"``; None when there is none."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where
        if isinstance(item, dict):
            stack.extend((f"{where}.{k}", v) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None


__all__ = ["ECHO_CHARS", "SHOWN_ERRORS", "non_finite_at", "validation_detail"]
