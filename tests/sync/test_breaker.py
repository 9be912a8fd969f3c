"""The circuit breaker's state machine and the backoff's bounds (a manual clock drives time)."""

from __future__ import annotations

import random

from wal.sync.breaker import BreakerState, CircuitBreaker, backoff_delay


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures() -> None:
    clock = ManualClock()
    b = CircuitBreaker(failure_threshold=3, cooldown=10.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state is BreakerState.CLOSED
    b.success()  # a success resets the count: failures must be consecutive
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert b.seconds_until_probe() == 10.0


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = ManualClock()
    b = CircuitBreaker(failure_threshold=1, cooldown=5.0, clock=clock)
    b.failure()
    clock.now = 4.9
    assert not b.allow()
    clock.now = 5.0
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # the probe
    assert not b.allow()  # nobody else while it is out
    b.failure()  # probe failed: open again, cooldown restarts
    assert b.state is BreakerState.OPEN
    clock.now = 10.0
    assert b.allow()
    b.success()
    assert b.state is BreakerState.CLOSED
    assert b.allow() and b.allow()
    assert b.opened_count == 2


def test_backoff_full_jitter_bounds() -> None:
    rng = random.Random(7)
    for attempt in range(20):
        cap = min(60.0, 0.5 * 2**attempt)
        for _ in range(50):
            d = backoff_delay(attempt, 0.5, 60.0, rng.uniform)
            assert 0.0 <= d <= cap
    # the bound grows exponentially, then is capped
    assert backoff_delay(3, 0.5, 60.0, lambda lo, hi: hi) == 4.0
    assert backoff_delay(40, 0.5, 60.0, lambda lo, hi: hi) == 60.0
    assert backoff_delay(10**6, 0.5, 60.0, lambda lo, hi: hi) == 60.0
