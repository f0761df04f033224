"""What the OpenAPI schema says of the service beyond its request bodies: the API key
(a bearer token or an ``X-API-Key`` header) and the refusals each route can answer with,
each a JSON object ``{"detail": ...}``."""

from __future__ import annotations

from typing import Any

from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel

#: the key as ``Authorization: Bearer KEY`` (the scheme the schema declares)
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="an API key of the service (--api-keys-file, DMLKIT_API_KEYS)",
)
#: the key as ``X-API-Key: KEY``
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKey",
    description="the same API key, in a header of its own",
)


class Refusal(BaseModel):
    """A refused request: why, in one line."""

    detail: str


class InvalidRequest(BaseModel):
    """A refused body: one line, or the first few validation errors (type, loc, msg)."""

    detail: str | list[dict[str, Any]]


REFUSALS: dict[int, str] = {
    401: "missing or wrong API key",
    404: "no such item",
    409: "the index or the service cannot do this (e.g. a delete on an HNSW index, no "
    "verification threshold)",
    413: "the body, the batch or the response (rows times k) is over the service's limit",
    415: "the body is not sent as JSON (Content-Type: application/json)",
    422: "the request is invalid (the detail says what is wrong), or its body cannot be "
    "read as JSON (not UTF-8, an integer of over 4300 digits, nested too deeply)",
    429: "rate limit exceeded for this key; the Retry-After header says when to retry",
    503: "the write was not stored (the server could not write its log, e.g. a full "
    "disk); nothing changed, retry later",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that needs the key (401, 429) and answers ``codes``."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({401, 429, *codes}):
        entry: dict[str, Any] = {
            "model": InvalidRequest if code == 422 else Refusal,
            "description": REFUSALS[code],
        }
        if code == 429:
            entry["headers"] = {
                "Retry-After": {
                    "description": "seconds until this key may send a request again",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        out[code] = entry
    return out


__all__ = ["API_KEY_HEADER", "BEARER", "InvalidRequest", "REFUSALS", "Refusal", "refusals"]
