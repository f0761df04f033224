"""API keys (stored hashed, compared in constant time) and a per-key rate limit."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers

from dmlkit.service.limits import check_at_least_one, check_rate

ENV_KEYS = "DMLKIT_API_KEYS"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_problem(key: str) -> str | None:
    """Why ``key`` (a stripped line of a keys file; blank and ``#`` lines are no keys)
    could never be sent in an HTTP header, as the rest of a sentence; None when it can."""
    if not key or key.startswith("#") or (key.isascii() and key.isprintable()):
        return None
    return ("holds characters that are not printable ASCII (a client sends the key in an "
            "HTTP header, which carries only those): use a key of letters, digits and "
            "punctuation")


class ApiKeys:
    """The accepted keys, kept only as SHA-256 digests.

    ``check`` hashes the presented key and compares it with every stored digest by
    :func:`hmac.compare_digest`, without stopping at a match, so the time taken says
    nothing about which key (or how much of one) matched.
    """

    def __init__(self, keys: list[str]) -> None:
        keys = [k.strip() for k in keys if k.strip() and not k.strip().startswith("#")]
        if not keys:
            raise ValueError(
                "no API keys: give --api-keys-file FILE (one key per line) or set "
                f"{ENV_KEYS} (comma-separated); the service never runs open"
            )
        for number, key in enumerate(keys, 1):
            if (problem := key_problem(key)) is not None:
                raise ValueError(f"API key number {number} {problem}")
        short = [k for k in keys if len(k) < 16]
        if short:
            raise ValueError(f"{len(short)} API key(s) shorter than 16 characters; use long "
                             "random keys (e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))')")
        self._digests = [_digest(k) for k in keys]

    @classmethod
    def from_sources(cls, keys_file: str | Path | None) -> ApiKeys:
        if keys_file is not None:
            path = Path(keys_file)
            if not path.is_file():
                raise FileNotFoundError(f"API keys file not found: {path}")
            # utf-8-sig: a leading byte-order mark (some editors write one) is not a key
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            for number, line in enumerate(lines, 1):
                if (problem := key_problem(line.strip())) is not None:
                    raise ValueError(f"{path} line {number}: the API key {problem}")
            return cls(lines)
        entries = os.environ.get(ENV_KEYS, "").split(",")
        for number, entry in enumerate(entries, 1):
            if (problem := key_problem(entry.strip())) is not None:
                raise ValueError(f"{ENV_KEYS} entry {number}: the API key {problem}")
        return cls(entries)

    def check(self, key: str | None) -> bytes | None:
        """The digest of ``key`` when it is accepted, else None."""
        if not key:
            return None
        digest = _digest(key)
        ok = False
        for stored in self._digests:
            ok |= hmac.compare_digest(digest, stored)
        return digest if ok else None


#: where :class:`KeyGate` leaves the digest of an accepted key (``scope[DIGEST]``)
DIGEST = "dmlkit.key_digest"
UNAUTHORIZED = "missing or wrong API key (Authorization: Bearer KEY)"


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``Authorization: Bearer KEY``, else ``X-API-Key``."""
    header = headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else None
    return key or headers.get("x-api-key")


class KeyGate:
    """ASGI middleware: a request to a route that needs a key (``needs_key(scope)``) is
    checked for its key and its key's rate limit from its headers alone, before any of
    its body is read, so a request without a key is a 401 whatever it sends (and a
    limited key's body is never parsed). ``on_refuse(scope, status, seconds)`` is called
    for each refusal sent here; an accepted key's digest is left in ``scope[DIGEST]``."""

    def __init__(self, app: Any, keys: ApiKeys, limiter: RateLimiter,
                 needs_key: Callable[[dict], bool],
                 on_refuse: Callable[[dict, int, float], None] | None = None) -> None:
        self.app, self.keys, self.limiter = app, keys, limiter
        self.needs_key, self.on_refuse = needs_key, on_refuse

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.needs_key(scope):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        digest = self.keys.check(presented_key(Headers(scope=scope)))
        if digest is None:
            await self._refuse(scope, send, start, 401, UNAUTHORIZED,
                               [(b"www-authenticate", b"Bearer")])
            return
        wait = self.limiter.take(digest)
        if wait > 0:
            retry = str(max(1, math.ceil(wait))).encode()
            await self._refuse(scope, send, start, 429, "rate limit exceeded for this key; "
                               "retry later", [(b"retry-after", retry)])
            return
        scope[DIGEST] = digest
        await self.app(scope, receive, send)

    async def _refuse(self, scope: dict, send: Any, start: float, status: int, detail: str,
                      headers: list[tuple[bytes, bytes]]) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})
        if self.on_refuse is not None:
            self.on_refuse(scope, status, time.perf_counter() - start)


class RateLimiter:
    """Token bucket per key: ``rate`` requests per second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        check_rate(rate)
        check_at_least_one(burst, name="burst")
        self.rate, self.burst = float(rate), int(burst)
        self._buckets: dict[bytes, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: bytes) -> float:
        """Spend one of ``key``'s tokens: 0.0 when there was one (the request may go on),
        else the seconds until the next one (nothing is spent)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return 0.0 if allowed else (1.0 - tokens) / self.rate

    def allow(self, key: bytes) -> bool:
        """Spend one of ``key``'s tokens; False when it has none (see :meth:`take`)."""
        return self.take(key) == 0.0


__all__ = ["ApiKeys", "DIGEST", "ENV_KEYS", "KeyGate", "RateLimiter", "key_problem",
           "presented_key"]
