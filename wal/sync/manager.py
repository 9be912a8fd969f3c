"""``WALManager``: every critical operation goes to the log first, then to the database.

``write()`` appends the operation durably (that is the acknowledgement) and returns a
``Receipt``. With ``WAL_APPLY=behind`` (the default) it returns then, PENDING, and wakes the
sync thread, which applies the backlog in LSN order, in batches (one transaction each; a short
backlog waits a few milliseconds for more entries, so that one commit serves several calls).
With ``WAL_APPLY=inline`` it also applies the entry at once while the circuit breaker is closed
(after any older pending entries, so the database always sees LSN order). While the database
is down the entry stays in the log and the receipt says PENDING; the sync thread replays
pending entries with exponential backoff and full jitter, and a half-open probe after the
breaker's cooldown. The first batch of a process (or ``reapply_lost()``, which
``DurableDatabaseManager.start`` calls) first applies again the COMPLETED entries whose ledger
rows the database lost (restored from a backup, a lagging replica).

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
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from wal.config import WALConfig
from wal.crashpoints import crash_point
from wal.entry import OperationType, WALEntry, WALEntryStatus
from wal.errors import WALError, WALWriteError
from wal.log.storage import WALStorage
from wal.money import exact, in_money_context
from wal.sync.apply import Applier, ApplyObserver, BatchAborted
from wal.sync.breaker import BreakerState, backoff_delay
from wal.sync.calls import ID_PARAMS, TIME_PARAMS, TRADING_OPERATIONS, request_digest
from wal.sync.metrics import MetricsServer, figures_of
from wal.sync.results import Receipt, SyncResult
from wal.sync.status import MANAGER_STATUS_FILE, manager_stats, publish_status

__all__ = ["MANAGER_STATUS_FILE", "Receipt", "SyncResult", "WALManager"]

log = logging.getLogger("wal.sync.manager")

_CRITICAL = frozenset(op.value for op in OperationType)
_UNFINISHED = (WALEntryStatus.PENDING, WALEntryStatus.SYNCING)
_PUBLISH_EVERY = 1.0  # seconds between two manager-status.json views of a busy sync thread
_GATHER_SECONDS = 0.005  # how long a short backlog waits for more entries (apply behind)


class WALManager:
    """Durable writes, immediate or background application, exactly-once replay."""

    def __init__(
        self,
        storage: WALStorage,
        db: Any,
        config: WALConfig | None = None,
        *,
        rng: Callable[[float, float], float] = random.uniform,
        publish_status: bool = True,
    ) -> None:
        self.storage = storage
        self.db = db
        self.config = config if config is not None else WALConfig.from_env()
        # the apply path's own short timeout (WAL_DB_TIMEOUT_MS), when the db supports one
        set_timeout = getattr(db, "set_timeout_ms", None)
        if callable(set_timeout):
            set_timeout(self.config.db_timeout_ms)
        # False: a one-off run (`atb wal sync`) must not overwrite the engine's published view
        self._publish = publish_status
        self._metrics: MetricsServer | None = None
        self._applier = Applier(storage, db, self.config)
        self.breaker = self._applier.breaker
        self.exactly_once = self._applier.exactly_once
        self._rng = rng
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._keys_lock = threading.Lock()
        self._receipts: OrderedDict[str, Receipt] = OrderedDict()
        self._inflight: dict[str, threading.Event] = {}
        self._write_hooks: list[Callable[[WALEntry], None]] = []
        # WAL_APPLY=behind: a write returns once durable in the log; the sync thread applies
        self._behind = self.config.apply_mode == "behind"
        self._published_at = 0.0  # the sync thread's last manager-status.json

    @property
    def maybe_applied(self) -> set[uuid.UUID]:
        """Entries of batches aborted by a transient error: the ledger decides (see apply)."""
        return self._applier.maybe_applied

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
        self.check_arguments(operation, args, kwargs, idempotency_key)  # never durable if bad
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
        """``write`` for asyncio engines: the entry joins the log's group commit on the loop
        (``WALStorage.append_async``: concurrent coroutines share one fsync, done by the
        log's flush thread); the database apply, if the breaker lets it, runs in a worker
        thread. The loop never waits for the disk or the database.

        Cancelling the coroutine does not cancel the write: the entry may still be durable
        and is then applied by the sync thread. With an ``idempotency_key`` the whole keyed
        write runs in a worker thread (it joins the same group commit as a thread appender):
        the key stays claimed until the entry is durable or refused, whatever happens to the
        coroutine, so a retry of the same call waits for it and returns its receipt
        (``duplicate=True``), never a second entry.
        """
        self.check_arguments(operation, args, kwargs, idempotency_key)  # never durable if bad
        entry = WALEntry.create(operation, args, kwargs, idempotency_key)
        if idempotency_key is None:
            return await self._write_new_async(entry)
        # A keyed write runs whole in a worker thread: the key stays claimed until the entry
        # is durable or refused even if this coroutine is cancelled meanwhile (a retry then
        # waits for it and gets its receipt), and it depends on no event loop staying alive.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._apply_executor(), self._write_keyed, entry, idempotency_key
        )

    def check_arguments(
        self,
        operation: str | OperationType,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> None:
        """Refuse, before the log is touched, a call whose arguments the database's columns
        would not take: the database's ``check_arguments`` (the bundled ``DatabaseManager``
        has it: ``wal.db.checks``) raises ``WALArgumentError`` naming the argument. A
        database of your own without it is not checked here."""
        check = getattr(self.db, "check_arguments", None)
        if callable(check):
            op = operation.value if isinstance(operation, OperationType) else str(operation)
            check(op, args, kwargs, idempotency_key)

    async def _write_new_async(self, entry: WALEntry) -> Receipt:
        if self._applier.fatal is not None:
            raise self._applier.fatal
        try:
            e = await self.storage.append_async(entry)  # durable on return
        except WALWriteError as exc:
            self._applier.fatal = exc
            raise
        for hook in self._write_hooks:
            hook(e)
        crash_point("manager.after_append_before_apply")  # durable, not applied, not acknowledged
        if self._behind or self.breaker.state is not BreakerState.CLOSED:
            # durable in the log = acknowledged: the sync thread applies it, reads count it
            self._nudge()
            return self._receipt(e, WALEntryStatus.PENDING)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._apply_executor(), self._apply_through, e)

    def _apply_executor(self) -> ThreadPoolExecutor:
        """The threads that apply ``write_async`` entries to the database (made on first use)."""
        if self._executor is None:
            with self._keys_lock:
                if self._executor is None:
                    # keyed write_async calls wait for their fsync in these threads too
                    self._executor = ThreadPoolExecutor(
                        32, thread_name_prefix="wal-apply", initializer=in_money_context
                    )
        return self._executor

    def add_apply_observer(self, observer: ApplyObserver) -> None:
        """Tell ``observer`` when each batch starts and how it ends (see ``ApplyObserver``)."""
        self._applier.observers.append(observer)

    def add_step_aside(self, pause: Callable[[], None]) -> None:
        """Call ``pause()`` between the steps of each batch (no transaction open): the read
        overlay's ``pause_for_reads``."""
        self._applier.step_aside.append(pause)

    def add_write_hook(self, hook: Callable[[WALEntry], None]) -> None:
        """Call ``hook(entry)`` after each entry is durable (before it is applied)."""
        self._write_hooks.append(hook)

    def _claim(self, key: str) -> Receipt | threading.Event | None:
        """One try at an idempotency key: the first write's receipt (``duplicate=True``), the
        event of the writer that has the key in flight (wait on it, then try again), or None:
        this caller now has the key and must ``_release`` it."""
        with self._keys_lock:
            hit = self._receipts.get(key)
            if hit is not None:
                self._receipts.move_to_end(key)
                return replace(hit, duplicate=True)
            waiting = self._inflight.get(key)
            if waiting is None:
                self._inflight[key] = threading.Event()
            return waiting

    def _release(self, key: str) -> None:
        """Give back a key ``_claim`` handed out; whoever waits on it tries again."""
        with self._keys_lock:
            done = self._inflight.pop(key)
        done.set()

    def _logged(self, key: str) -> Receipt | None:
        """The receipt of an entry the log already holds under ``key`` (a key evicted from the
        receipt cache, or written before a restart), ``duplicate=True``; None if there is none."""
        found = self.storage.find_by_idempotency_key(key)
        if found is None:
            return self._applied_before(key)
        receipt = replace(self._keyed(self._receipt(found, found.status), found), duplicate=True)
        self._remember(key, receipt)
        return receipt

    def _applied_before(self, key: str) -> Receipt | None:
        """A key the log does not hold: never written, or its entry compacted away. Once the
        log dropped entries, the database's key ledger (``wal_applied_keys``) is asked: an
        applied key is a duplicate (its receipt as the ledger knows it), never written and
        counted again. With the database unreachable the call is written, and the apply
        skips it if the key was applied (reads count it until then: docs/database.md)."""
        applied_key = getattr(self._applier.db, "applied_key", None)
        if applied_key is None or not self.storage.may_have_dropped():
            return None
        try:
            row = applied_key(key)
        except Exception as exc:  # an outage: the ledger decides at apply
            log.warning("idempotency key %r not checked against the database: %s", key, exc)
            return None
        if row is None:
            return None
        entry_id, lsn, operation, _ = row
        receipt = Receipt(
            uuid.UUID(entry_id), lsn or 0, operation, key, WALEntryStatus.COMPLETED, duplicate=True
        )
        self._remember(key, receipt)
        return receipt

    @staticmethod
    def _keyed(receipt: Receipt, e: WALEntry) -> Receipt:
        """``receipt`` of the keyed entry ``e`` with what a retry under its key is compared
        with (``check_same_request``)."""
        op = e.operation
        if op not in TRADING_OPERATIONS:
            return receipt  # the order journal's keys are its own: never compared
        id_param, time_param = ID_PARAMS.get(op), TIME_PARAMS.get(op)
        return replace(
            receipt,
            request=request_digest(op, e.args, e.kwargs),
            made_id=e.kwargs.get(id_param) if id_param else None,
            made_at=e.kwargs.get(time_param) if time_param else None,
        )

    def _write_keyed(self, entry: WALEntry, key: str) -> Receipt:
        while (got := self._claim(key)) is not None:
            if isinstance(got, Receipt):
                return got
            got.wait()  # another thread is writing this key; then take its receipt
        try:
            known = self._logged(key)
            if known is not None:
                return known
            receipt = self._keyed(self._write_new(entry), entry)
            self._remember(key, receipt)
            return receipt
        finally:
            self._release(key)

    def write_deferred(
        self, calls: list[tuple[str | OperationType, dict[str, Any], str | None]]
    ) -> list[Receipt]:
        """Log ``(operation, kwargs, idempotency_key)`` calls durably as ONE group (one write,
        one fsync), in order, and leave them to the sync thread: nothing is applied in this
        thread, so the caller waits for the log and never for the database. Readers see them
        through the overlay (pending entries) until they are applied.

        A call whose key is already in the log (or being written) is not written again: its
        receipt is the first write's, ``duplicate=True``. All or none of the new entries are
        acknowledged; ``WALWriteError`` halts trading as in ``write``.
        """
        for op, kw, key in calls:
            self.check_arguments(op, (), kw, key)  # bad input is never durable: none is written
        entries = [WALEntry.create(op, (), kw, key) for op, kw, key in calls]
        keys = sorted({e.idempotency_key for e in entries if e.has_explicit_key})
        claimed: list[str] = []
        known: dict[str, Receipt] = {}
        try:
            for key in keys:  # sorted: two batches never wait on each other in a cycle
                while (got := self._claim(key)) is not None:
                    if isinstance(got, Receipt):
                        known[key] = got
                        break
                    got.wait()  # another thread is writing this key; then its receipt
                else:
                    claimed.append(key)
            for key in claimed:
                logged = self._logged(key)
                if logged is not None:
                    known[key] = logged
            fresh: list[WALEntry] = []
            fresh_keys: set[str] = set()
            for e in entries:
                if not e.has_explicit_key:
                    fresh.append(e)
                elif e.idempotency_key not in known and e.idempotency_key not in fresh_keys:
                    fresh_keys.add(e.idempotency_key)  # a key twice in one batch: one entry
                    fresh.append(e)
            by_key: dict[str, Receipt] = dict(known)
            written: dict[uuid.UUID, Receipt] = {}
            if fresh:
                if self._applier.fatal is not None:
                    raise self._applier.fatal
                try:
                    durable = self.storage.append_many(fresh)  # one fsync for the group
                except WALWriteError as exc:
                    self._applier.fatal = exc
                    raise
                for d in durable:
                    for hook in self._write_hooks:
                        hook(d)
                    r = written[d.entry_id] = self._receipt(d, WALEntryStatus.PENDING)
                    if d.has_explicit_key:
                        by_key[d.idempotency_key] = r
                        self._remember(d.idempotency_key, r)
                self._nudge()  # the sync thread applies them now
            return [
                written.get(e.entry_id) or replace(by_key[e.idempotency_key], duplicate=True)
                for e in entries
            ]
        finally:
            for key in claimed:
                self._release(key)

    def _remember(self, key: str, receipt: Receipt) -> None:
        with self._keys_lock:
            self._receipts[key] = receipt
            self._receipts.move_to_end(key)
            while len(self._receipts) > self.config.idempotency_cache_size:
                self._receipts.popitem(last=False)

    def _write_new(self, entry: WALEntry) -> Receipt:
        if self._applier.fatal is not None:
            raise self._applier.fatal
        try:
            e = self.storage.append(entry)  # durable on return; a WALWriteError halts trading
        except WALWriteError as exc:
            self._applier.fatal = exc
            raise
        for hook in self._write_hooks:
            hook(e)
        crash_point("manager.after_append_before_apply")  # durable, not applied, not acknowledged
        if self._behind or self.breaker.state is not BreakerState.CLOSED:
            # durable in the log = acknowledged: the sync thread applies it, reads count it
            self._nudge()
            return self._receipt(e, WALEntryStatus.PENDING)
        return self._apply_through(e)

    def _nudge(self) -> None:
        """Wake the sync thread for new entries, unless it is woken already or could not
        apply them anyway: with the breaker open its own timer wakes it for the probe (a
        wake per write would only spin it, and take the interpreter from the writers)."""
        if not self._wake.is_set() and self.breaker.state is not BreakerState.OPEN:
            self._wake.set()

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
        with self._applier.apply_lock:
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
                outcomes = self._applier.apply_batch(batch)
            except BatchAborted:
                self._wake.set()
                return self._receipt(e, WALEntryStatus.PENDING)
        out = outcomes[e.entry_id]
        receipt = self._receipt(e, out.status, out.result, out.error)
        # the database already had its effect (its key applied before, e.g. before compaction)
        return replace(receipt, duplicate=True) if out.duplicate else receipt

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

    # ------------------------------------------------------------------ draining

    def force_sync(self) -> SyncResult:
        """Drain now, in this thread, ignoring the breaker's cooldown. Returns counts."""
        return self._applier.drain(force=True)

    def drain(self, timeout: float | None = None) -> int:
        """Apply pending entries until none is left or ``timeout`` seconds passed (None: no
        limit; 0: one pass). Returns how many are left: 0 means every entry was applied (or
        became a dead letter, see ``get_stats()["failed"]``). Retries with backoff while the
        database is unreachable. Raises ``WALWriteError`` if the log failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            if self._applier.fatal is not None:
                raise self._applier.fatal
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

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        """Start the background sync thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._applier.stopping.clear()
        self._thread = threading.Thread(target=self._run, name="wal-sync", daemon=True)
        self._thread.start()
        self._wake.set()  # replay what a previous run left pending, now
        if self.config.metrics_port is not None and self._metrics is None:
            try:
                self._start_metrics(self.config.metrics_port, self.config.metrics_address)
            except OSError as exc:  # monitoring must never stop trading
                log.error(
                    "cannot serve metrics on %s:%d (WAL_METRICS_PORT): %s",
                    self.config.metrics_address,
                    self.config.metrics_port,
                    exc,
                )

    def stop(self, timeout: float | None = 10.0, *, drain: bool = False) -> int:
        """Stop the thread (waiting up to ``timeout`` for it). Whatever is not applied stays
        durable in the log. ``drain=True`` first drains (``drain(timeout)``, retrying while
        the database is down); applying behind, a running manager makes one last pass
        otherwise (while the breaker lets it). Returns how many entries are left pending."""
        left = self.drain(timeout) if drain else 0
        if not drain and self._behind and self._applier.fatal is None and self.running:
            # applied behind, the last calls are usually still pending: one pass while the
            # database is reachable (the breaker decides), so a clean stop leaves none
            try:
                self._applier.drain()
            except Exception:  # the entries stay durable in the log; the next start applies
                log.exception("the last pass before stopping failed")
        self._applier.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._metrics is not None:
            metrics, self._metrics = self._metrics, None
            self.storage.fsync_observers.remove(metrics.observe_fsync)
            self._write_hooks.remove(metrics.count_append)
            metrics.close()
        self._publish_status()
        if not drain:
            try:
                left = self.storage.count(WALEntryStatus.PENDING) + self.storage.count(
                    WALEntryStatus.SYNCING
                )
            except WALError:  # the log is already closed: stopped twice
                left = 0
        return left

    def reapply_lost(self) -> bool:
        """Check, once per process, that the database still has every COMPLETED entry the
        log holds, and apply again those it lost (``Applier.reapply_lost``: a database
        restored from a backup or failed over to a lagging replica). True once done (or not
        needed: no ledger); False while the database cannot be reached (tried again before
        the next batch or read)."""
        applier = self._applier
        if applier.reconciled and not applier.recheck:
            return True
        with applier.apply_lock:
            try:
                applier.reapply_lost()
            except BatchAborted:
                return False
        return True

    def database_suspect(self) -> None:
        """A read could not reach the database: check it before the next batch or read
        (``Applier.database_suspect``)."""
        self._applier.database_suspect()

    def take_lost_commits(self) -> bool:
        """True once after a new connection found that the database lost commits (then the
        next ``reapply_lost`` applies them again): a read tries again instead of failing."""
        applier = self._applier
        found, applier.lost_commits = applier.lost_commits, False
        return found

    @property
    def database_epoch(self) -> int:
        """Bumped each time the database may have changed (an outage, for a manager without
        an engine: the bundled one's connections are checked as they are made)."""
        return self._applier.epoch

    @property
    def reapplied(self) -> int:
        """Entries ``reapply_lost`` found missing from the database and applied again."""
        return self._applier.reapplied

    def wake(self) -> None:
        """Ask the sync thread for a pass now."""
        self._wake.set()

    @property
    def apply_lock(self) -> threading.RLock:
        """Held while entries are applied; hold it to see the database and the log agree."""
        return self._applier.apply_lock

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @exact  # the thread's decimal context is the money context, never DefaultContext's copy
    def _run(self) -> None:
        while not self._applier.stopping.is_set():
            self._wake.wait(self._next_delay())
            self._wake.clear()
            if self._applier.stopping.is_set():
                break
            self._gather()
            try:
                self._applier.drain(until_short=self._behind)
            except WALWriteError as exc:
                self._applier.fatal = exc
                log.critical("the log failed; the sync thread stops: %s", exc)
                break
            except Exception:
                log.exception("sync pass failed")
            now = time.monotonic()
            if now - self._published_at >= _PUBLISH_EVERY:
                # a pass per burst of writes (or per write during an outage): the status view
                # is refreshed once a second at most; stop() publishes the last one
                self._published_at = now
                self._publish_status()

    def _gather(self) -> None:
        """Applying behind, a short backlog waits ``_GATHER_SECONDS`` for more entries before
        its batch starts: one database commit (an fsync) per few calls instead of one per
        call, which at one writer thread otherwise halves the calls' rate (the two fsyncs
        share the disk). A backlog of a full batch starts at once; reads count pending entries
        meanwhile, and ``drain()`` never waits."""
        if not self._behind or self._applier.attempt:
            return
        backlog = self.storage.count(WALEntryStatus.PENDING)
        if 0 < backlog < self.config.batch_size:
            self._applier.stopping.wait(_GATHER_SECONDS)

    def _next_delay(self) -> float:
        if self._applier.attempt == 0:
            return self.config.sync_interval
        delay = backoff_delay(
            self._applier.attempt - 1,
            self.config.backoff_base_seconds,
            self.config.backoff_max_seconds,
            self._rng,
        )
        return max(delay, self.breaker.seconds_until_probe())

    # ------------------------------------------------------------------ observing

    def get_stats(self) -> dict[str, Any]:
        """Pending, failed, oldest pending age, last sync and error, breaker, rates."""
        return manager_stats(self._applier, running=self.running)

    def _publish_status(self) -> None:
        """Write ``manager-status.json`` for ``atb wal status`` in another process."""
        if self._publish:
            publish_status(self.storage, self.get_stats)

    # ------------------------------------------------------------------ metrics

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` is served on while running (None: not served)."""
        return None if self._metrics is None else self._metrics.port

    def _start_metrics(self, port: int, address: str) -> None:
        def read() -> dict[str, Any]:
            return figures_of(self.storage.get_stats().to_dict(), self.get_stats())

        self._metrics = MetricsServer(read, port, address)
        self.storage.fsync_observers.append(self._metrics.observe_fsync)
        self._write_hooks.append(self._metrics.count_append)
        log.info("serving metrics on http://%s:%d/metrics", address, self._metrics.port)
