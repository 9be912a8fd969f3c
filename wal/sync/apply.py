"""Applying log entries to the database: one batch, and a drain of everything pending.

``Applier`` is the manager's database side. ``apply_batch`` applies entries in LSN order (with
the ledger, exactly once; without it, at least once, marking entries SYNCING first), counts
the outcomes, turns an entry that failed ``max_retries`` times into a dead letter (FAILED),
and records every status in the log before anything is acknowledged. ``drain`` repeats it
until nothing is pending, the breaker opens, or the manager stops. The caller holds
``apply_lock``: one applier at a time.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from wal.config import WALConfig
from wal.crashpoints import crash_point
from wal.db.classify import describe_error, is_transient
from wal.entry import OperationType, WALEntry, WALEntryStatus
from wal.errors import WALDatabaseError, WALError, WALWriteError
from wal.log.storage import WALStorage
from wal.money import exact
from wal.sync.breaker import CircuitBreaker
from wal.sync.identity import BIND_HINT, check_before_apply, mismatch, read_target
from wal.sync.results import SyncResult

__all__ = [
    "Applier",
    "ApplyObserver",
    "BatchAborted",
    "Counters",
    "Outcome",
    "short_error",
    "transient_error",
]

log = logging.getLogger("wal.sync.manager")

# the error text of the COMPLETED mark `atb wal discard` writes (cli/commands/wal_discard.py):
# such an entry was never applied, and must never be
DISCARDED = "discarded by operator: "
_SHORT_ERROR_LEN = 200  # a log line an operator can read, and the status view shows
_CRITICAL = frozenset(op.value for op in OperationType)


@dataclass
class Outcome:
    status: WALEntryStatus
    result: Any = None
    error: str | None = None
    duplicate: bool = False  # the database already had the effect (ledger or key ledger)


@dataclass
class Counters:
    applied: int = 0
    duplicates: int = 0
    failed: int = 0
    errors: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=600))


class ApplyObserver(Protocol):
    """Told when a batch is about to be applied and how it ended (the read overlay)."""

    def batch_starting(self, batch: Sequence[WALEntry]) -> None: ...

    def batch_finished(
        self,
        batch: Sequence[WALEntry],
        statuses: dict[uuid.UUID, WALEntryStatus],
        unsure: set[uuid.UUID],
    ) -> None: ...


class BatchAborted(Exception):
    """A transient database error stopped a batch (nothing, or all of it, committed)."""


def short_error(exc: BaseException) -> str:
    """One short line for logs and status: what failed, without hints, SQL or links."""
    text = exc.message if isinstance(exc, WALError) else describe_error(exc)
    return text if len(text) <= _SHORT_ERROR_LEN else text[: _SHORT_ERROR_LEN - 3] + "..."


def transient_error(exc: BaseException) -> bool:
    """A ``WALDatabaseError``'s own verdict, else ``wal.db.classify.is_transient``."""
    if isinstance(exc, WALDatabaseError):
        return exc.transient
    return is_transient(exc)


class Applier:
    """The manager's database side: apply batches, drain, count, keep the breaker informed."""

    def __init__(self, storage: WALStorage, db: Any, config: WALConfig) -> None:
        self.storage = storage
        self.db = db
        self.config = config
        self.breaker = CircuitBreaker(
            config.breaker_failure_threshold, config.breaker_cooldown_seconds
        )
        self.exactly_once = callable(getattr(db, "apply", None))
        # one applier at a time (the sync thread, force_sync, or a write applying inline)
        self.apply_lock = threading.RLock()
        self.stopping = threading.Event()
        self.counters = Counters()
        self.attempt = 0  # consecutive transient failures (backoff exponent)
        self.last_sync_at: datetime | None = None
        self.last_error: str | None = None
        self.fatal: WALWriteError | None = None
        self._alerted_count = False
        self._alerted_age = False
        # entries of batches aborted by a transient error: committed or not, nobody knows
        # until the ledger is asked (the ambiguous commit); read overlays must ask it
        self.maybe_applied: set[uuid.UUID] = set()
        self._target_checked = False  # database.json: checked before the first batch is applied
        self.observers: list[ApplyObserver] = []
        # called between a batch's steps: the read overlay steps aside for a read in progress
        self.step_aside: list[Callable[[], None]] = []
        self._told = False  # the observers heard how the current batch ended
        # COMPLETED entries still in the log checked against the ledger (reapply_lost) once
        # per process, before the first batch or read: the database may have lost commits
        self.reconciled = not self.exactly_once or not callable(getattr(db, "applied_ids", None))
        self.reapplied = 0  # entries reapply_lost found missing and applied again
        # the database may have changed under a running process (a failover to a lagging
        # replica, a restore, another database behind the URL): each new connection is
        # checked as it is made (``check_new_connection``), and after an outage the next
        # batch or read checks it is still the log's database and still holds the newest
        # entry this process applied (``database_suspect``)
        self.recheck = False
        self.epoch = 0  # bumped by each database_suspect(): the reads' identity check too
        self._last_applied: uuid.UUID | None = None  # the newest entry applied by this process
        self._probe: uuid.UUID | None = None  # _last_applied when the recheck became due
        self.lost_commits = False  # a new connection found lost commits (reads retry once)
        # set once this process found the database to be the log's: from then on a new
        # connection to another database is refused (before, start() and the first batch and
        # read decide: the engine starts, the entries stay pending, reads refuse)
        self._armed = False
        engine = getattr(db, "engine", None)
        # with the hook on every new connection below, an outage needs no recheck of its own
        # (what answers after it comes through a new connection); a manager of your own
        # without an engine is rechecked after each outage (database_suspect)
        self._hooked = self.exactly_once and isinstance(engine, sa.engine.Engine)
        if self._hooked:
            me = weakref.ref(self)

            def on_connect(dbapi_conn: Any, _record: Any) -> None:
                applier = me()
                if applier is not None and not applier.stopping.is_set():
                    applier.check_new_connection(dbapi_conn)

            # every new connection is checked before it is used: a failover or a swap can put
            # another database (or one that lost commits) behind the same URL mid-run
            sa.event.listen(engine, "connect", on_connect)

    def check_new_connection(self, dbapi_conn: Any) -> None:
        """A new connection to the database, before anything uses it (once this process found
        the database to be the log's): it must reach the log's database (``database.json``),
        and one that still holds the newest entry this process applied. Another database
        raises (nothing is applied to it or read from it); one that lost commits (a lagging
        replica, a restore) raises after marking the log's COMPLETED entries for
        ``reapply_lost``, which runs before anything else. Both transient: the entries stay
        pending, reads answer from what this process kept."""
        if not self._armed:
            return  # not checked yet in this process: the first batch and read check it
        target = read_target(Path(self.storage.directory))
        if target is None:
            return  # nothing bound (a rebind in progress): the next batch checks
        probe = self._last_applied if self.reconciled else None
        found = _connection_scalar(dbapi_conn, "SELECT database_id FROM wal_database_id")
        why = mismatch(target, str(getattr(self.db, "url", "?")), found)
        if why is not None:
            # as check_before_apply's: the entries stay PENDING (never dead letters), the
            # breaker opens, and reads answer from what this process kept, never from it
            raise WALDatabaseError(
                f"{why}: nothing is applied to it or read from it", transient=True, hint=BIND_HINT
            )
        if probe is None:
            return
        held = _connection_scalar(
            dbapi_conn, f"SELECT entry_id FROM wal_applied WHERE entry_id = '{probe}'"
        )
        if held is None:
            self.reconciled = False  # every COMPLETED entry is checked before the next batch
            self.lost_commits = True  # a read in progress tries again (take_lost_commits)
            raise WALDatabaseError(
                f"the database no longer holds entry {probe}, applied by this process: it lost "
                "commits (a failover to a lagging replica, a restore?); the log applies them "
                "again before anything else",
                transient=True,
            )

    def database_suspect(self) -> None:
        """The database may not be the one last applied to (a connection failed: what answers
        next may be a failover's): check it before the next batch or read (``reapply_lost``).
        With the bundled manager every new connection is checked as it is made
        (``check_new_connection``) instead: nothing to do here."""
        if self._hooked:
            return
        self._target_checked = False
        self.epoch += 1
        if not self.recheck:
            # the newest entry applied before: what a batch applies from now on may already
            # reach the other server, and would prove nothing (a check pending keeps its own)
            self._probe = self._last_applied
        self.recheck = True

    @exact
    def apply_batch(self, batch: Sequence[WALEntry]) -> dict[uuid.UUID, Outcome]:
        """Apply a batch (apply lock held), record the statuses durably, return outcomes.

        The observers hear of it before the database does, and of its end before the log
        records the statuses. Raises ``BatchAborted`` on a transient database error (the
        breaker counts it) and ``WALWriteError`` when the log cannot record the statuses.
        """
        for o in self.observers:
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
        for o in self.observers:
            o.batch_finished(batch, statuses, unsure)

    def _step_aside(self) -> None:
        """Let a read in progress finish first (bounded: ``Overlay.pause_for_reads``). Only
        between steps, with no database transaction open."""
        for pause in self.step_aside:
            pause()

    def _apply_and_record(self, batch: Sequence[WALEntry]) -> dict[uuid.UUID, Outcome]:
        self._step_aside()
        if self.exactly_once:
            outcomes = self._apply_exactly_once(batch)
        else:
            outcomes = self._apply_at_least_once(batch)
        self._step_aside()
        crash_point("manager.after_apply_before_status")  # committed, not yet COMPLETED in the log
        changes: list[tuple[WALEntry, WALEntryStatus, str | None, int | None]] = []
        c = self.counters
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
        self._step_aside()
        try:
            # any other outcome is acknowledged only once it is durable in the log
            self.storage.update_statuses(changes, durable=durable)
        except WALWriteError as exc:
            self.fatal = exc
            raise
        self.last_sync_at = datetime.now(UTC)
        self._step_aside()
        return outcomes

    @exact
    def reapply_lost(self) -> int:
        """Apply again the COMPLETED entries still in the log whose ledger rows the database
        no longer has (restored from a backup, failed over to a lagging replica: it lost its
        last commits), in LSN order, one ledger query per batch; once per process, before any
        other batch (the caller holds ``apply_lock``). Returns how many were applied again
        (with a warning naming them). Raises ``BatchAborted`` on a transient error (tried
        again before the next batch)."""
        if self.reconciled and not self.recheck:
            return 0
        redone = 0
        try:
            if self.reconciled and self._still_holds_what_was_applied():
                self.recheck = False
                return 0
            self.reconciled = False  # it lost commits: every COMPLETED entry is checked
            target = read_target(Path(self.storage.directory))
            if target is None:
                # a new log (nothing applied anywhere yet), or one whose record was lost
                # (the rebind it needs starts after its entries): nothing to check, and
                # nothing is bound here (a read or a dry run never binds a log)
                self.reconciled = True
                return 0
            self._check_target()  # the log's own database, never another one
            since = target.from_lsn  # this database's entries only (not before a rebind)
            chunk: list[WALEntry] = []
            for e in self.storage.iter_entries([WALEntryStatus.COMPLETED]):
                if (e.lsn or 0) < since:
                    continue  # applied to the database the log was bound to before
                if (e.last_error or "").startswith(DISCARDED):
                    continue  # closed by the operator, never applied: it must never be
                chunk.append(e)
                if len(chunk) >= self.config.batch_size:
                    redone += self._reapply_chunk(chunk)
                    chunk = []
            if chunk:
                redone += self._reapply_chunk(chunk)
        except Exception as exc:
            if isinstance(exc, WALError) and not isinstance(exc, WALDatabaseError):
                raise  # the log itself, or the wrong database: never retried as an outage
            if not transient_error(exc):
                raise
            self.note_transient(exc)
            raise BatchAborted from exc
        self.reconciled = True
        self.recheck = False
        self.reapplied += redone
        if redone:
            log.warning(
                "the database had lost %d applied entries (their ledger rows were missing: "
                "restored from a backup, or a lagging replica?); applied again from the log",
                redone,
            )
        return redone

    def _check_target(self) -> None:
        """Once per process (and after an outage, for a manager without an engine): the
        database is the log's (``check_before_apply``); from then on every new connection is
        checked as it is made (armed)."""
        if not self._target_checked:
            check_before_apply(self.storage.directory, self.db, self.storage)
            self._target_checked = self._armed = True

    def _still_holds_what_was_applied(self) -> bool:
        """A recheck after an outage or a new connection: the log's own database (raises
        when it is another one), and it still holds the newest entry this process had applied
        when the recheck became due (a database that lost commits lost the newest ones: a
        lagging replica, a restored backup hold a prefix). False: it lost some; every
        COMPLETED entry is checked."""
        self._check_target()
        last = self._probe
        if last is None or str(last) in {str(x) for x in self.db.applied_ids([last])}:
            return True
        log.warning(
            "the database no longer holds entry %s, applied by this process: it lost commits "
            "(a failover to a lagging replica, a restore?); the log applies them again",
            last,
        )
        return False

    def _reapply_chunk(self, chunk: list[WALEntry]) -> int:
        """One batch of COMPLETED entries: ask the ledger once, apply the missing ones."""
        held = {str(x) for x in self.db.applied_ids([str(e.entry_id) for e in chunk])}
        missing = [e for e in chunk if str(e.entry_id) not in held]
        if not missing:
            return 0
        results = self.db.apply(missing)
        redone = 0
        failed: list[tuple[WALEntry, WALEntryStatus, str | None, int | None]] = []
        for e, r in zip(missing, results, strict=True):
            if r.outcome == "applied":
                redone += 1
            elif r.outcome == "error":
                # it was applied once; the database now refuses it: the operator must look
                log.error(
                    "entry %s (lsn %s, %s) was applied before, lost by the database, and is "
                    "now refused: %s; it is a dead letter (atb wal failed)",
                    e.entry_id,
                    e.lsn,
                    e.operation,
                    r.error,
                )
                failed.append((e, WALEntryStatus.FAILED, r.error, e.attempts))
        if failed:
            self.counters.failed += len(failed)
            try:
                self.storage.update_statuses(failed)
            except WALWriteError as exc:
                self.fatal = exc
                raise
        return redone

    def _apply_exactly_once(self, batch: Sequence[WALEntry]) -> dict[uuid.UUID, Outcome]:
        if not self.reconciled or self.recheck:
            self.reapply_lost()  # before anything newer reaches the database (LSN order)
        try:
            self._check_target()  # the log's own database, never another one
            results = self.db.apply(list(batch))
        except Exception as exc:
            if not transient_error(exc):
                log.exception("apply of a batch failed without a per-entry result")
            self.note_transient(exc)
            self.maybe_applied.update(e.entry_id for e in batch)
            raise BatchAborted from exc
        self.note_success()
        self.maybe_applied.difference_update(e.entry_id for e in batch)
        outcomes: dict[uuid.UUID, Outcome] = {}
        for e, r in zip(batch, results, strict=True):
            if r.outcome == "applied":
                self._last_applied = e.entry_id  # LSN order: the newest is last
                self.counters.applied += 1
                outcomes[e.entry_id] = Outcome(WALEntryStatus.COMPLETED, r.value)
            elif r.outcome == "duplicate":
                self.counters.duplicates += 1
                outcomes[e.entry_id] = Outcome(WALEntryStatus.COMPLETED, duplicate=True)
            else:
                outcomes[e.entry_id] = Outcome(WALEntryStatus.PENDING, error=r.error)
        return outcomes

    def _apply_at_least_once(self, batch: Sequence[WALEntry]) -> dict[uuid.UUID, Outcome]:
        # mark them first, so a crash between the call and the COMPLETED record is visible
        fresh = [e for e in batch if e.status is not WALEntryStatus.SYNCING]
        self.storage.update_statuses((e, WALEntryStatus.SYNCING, None, e.attempts) for e in fresh)
        outcomes: dict[uuid.UUID, Outcome] = {}
        for e in batch:
            if e.operation not in _CRITICAL:  # never call a method named by log contents
                outcomes[e.entry_id] = Outcome(
                    WALEntryStatus.PENDING, error=f"unknown operation {e.operation!r}"
                )
                continue
            try:
                value = getattr(self.db, e.operation)(*e.args, **e.kwargs)
            except Exception as exc:
                if transient_error(exc):
                    self.maybe_applied.add(e.entry_id)
                    self.note_transient(exc)
                    if not outcomes:
                        raise BatchAborted from exc
                    break  # the ones done so far are recorded below
                outcomes[e.entry_id] = Outcome(WALEntryStatus.PENDING, error=repr(exc))
                continue
            self.note_success()
            self.counters.applied += 1
            outcomes[e.entry_id] = Outcome(WALEntryStatus.COMPLETED, value)
        return outcomes

    def note_transient(self, exc: BaseException) -> None:
        self.breaker.failure()
        self.database_suspect()  # what answers after the outage may have lost commits
        self.attempt += 1
        self.last_error = short_error(exc)
        log.warning("database unavailable (%s); entries stay in the log", self.last_error)

    def note_success(self) -> None:
        self.breaker.success()
        self.attempt = 0

    def drain(self, *, force: bool = False, until_short: bool = False) -> SyncResult:
        """Apply pending entries batch by batch until none is left (or the breaker, a
        transient error or a stop ends the pass). ``until_short``: end the pass after a batch
        shorter than ``batch_size`` (the backlog is used up; applying behind, the sync thread
        gathers the next entries for a few ms first: one commit for many calls, not one per
        call or two)."""
        t0 = time.monotonic()
        c = self.counters
        before = (c.applied, c.duplicates, c.failed, c.errors)
        error = None
        after_lsn = 0
        explicit = force  # a drain asked for (force_sync): every batch, even once stopped
        while explicit or not self.stopping.is_set():
            if not force and not self.breaker.allow():
                error = self.last_error
                break
            # the lock is taken per batch: a writer applying inline waits for one batch at most
            with self.apply_lock:
                batch = self._next_batch(after_lsn)
                if not batch:
                    break
                try:
                    outcomes = self.apply_batch(batch)
                except BatchAborted:
                    error = self.last_error
                    break
            force = False  # the probe went through; the breaker governs from here
            if until_short and len(batch) < self.config.batch_size:
                break  # the backlog was shorter than a batch: the next pass gathers first
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

    def _next_batch(self, after_lsn: int) -> list[WALEntry]:
        """The next pending entries (up to ``batch_size``), read while appenders go first:
        one wait for an appender in progress per 16 entries parsed (not per entry: under a
        steady stream of appends the drain must still keep up with them)."""
        batch: list[WALEntry] = []
        pending = self.storage.get_pending_entries(
            after_lsn=after_lsn, limit=self.config.batch_size
        )
        for e in pending:
            if len(batch) % 16 == 0:
                self.storage.yield_to_appenders()  # an appender back from fsync goes first
            batch.append(e)
        return batch

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
        age = self.storage.oldest_pending_age() if pending else None
        old = age is not None and age > self.config.pending_alert_age_seconds
        if old and not self._alerted_age:
            log.warning("the oldest pending entry is %.0f s old", age)
        self._alerted_age = old


def _connection_scalar(dbapi_conn: Any, sql: str) -> Any:
    """The first column of the first row of ``sql`` on a raw DB-API connection, or None (no
    row, or no such table: a database the log never applied to); its transaction is ended."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute(sql)
        row = cur.fetchone()
    except Exception:
        row = None
    finally:
        cur.close()
        if not getattr(dbapi_conn, "autocommit", True) and hasattr(dbapi_conn, "rollback"):
            dbapi_conn.rollback()  # a fresh connection has no transaction open: none is left
    return None if row is None else (None if row[0] is None else str(row[0]))
