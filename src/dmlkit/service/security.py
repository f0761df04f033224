"""API keys (stored hashed, compared in constant time) and a per-key rate limit."""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from pathlib import Path

from dmlkit.service.limits import check_at_least_one, check_rate

ENV_KEYS = "DMLKIT_API_KEYS"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


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
            return cls(path.read_text(encoding="utf-8-sig").splitlines())
        return cls(os.environ.get(ENV_KEYS, "").split(","))

    def check(self, key: str | None) -> bytes | None:
        """The digest of ``key`` when it is accepted, else None."""
        if not key:
            return None
        digest = _digest(key)
        ok = False
        for stored in self._digests:
            ok |= hmac.compare_digest(digest, stored)
        return digest if ok else None


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


__all__ = ["ApiKeys", "RateLimiter", "ENV_KEYS"]
