"""What a refused request is told: validation errors, few and without the input, and
the checks that JSON metadata can be stored and sent back (finite numbers, valid
Unicode, bounded nesting)."""

from __future__ import annotations

import json
import math
import reprlib
import sys
from typing import Any

#: most validation errors one 422 lists (the rest are counted)
SHOWN_ERRORS = 3
#: longest refused scalar (a short string, a number) a validation error repeats back
ECHO_CHARS = 200
_PLAIN = (str, int, bool, type(None))
#: deepest nesting of lists and objects one item's metadata may have
MAX_METADATA_DEPTH = 32
#: deepest nesting of lists one batch of rows may have (a batch of images: 4)
MAX_ROWS_DEPTH = 32
#: what a body nested deeper than the JSON parser follows is told (a 422)
TOO_DEEP = ("the body nests lists or objects too deeply to be read; rows are lists of "
            f"numbers (at most {MAX_ROWS_DEPTH} levels deep): flatten it")


def unreadable_body(err: ValueError) -> str:
    """What a JSON body the parser could not read is told (a 422), from its error."""
    if isinstance(err, UnicodeDecodeError):
        return (f"the body is not valid UTF-8 JSON ({str(err)[:ECHO_CHARS]}); send the JSON "
                "text encoded as UTF-8")
    text = str(err)
    if "digits" in text and "integer" in text:
        limit = sys.get_int_max_str_digits()
        return (f"a number in the body has more than {limit} digits; send numbers of at most "
                "about 1e308 (written with an exponent)")
    return f"the body cannot be read as JSON ({text[:ECHO_CHARS]}); send a JSON object"


def not_stored(what: str, err: OSError) -> str:
    """What a write the service could not log is told (a 503): nothing was changed."""
    return (f"{what}: the write was not stored, as the server could not write its log "
            f"({str(err)[:ECHO_CHARS]}); nothing changed, retry once the server's disk is "
            "fixed")


def echo(value: Any) -> str:
    """``repr(value)`` cut to about :data:`ECHO_CHARS` characters (``...`` says where), so
    a refusal that names a value never sends a large input back."""
    text = _REPR.repr(value)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "..."


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = ECHO_CHARS
_REPR.maxlevel = 3


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
    if out["type"] == "extra_forbidden" and out["loc"]:
        out["msg"] = (f"unknown field {out['loc'][-1]!r}; check its spelling against the "
                      "request schema (GET /openapi.json)")
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


def depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels deep (a scalar
    is 0 levels, ``[]`` one); walked without recursion, stopping at the first too deep."""
    stack: list[tuple[int, Any]] = [(0, value)]
    while stack:
        depth, item = stack.pop()
        if isinstance(item, (list, dict)):
            if depth + 1 > limit:
                return True
            stack.extend((depth + 1, v) for v in (item.values() if isinstance(item, dict)
                                                   else item))
    return False


def metadata_problem(value: Any) -> str | None:
    """Why one item's metadata could not be stored and sent back as JSON (NaN or
    infinite numbers, text that is not valid Unicode, nesting deeper than
    :data:`MAX_METADATA_DEPTH`), as the rest of a sentence; None when it can."""
    if depth_over(value, MAX_METADATA_DEPTH):
        return (f" nests lists and objects more than {MAX_METADATA_DEPTH} levels deep; "
                "flatten it")
    if (where := non_finite_at(value)) is not None:
        return (f"{where} is NaN or infinite; metadata is JSON and holds finite numbers only "
                "(send null or a string instead)")
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return (" holds text that is not valid Unicode (a lone surrogate such as \\ud800); "
                "send valid UTF-8 strings")
    except (ValueError, TypeError, RecursionError) as err:
        return f" cannot be written as JSON ({str(err)[:ECHO_CHARS]}); send plain JSON values"
    return None


__all__ = ["ECHO_CHARS", "MAX_METADATA_DEPTH", "MAX_ROWS_DEPTH", "SHOWN_ERRORS", "TOO_DEEP",
           "depth_over", "echo", "metadata_problem", "non_finite_at", "not_stored",
           "unreadable_body", "validation_detail"]
