"""``WALManager``: every critical operation goes to the log first, then to the database.

``write()`` appends the operation durably, then applies it at once while the circuit breaker
is closed (after any older pending entries, so the database always sees LSN order), and
returns a ``Receipt``. While the database is down the entry stays in the log and the receipt
says PENDING; a background thread replays pending entries in LSN order, in batches, with
exponential backoff and full jitter, and a half-open probe after the breaker's cooldown.

Exactly once. With a database that has ``apply(entries)`` (the bundled
``wal.db.manager.DatabaseManager``), each entry's effect and its row in the ``wal_applied``
ledger commit in one transaction, and entries already in the ledger are skipped. A crash
between the database commit and the log's COMPLETED record, or a connection lost between
COMMIT and its reply, therefore cannot double an effect: the replay finds the ledger row.
A database without ``apply`` gets at-least-once: the entry's method is called, and a crash
after the call but before the COMPLETED record replays it (such entries are marked SYNCING
first, so they can be found).

Errors. Transient errors (the database is unreachable, shutting down, a serialization
failure, a timeout) never use up an entry's retries; they open the breaker. Permanent errors
(a constraint violation, bad data) count towards ``max_retries``; then the entry becomes
FAILED, a dead letter: logged, shown in stats, listed by ``atb wal failed``. Entries after a
dead letter keep being applied: blocking the whole queue behind one bad entry would leave the
database stale for every account, while the entries that really depend on the dead letter
(an update of a position whose creation failed) fail on their own and join it. The operator
fixes the cause and retries the dead letters in LSN order (``atb wal retry``).

A failure of the log itself (``WALWriteError``: disk full, EIO) always raises to the caller:
no operation is acknowledged, or applied, without being durable in the log first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from wal.config import WALConfig
from wal.crashpoints import crash_point
from wal.entry import OperationType, WALEntry, WALEntryStatus
from wal.errors import WALDatabaseError, WALError, WALWriteError
from wal.log.storage import WALStorage
from wal.sync.breaker import BreakerState, CircuitBreaker, backoff_delay

__all__ = ["MANAGER_STATUS_FILE", "ApplyObserver", "Receipt", "SyncResult", "WALManager"]

log = logging.getLogger("wal.sync.manager")

MANAGER_STATUS_FILE = "manager-status.json"
_CRITICAL = frozenset(op.value for op in OperationType)
_UNFINISHED = (WALEntryStatus.PENDING, WALEntryStatus.SYNCING)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What ``write`` hands back. ``status`` COMPLETED: applied, ``result`` is the database
    method's return value. PENDING: durable in the log, to be applied by the sync thread.
    ``duplicate``: the idempotency key was seen before; this is the first write's receipt."""

    entry_id: uuid.UUID
    lsn: int
    operation: str
    idempotency_key: str
    status: WALEntryStatus
    result: Any = None
    error: str | None = None
    duplicate: bool = False

    @property
    def applied(self) -> bool:
        return self.status is WALEntryStatus.COMPLETED

    @property
    def pending(self) -> bool:
        return self.status in _UNFINISHED


@dataclass(frozen=True, slots=True)
class SyncResult:
    """Counts of one drain (``force_sync`` or a pass of the sync thread)."""

    applied: int = 0
    duplicates: int = 0
    failed: int = 0  # became FAILED (dead letters) in this drain
    errors: int = 0  # permanent errors that will be retried
    pending: int = 0  # still unfinished after the drain
    seconds: float = 0.0
    error: str | None = None  # the transient error that stopped the drain, if any

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Outcome:
    status: WALEntryStatus
    result: Any = None
    error: str | None = None


@dataclass
class _Counters:
    applied: int = 0
    duplicates: int = 0
    failed: int = 0
    errors: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=600))


class ApplyObserver(Protocol):
    """Told when a batch is about to be applied and when it ended (the read overlay)."""

    def batch_starting(self, batch: Sequence[WALEntry]) -> None: ...

    def batch_finished(
        self,
        batch: Sequence[WALEntry],
        statuses: dict[uuid.UUID, WALEntryStatus],
        unsure: set[uuid.UUID],
    ) -> None: ...


class _BatchAborted(Exception):
    """A transient database error stopped a batch (nothing, or all of it, committed)."""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, WALDatabaseError):
        return exc.transient
    from wal.db.classify import is_transient  # SQLAlchemy is imported only when needed

    return is_transient(exc)


class WALManager:
    """Durable writes, immediate or background application, exactly-once replay."""

    def __init__(
        self,
        storage: WALStorage,
        db: Any,
        config: WALConfig | None = None,
        *,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.storage = storage
        self.db = db
        self.config = config if config is not None else WALConfig.from_env()
        self.breaker = CircuitBreaker(
            self.config.breaker_failure_threshold, self.config.breaker_cooldown_seconds
        )
        self.exactly_once = callable(getattr(db, "apply", None))
        self._rng = rng
        # one applier at a time (the sync thread, force_sync, or a write applying inline)
        self._apply_lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._keys_lock = threading.Lock()
        self._receipts: OrderedDict[str, Receipt] = OrderedDict()
        self._inflight: dict[str, threading.Event] = {}
        self._counters = _Counters()
        self._attempt = 0  # consecutive transient failures (backoff exponent)
        self._last_sync_at: datetime | None = None
        self._last_error: str | None = None
        self._fatal: WALWriteError | None = None
        self._alerted_count = False
        self._alerted_age = False
        self._write_hooks: list[Callable[[WALEntry], None]] = []
        self._observers: list[ApplyObserver] = []
        self._told = False  # the observers heard how the current batch ended
        # entries of batches aborted by a transient error: committed or not, nobody knows
        # until the ledger is asked (the ambiguous commit); read overlays must ask it
        self.maybe_applied: set[uuid.UUID] = set()

    # ------------------------------------------------------------------ writing

    def write(
        self,
        operation: str | OperationType,
        *args: Any,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> Receipt:
        """Log an operation durably, then apply it if the database is reachable.

        Raises ``WALSerializationError`` (bad value; nothing written) and ``WALWriteError``
        (the log failed: trading must halt). Database errors never raise here: the entry is
        durable and the receipt says PENDING.
        """
        entry = WALEntry.create(operation, args, kwargs, idempotency_key)
        if idempotency_key is None:
            return self._write_new(entry)
        return self._write_keyed(entry, idempotency_key)

    async def write_async(
        self,
        operation: str | OperationType,
        *args: Any,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> Receipt:
        """``write`` for asyncio engines: the fsync and the database call run in a worker
        thread, never on the event loop; concurrent coroutines share one fsync."""
        if self._executor is None:
            with self._keys_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(64, thread_name_prefix="wal-write")
        call = functools.partial(
            self.write, operation, *args, idempotency_key=idempotency_key, **kwargs
        )
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def add_write_hook(self, hook: Callable[[WALEntry], None]) -> None:
        """Call ``hook(entry)`` after each entry is durable (before it is applied)."""
        self._write_hooks.append(hook)

    def add_apply_observer(self, observer: ApplyObserver) -> None:
        """Tell ``observer`` when each batch starts and ends (see ``ApplyObserver``)."""
        self._observers.append(observer)

    def _write_keyed(self, entry: WALEntry, key: str) -> Receipt:
        while True:
            with self._keys_lock:
                hit = self._receipts.get(key)
                if hit is not None:
                    self._receipts.move_to_end(key)
                    return replace(hit, duplicate=True)
                waiting = self._inflight.get(key)
                if waiting is None:
                    done = self._inflight[key] = threading.Event()
                    break
            waiting.wait()  # another thread is writing this key; take its receipt
        try:
            found = self.storage.find_by_idempotency_key(key)  # keys evicted from the cache
            if found is not None:
                receipt = self._receipt(found, found.status)
                self._remember(key, receipt)
                return replace(receipt, duplicate=True)
            receipt = self._write_new(entry)
            self._remember(key, receipt)
            return receipt
        finally:
            with self._keys_lock:
                del self._inflight[key]
            done.set()

    def _remember(self, key: str, receipt: Receipt) -> None:
        with self._keys_lock:
            self._receipts[key] = receipt
            self._receipts.move_to_end(key)
            while len(self._receipts) > self.config.idempotency_cache_size:
                self._receipts.popitem(last=False)

    def _write_new(self, entry: WALEntry) -> Receipt:
        if self._fatal is not None:
            raise self._fatal
        try:
            e = self.storage.append(entry)  # durable on return; a WALWriteError halts trading
        except WALWriteError as exc:
            self._fatal = exc
            raise
        for hook in self._write_hooks:
            hook(e)
        crash_point("manager.after_append_before_apply")  # durable, not applied, not acknowledged
        if self.breaker.state is not BreakerState.CLOSED:
            self._wake.set()
            return self._receipt(e, WALEntryStatus.PENDING)
        return self._apply_through(e)

    def _apply_through(self, e: WALEntry) -> Receipt:
        """Apply the pending entries up to ``e`` (LSN order) in this thread, if few enough."""
        assert e.lsn is not None
        limit = self.config.batch_size
        backlog = self.storage.count(WALEntryStatus.PENDING) + self.storage.count(
            WALEntryStatus.SYNCING
        )
        if backlog > limit:  # the sync thread drains it; do not read it back on every write
            self._wake.set()
            return self._receipt(e, WALEntryStatus.PENDING)
        with self._apply_lock:
            batch = []
            for p in self.storage.get_pending_entries(limit=limit + 1):
                if p.lsn is not None and p.lsn > e.lsn:
                    break
                batch.append(p)
            if not batch or batch[-1].entry_id != e.entry_id or len(batch) > limit:
                # already applied by the sync thread, or a backlog that the thread drains
                self._wake.set()
                return self._receipt(e, self._status_of(e))
            if not self.breaker.allow():
                self._wake.set()
                return self._receipt(e, WALEntryStatus.PENDING)
            try:
                outcomes = self._apply_batch(batch)
            except _BatchAborted:
                self._wake.set()
                return self._receipt(e, WALEntryStatus.PENDING)
        out = outcomes[e.entry_id]
        return self._receipt(e, out.status, out.result, out.error)

    def _status_of(self, e: WALEntry) -> WALEntryStatus:
        try:
            return self.storage.get_entry(e.entry_id).status
        except Exception:
            return WALEntryStatus.COMPLETED

    @staticmethod
    def _receipt(
        e: WALEntry, status: WALEntryStatus, result: Any = None, error: str | None = None
    ) -> Receipt:
        assert e.lsn is not None
        return Receipt(e.entry_id, e.lsn, e.operation, e.idempotency_key, status, result, error)

    # ------------------------------------------------------------------ applying

    def _apply_batch(self, batch: Sequence[WALEntry]) -> dict[uuid.UUID, _Outcome]:
        """Apply a batch (apply lock held), record the statuses durably, return outcomes.

        Raises ``_BatchAborted`` on a transient database error (the breaker counts it) and
        ``WALWriteError`` when the log cannot record the statuses.
        """
        for o in self._observers:
            o.batch_starting(batch)  # reads ask the ledger about these entries until the end
        self._told = False
        try:
            outcomes = self._apply_and_record(batch)
        except BaseException:
            if not self._told:
                # the batch may have committed (an ambiguous COMMIT): maybe applied
                self._tell_finished(batch, {}, {e.entry_id for e in batch})
            raise
        crash_point("manager.after_status_before_ack")  # recorded; the writer not yet answered
        return outcomes

    def _tell_finished(
        self,
        batch: Sequence[WALEntry],
        statuses: dict[uuid.UUID, WALEntryStatus],
        unsure: set[uuid.UUID],
    ) -> None:
        self._told = True
        for o in self._observers:
            o.batch_finished(batch, statuses, unsure)

    def _apply_and_record(self, batch: Sequence[WALEntry]) -> dict[uuid.UUID, _Outcome]:
        if self.exactly_once:
            outcomes = self._apply_exactly_once(batch)
        else:
            outcomes = self._apply_at_least_once(batch)
        crash_point("manager.after_apply_before_status")  # committed, not yet COMPLETED in the log
        changes: list[tuple[WALEntry, WALEntryStatus, str | None, int | None]] = []
        c = self._counters
        for e in batch:
            out = outcomes.get(e.entry_id)
            if out is None:
                continue
            if out.status is WALEntryStatus.COMPLETED:
                changes.append((e, out.status, None, e.attempts))
                continue
            attempts = e.attempts + 1
            if attempts >= self.config.max_retries:
                out.status = WALEntryStatus.FAILED
                c.failed += 1
                log.error(
                    "dead letter: entry %s (lsn %s, %s) failed %d times: %s",
                    e.entry_id,
                    e.lsn,
                    e.operation,
                    attempts,
                    out.error,
                )
            else:
                out.status = WALEntryStatus.PENDING
                c.errors += 1
            changes.append((e, out.status, out.error, attempts))
        done = sum(1 for o in outcomes.values() if o.status is WALEntryStatus.COMPLETED)
        if done:
            c.recent.append((time.monotonic(), done))  # for applied_per_second
        # With the ledger, a lost COMPLETED mark only causes a replay that the ledger skips:
        # such marks ride on the next flush's fsync instead of an fsync of their own.
        durable = not self.exactly_once or any(
            st is not WALEntryStatus.COMPLETED for _, st, _, _ in changes
        )
        maybe = self.maybe_applied
        # the overlay learns the outcome before the log: reads need not wait for the fsync
        self._tell_finished(
            batch,
            {e.entry_id: st for e, st, _, _ in changes},
            {e.entry_id for e in batch if e.entry_id not in outcomes and e.entry_id in maybe},
        )
        try:
            # any other outcome is acknowledged only once it is durable in the log
            self.storage.update_statuses(changes, durable=durable)
        except WALWriteError as exc:
            self._fatal = exc
            raise
        self._last_sync_at = datetime.now(UTC)
        return outcomes

    def _apply_exactly_once(self, batch: Sequence[WALEntry]) -> dict[uuid.UUID, _Outcome]:
        try:
            results = self.db.apply(list(batch))
        except Exception as exc:
            if not _is_transient(exc):
                log.exception("apply of a batch failed without a per-entry result")
            self._note_transient(exc)
            self.maybe_applied.update(e.entry_id for e in batch)
            raise _BatchAborted from exc
        self._note_success()
        self.maybe_applied.difference_update(e.entry_id for e in batch)
        outcomes: dict[uuid.UUID, _Outcome] = {}
        for e, r in zip(batch, results, strict=True):
            if r.outcome == "applied":
                self._counters.applied += 1
                outcomes[e.entry_id] = _Outcome(WALEntryStatus.COMPLETED, r.value)
            elif r.outcome == "duplicate":
                self._counters.duplicates += 1
                outcomes[e.entry_id] = _Outcome(WALEntryStatus.COMPLETED)
            else:
                outcomes[e.entry_id] = _Outcome(WALEntryStatus.PENDING, error=r.error)
        return outcomes

    def _apply_at_least_once(self, batch: Sequence[WALEntry]) -> dict[uuid.UUID, _Outcome]:
        # mark them first, so a crash between the call and the COMPLETED record is visible
        fresh = [e for e in batch if e.status is not WALEntryStatus.SYNCING]
        self.storage.update_statuses((e, WALEntryStatus.SYNCING, None, e.attempts) for e in fresh)
        outcomes: dict[uuid.UUID, _Outcome] = {}
        for e in batch:
            if e.operation not in _CRITICAL:  # never call a method named by log contents
                outcomes[e.entry_id] = _Outcome(
                    WALEntryStatus.PENDING, error=f"unknown operation {e.operation!r}"
                )
                continue
            try:
                value = getattr(self.db, e.operation)(*e.args, **e.kwargs)
            except Exception as exc:
                if _is_transient(exc):
                    self.maybe_applied.add(e.entry_id)
                    self._note_transient(exc)
                    if not outcomes:
                        raise _BatchAborted from exc
                    break  # the ones done so far are recorded below
                outcomes[e.entry_id] = _Outcome(WALEntryStatus.PENDING, error=repr(exc))
                continue
            self._note_success()
            self._counters.applied += 1
            outcomes[e.entry_id] = _Outcome(WALEntryStatus.COMPLETED, value)
        return outcomes

    def _note_transient(self, exc: BaseException) -> None:
        self.breaker.failure()
        self._attempt += 1
        self._last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        log.warning("database unavailable (%s); entries stay in the log", self._last_error)

    def _note_success(self) -> None:
        self.breaker.success()
        self._attempt = 0

    # ------------------------------------------------------------------ draining

    def force_sync(self) -> SyncResult:
        """Drain now, in this thread, ignoring the breaker's cooldown. Returns counts."""
        return self._drain(force=True)

    def drain(self, timeout: float | None = None) -> int:
        """Apply pending entries until none is left or ``timeout`` seconds passed (None: no
        limit; 0: one pass). Returns how many are left: 0 means every entry was applied (or
        became a dead letter, see ``get_stats()["failed"]``). Retries with backoff while the
        database is unreachable. Raises ``WALWriteError`` if the log failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            if self._fatal is not None:
                raise self._fatal
            left = self.force_sync().pending
            now = time.monotonic()
            if left == 0 or (deadline is not None and now >= deadline):
                return left
            delay = backoff_delay(
                attempt,
                self.config.backoff_base_seconds,
                self.config.backoff_max_seconds,
                self._rng,
            )
            attempt += 1
            time.sleep(delay if deadline is None else min(delay, deadline - now))

    def _drain(self, *, force: bool = False) -> SyncResult:
        t0 = time.monotonic()
        c = self._counters
        before = (c.applied, c.duplicates, c.failed, c.errors)
        error = None
        after_lsn = 0
        while not (self._stopping.is_set() and not force):
            if not force and not self.breaker.allow():
                error = self._last_error
                break
            # the lock is taken per batch: a writer applying inline waits for one batch at most
            with self._apply_lock:
                batch = list(  # background: appenders coming back from fsync go first
                    self.storage.get_pending_entries(
                        after_lsn=after_lsn, limit=self.config.batch_size, background=True
                    )
                )
                if not batch:
                    break
                try:
                    outcomes = self._apply_batch(batch)
                except _BatchAborted:
                    error = self._last_error
                    break
            force = False  # the probe went through; the breaker governs from here
            # entries that stay PENDING after a permanent error wait for the next drain
            if any(o.status is WALEntryStatus.PENDING for o in outcomes.values()):
                after_lsn = max(e.lsn or 0 for e in batch)
        applied = c.applied - before[0]
        pending = self.storage.count(WALEntryStatus.PENDING) + self.storage.count(
            WALEntryStatus.SYNCING
        )
        result = SyncResult(
            applied=applied,
            duplicates=c.duplicates - before[1],
            failed=c.failed - before[2],
            errors=c.errors - before[3],
            pending=pending,
            seconds=time.monotonic() - t0,
            error=error,
        )
        self._check_alerts(pending)
        return result

    def _check_alerts(self, pending: int) -> None:
        """Warn once per crossing of the pending-count and oldest-age thresholds."""
        over = pending > self.config.pending_alert_threshold
        if over and not self._alerted_count:
            log.warning(
                "%d entries pending (threshold %d): the database is behind",
                pending,
                self.config.pending_alert_threshold,
            )
        self._alerted_count = over
        age = self.storage.get_stats().oldest_pending_age_seconds if pending else None
        old = age is not None and age > self.config.pending_alert_age_seconds
        if old and not self._alerted_age:
            log.warning("the oldest pending entry is %.0f s old", age)
        self._alerted_age = old

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        """Start the background sync thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="wal-sync", daemon=True)
        self._thread.start()
        self._wake.set()  # replay what a previous run left pending, now

    def stop(self, timeout: float | None = 10.0, *, drain: bool = False) -> int:
        """Stop the thread (waiting up to ``timeout`` for it). Whatever is not applied stays
        durable in the log. ``drain=True`` first drains (``drain(timeout)``). Returns how many
        entries are left pending."""
        left = self.drain(timeout) if drain else 0
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._publish_status()
        if not drain:
            try:
                left = self.storage.count(WALEntryStatus.PENDING) + self.storage.count(
                    WALEntryStatus.SYNCING
                )
            except WALError:  # the log is already closed: stopped twice
                left = 0
        return left

    def wake(self) -> None:
        """Ask the sync thread for a pass now."""
        self._wake.set()

    @property
    def apply_lock(self) -> threading.RLock:
        """Held while entries are applied; hold it to see the database and the log agree."""
        return self._apply_lock

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._next_delay())
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._drain()
            except WALWriteError as exc:
                self._fatal = exc
                log.critical("the log failed; the sync thread stops: %s", exc)
                break
            except Exception:
                log.exception("sync pass failed")
            self._publish_status()

    def _next_delay(self) -> float:
        if self._attempt == 0:
            return self.config.sync_interval
        delay = backoff_delay(
            self._attempt - 1,
            self.config.backoff_base_seconds,
            self.config.backoff_max_seconds,
            self._rng,
        )
        return max(delay, self.breaker.seconds_until_probe())

    # ------------------------------------------------------------------ observing

    def get_stats(self) -> dict[str, Any]:
        """Pending, failed, oldest pending age, last sync and error, breaker, rates."""
        st = self.storage.get_stats()
        c = self._counters
        now = time.monotonic()
        window = [n for t, n in c.recent if now - t <= 60.0]
        return {
            "pending": st.entries["pending"] + st.entries["syncing"],
            "failed": st.entries["failed"],
            "completed": st.entries["completed"],
            "oldest_pending_age_seconds": st.oldest_pending_age_seconds,
            "last_sync_at": None if self._last_sync_at is None else self._last_sync_at.isoformat(),
            "last_error": self._last_error,
            "breaker_state": self.breaker.state.value,
            "applied_total": c.applied,
            "duplicates_total": c.duplicates,
            "failed_total": c.failed,
            "applied_per_second": sum(window) / 60.0,
            "fsync_p50_us": st.fsync_p50_us,
            "fsync_p99_us": st.fsync_p99_us,
            "exactly_once": self.exactly_once,
            "running": self.running,
            "log_failed": None if self._fatal is None else str(self._fatal),
            "updated_at": datetime.now(UTC).isoformat(),
        }

    def _publish_status(self) -> None:
        """Write ``manager-status.json`` for ``atb wal status`` in another process."""
        if self.storage.readonly:
            return
        try:
            data = orjson.dumps(self.get_stats(), option=orjson.OPT_INDENT_2)
            path = Path(self.storage.directory) / MANAGER_STATUS_FILE
            tmp = path.with_suffix(".json.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            # informational only: an atomic rename, no fsync (losing it on power loss is fine)
            os.replace(tmp, path)
        except Exception:
            log.debug("could not publish manager status", exc_info=True)
