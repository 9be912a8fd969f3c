"""One SQLite writer of this process at a time, queued in the process and woken at once.

SQLite lets one connection write at a time: a second ``BEGIN IMMEDIATE`` finds the lock
held and SQLite's busy handler retries it after sleeps of 1, 2, 5, 10, 15, 20, 25 ... ms.
A writer that arrives while another holds the lock for 1 ms can so wait 10 ms and more
(measured: an order service's owner row waited 8.8 ms at p95 for the log's sync thread,
whose batches held the lock for about 1 ms). Writers of the same file in this process
therefore queue on a ``WriterGate`` (a lock per file, shared by every engine of the
process) before they begin: the next one goes the moment the last one commits or rolls
back. The gate only orders writers that SQLite orders anyway; SQLite's lock stays the
guard (another process's writer still meets its busy handler).

The bound of a call is kept: a writer that waited at the gate has only what is left of its
busy timeout for SQLite's own wait (``GatedConnection.enter``), and a gate it cannot get
within the busy timeout is skipped (the ``BEGIN IMMEDIATE`` then fails or succeeds on
SQLite's word, as without the gate). A forked child starts with every gate free (a gate
another thread of the parent held would never be let go there).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["GatedConnection", "WriterGate", "gate_for"]

_gates: dict[str, WriterGate] = {}
_gates_lock = threading.Lock()


class WriterGate:
    """The writers of one SQLite file in this process, one at a time (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: int | None = None  # the thread whose write transaction holds it
        self.epoch = 0  # one more in a forked child: a hold taken before the fork is void

    def acquire(self, timeout_s: float) -> bool:
        """True when taken; False when this thread holds it already (a second connection
        of the same thread: SQLite decides, as without the gate) or it stayed taken for
        ``timeout_s``."""
        if self._holder == threading.get_ident():
            return False
        if not self._lock.acquire(timeout=max(0.0, timeout_s)):
            return False
        self._holder = threading.get_ident()
        return True

    def release(self, epoch: int) -> None:
        """Let go of a hold taken in ``epoch`` (a hold from before a fork is not this
        process's to let go)."""
        if epoch != self.epoch:
            return
        self._holder = None
        self._lock.release()


def _after_fork_in_child() -> None:
    """A forked child has one thread: a gate some other thread of the parent held at the
    fork would never be let go there. Every gate starts free in the child."""
    for gate in _gates.values():
        gate._lock = threading.Lock()
        gate._holder = None
        gate.epoch += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def gate_for(path: Path) -> WriterGate:
    """The gate of a database file (the same one for every engine of this process)."""
    key = os.path.realpath(path)
    with _gates_lock:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = WriterGate()
        return gate


class GatedConnection(sqlite3.Connection):
    """A ``sqlite3`` connection whose write transactions pass a ``WriterGate`` (the
    ``factory`` of ``sqlite3.connect``); ``arm`` gives it its gate and busy timeout."""

    _gate: WriterGate | None = None
    _busy_ms: int = 0
    _holding: bool = False
    _epoch: int = 0  # the gate's epoch when this connection took it

    def arm(self, gate: WriterGate, busy_ms: int) -> None:
        self._gate = gate
        self._busy_ms = busy_ms

    @contextmanager
    def write_begun(self) -> Iterator[None]:
        """Around the ``BEGIN IMMEDIATE`` the body runs: the gate first, then SQLite's wait
        within what is left of the busy timeout; the gate is let go if the body raises."""
        gate = self._gate
        if gate is None or self._holding:  # no gate, or this connection holds it already
            yield
            return
        started = time.monotonic()
        self._epoch = gate.epoch
        self._holding = gate.acquire(self._busy_ms / 1000)
        waited_ms = int((time.monotonic() - started) * 1000)
        try:
            if waited_ms:
                # the gate took part of this call's bound: SQLite's own wait gets the rest
                self.execute(f"PRAGMA busy_timeout={max(0, self._busy_ms - waited_ms)}")
            try:
                yield
            finally:
                if waited_ms:
                    self.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        except BaseException:
            self._leave()  # no transaction began: the next writer may go
            raise

    def _leave(self) -> None:
        if self._holding and self._gate is not None:
            self._holding = False
            self._gate.release(self._epoch)

    def commit(self) -> None:
        super().commit()
        self._leave()  # committed: the next writer goes now (a failed commit keeps it
        # until the rollback or close that follows)

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._leave()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._leave()
