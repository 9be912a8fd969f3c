"""``LogHealth``: whether the service's write-ahead log failed, and what that stops.

A failure of the log itself (``WALWriteError``: a full disk, EIO on fsync) halts trading for
good, until the process is restarted on a sound disk: the order manager is halted, every
placement and cancel is refused with 503 ``log_failed``, and ``/readyz`` gives the reason.
"""

from __future__ import annotations

from wal.orders import OrderManager
from wal.service.errors import ApiError

__all__ = ["LogHealth"]


class LogHealth:
    """The log's state as the service sees it: sound, or failed (and why)."""

    def __init__(self, om: OrderManager) -> None:
        self._om = om
        self.failure: str | None = None

    def fail(self, exc: BaseException) -> None:
        """The log failed: trading halts until the process is restarted on a sound disk."""
        self.failure = str(exc)
        self._om.halt(f"the write-ahead log failed: {exc}")

    def check(self) -> None:
        """Raise the service's 503 when the log failed."""
        if self.failure is not None:
            raise ApiError(503, "log_failed", f"the write-ahead log failed: {self.failure}")
