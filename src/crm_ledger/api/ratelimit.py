"""Per-key rate limits: an in-process token bucket per API key, its rate set by the key's role.

Exports: `RateLimiter`, `rate_limiter`.

Each key's bucket holds up to `rate * rate_limit_burst_seconds` tokens and refills at `rate`
tokens a second (`CRM_LEDGER_RATE_LIMIT_<ROLE>`, 0 for unlimited); a request takes one token,
and a request that finds none answers 429 with `Retry-After` (whole seconds until a token is
back). The buckets live in the process: with N API processes a key may send N times its rate,
so set the limits per process. A bucket idle long enough to be full again is forgotten, so the
table holds only keys that are busy.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from fastapi import FastAPI

from crm_ledger.config import Settings
from crm_ledger.errors import TooManyRequests
from crm_ledger.journal.keys import ApiKeyPrincipal, Role

__all__ = ["RateLimiter", "rate_limiter"]

_PRUNE_EVERY = 10_000


class RateLimiter:
    """Token buckets keyed by API key id (thread-safe)."""

    def __init__(
        self,
        *,
        rates: dict[Role, float],
        burst_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rates = dict(rates)
        self.burst_seconds = burst_seconds
        self._now = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._takes = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """The limits the settings give each role."""
        return cls(
            rates={
                Role.RECORDER: settings.rate_limit_recorder,
                Role.AUDITOR: settings.rate_limit_auditor,
                Role.MARKETING: settings.rate_limit_marketing,
                Role.ADMIN: settings.rate_limit_admin,
            },
            burst_seconds=settings.rate_limit_burst_seconds,
        )

    def take(self, key: ApiKeyPrincipal) -> None:
        """Take one token from `key`'s bucket; raises `TooManyRequests` when it is empty."""
        rate = self.rates.get(key.role, 0.0)
        if rate <= 0:
            return
        capacity = max(1.0, rate * self.burst_seconds)
        now = self._now()
        with self._lock:
            tokens, last = self._buckets.get(key.id, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key.id] = (tokens - 1.0, now)
                self._prune(now)
                return
            self._buckets[key.id] = (tokens, now)
        retry_after = max(1, math.ceil((1.0 - tokens) / rate))
        raise TooManyRequests(
            f"this key sent more than its limit of {rate:g} requests a second (role "
            f"{key.role}); retry after {retry_after} s, or ask an operator for a higher "
            f"CRM_LEDGER_RATE_LIMIT_{key.role.upper()}",
            retry_after=retry_after,
        )

    def _prune(self, now: float) -> None:
        """Every so often, forget buckets idle long enough to be full again."""
        self._takes += 1
        if self._takes % _PRUNE_EVERY:
            return
        idle = self.burst_seconds
        for key_id in [k for k, (_, last) in self._buckets.items() if now - last > idle]:
            del self._buckets[key_id]


def rate_limiter(app: FastAPI) -> RateLimiter:
    """The app's rate limiter (made by `crm_ledger.api.install`)."""
    limiter = app.state.rate_limiter
    assert isinstance(limiter, RateLimiter)
    return limiter
