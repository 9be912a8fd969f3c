"""The circuit breaker and the backoff that protect a database that is down.

``CircuitBreaker`` (closed -> open after ``failure_threshold`` consecutive connection failures ->
half-open after ``cooldown`` seconds, where one probe is let through -> closed on its success,
open again on its failure). The same breaker is shared by ``WALManager.write`` and the sync
thread, so that while the database is down trading does not wait on a connection timeout for
every operation: entries go to the log and return at once.

``backoff_delay`` is exponential backoff with full jitter (AWS architecture blog, "Exponential
Backoff And Jitter"): ``uniform(0, min(cap, base * 2**attempt))``; it spreads the reconnects of
many engines after an outage.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker", "backoff_delay"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def backoff_delay(
    attempt: int, base: float, cap: float, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based), full jitter."""
    return rng(0.0, min(cap, base * (2 ** min(attempt, 62))))


class CircuitBreaker:
    """Thread-safe. ``allow()`` before a database call, then ``success()`` or ``failure()``."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if self._state is BreakerState.OPEN and self._cooled():
                return BreakerState.HALF_OPEN
            return self._state

    def _cooled(self) -> bool:
        return self._clock() - self._opened_at >= self.cooldown

    def allow(self) -> bool:
        """True when a database call may be made now (in half-open: only one probe)."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if not self._cooled():
                    return False
                self._state = BreakerState.HALF_OPEN
                self._probe_out = False
            if self._probe_out:
                return False
            self._probe_out = True
            return True

    def success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._probe_out = False

    def failure(self) -> None:
        """A connection-level failure (not an entry's bad data)."""
        with self._lock:
            self._failures += 1
            self._probe_out = False
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                if self._state is not BreakerState.OPEN:
                    self.opened_count += 1
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()

    def seconds_until_probe(self) -> float:
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self.cooldown - (self._clock() - self._opened_at))
