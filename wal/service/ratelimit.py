"""``RateLimiter``: at most N new orders per minute per trader (a token bucket each).

A bucket holds up to N tokens and refills at N per 60 s; a new order takes one. When it is
empty the caller is told how many seconds until the next token (``Retry-After``). A retry of
a known ``Idempotency-Key`` takes no token: it places no order. An order the service refused
for a reason of its own before journaling it (halted, the log or the database down) gives
its token back (``give_back``): the trader placed nothing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Per-trader token buckets; ``take(trader)`` returns 0 (allowed) or seconds to wait."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be >= 1, got {per_minute}")
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # trader -> (tokens, at)

    def take(self, trader: str) -> int:
        """Take a token: 0 if allowed, else the whole seconds until one is available."""
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(trader, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * self._rate)
            if tokens >= 1.0:
                self._buckets[trader] = (tokens - 1.0, now)
                return 0
            self._buckets[trader] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self._rate))

    def give_back(self, trader: str) -> None:
        """Return a token taken for an order that was not placed (never above the cap)."""
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(trader, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * self._rate)
            self._buckets[trader] = (min(float(self.per_minute), tokens + 1.0), now)
