"""``WALManager`` on real databases (SQLite and PostgreSQL; nothing mocks the database).

Outages are real (``trading_child.Outage``: PostgreSQL crashed with ``pg_ctl stop -m
immediate``; SQLite locked by another connection). The log's own failure (EIO on fdatasync)
is injected through a ``FileOps``, because a real one cannot be produced on demand.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers_log import CountingFileOps, wait_for
from trading_child import (
    Model,
    Op,
    Outage,
    db_state,
    fast_config,
    ledger_count,
    make_outage,
    make_plan,
)

from wal import WALEntry, WALEntryStatus, WALStorage, WALWriteError
from wal.db import DatabaseManager
from wal.log.fileops import FileOps, OSFileOps
from wal.sync.breaker import BreakerState
from wal.sync.identity import check_before_apply
from wal.sync.manager import Receipt, WALManager

D = Decimal


@dataclass
class Rig:
    """A database (with its outage switch) and managers on one log directory."""

    url: str
    outage: Outage
    directory: Path
    db: DatabaseManager
    managers: list[WALManager] = field(default_factory=list)

    def open(self, fs: FileOps | None = None, **overrides: Any) -> WALManager:
        # these tests are about the inline apply (WAL_APPLY=inline): the write applies
        cfg = fast_config(self.directory, self.url, **{"apply_mode": "inline", **overrides})
        storage = WALStorage(cfg.directory, cfg.storage_options(), fs=fs)
        m = WALManager(storage, self.db, cfg)
        self.managers.append(m)
        return m

    def close(self, m: WALManager) -> None:
        m.stop()
        m.storage.close()


@pytest.fixture
def rig(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    outage = make_outage(db_url, request)
    r = Rig(db_url, outage, tmp_path / "wal", outage.attach(DatabaseManager(db_url)))
    yield r
    outage.close()
    for m in r.managers:
        r.close(m)
    r.db.dispose()


def write_op(m: WALManager, op: Op) -> Receipt:
    return m.write(op.method, idempotency_key=op.key, **op.kwargs)


def deposit(m: WALManager, amount: str, key: str | None = None) -> Receipt:
    return m.write(
        "atomic_balance_update",
        delta=D(amount),
        reason="test",
        account="main",
        idempotency_key=key,
    )


# --------------------------------------------------------------------------- writing


def test_write_applies_at_once_and_returns_the_result(rig: Rig) -> None:
    m = rig.open()
    r = deposit(m, "12.50")
    assert (r.status, r.applied, r.pending, r.duplicate) == (
        WALEntryStatus.COMPLETED,
        True,
        False,
        False,
    )
    assert r.result == D("12.50") and r.lsn == 1
    t = m.write(
        "log_trade",
        trade_id="t-1",
        symbol="BTCUSDT",
        side="buy",
        quantity=D("0.5"),
        price=D("64000.1"),
    )
    assert t.applied and t.result == "t-1"
    assert rig.db.get_balance("main") == D("12.50")
    assert [x["trade_id"] for x in rig.db.get_trades()] == ["t-1"]
    assert m.storage.get_entry(r.entry_id).status is WALEntryStatus.COMPLETED
    assert ledger_count(rig.db) == 2
    assert m.get_stats()["pending"] == 0


class _NoLedger:
    """The reference database without ``apply``: the manager falls back to at-least-once."""

    def __init__(self, inner: DatabaseManager) -> None:
        self.inner = inner

    def atomic_balance_update(self, delta: Decimal, *, reason: str, account: str) -> Decimal:
        return self.inner.atomic_balance_update(delta, reason=reason, account=account)


@pytest.mark.parametrize("ledger", [True, False])
def test_completed_marks_need_their_own_fsync_only_without_the_ledger(
    rig: Rig, ledger: bool
) -> None:
    fs = CountingFileOps()
    cfg = fast_config(rig.directory, rig.url, apply_mode="inline")
    storage = WALStorage(cfg.directory, cfg.storage_options(), fs=fs)
    m = WALManager(storage, rig.db if ledger else _NoLedger(rig.db), cfg)
    rig.managers.append(m)
    assert m.exactly_once is ledger
    # the log records its database before the first batch (database.json, written through
    # the log's file operations: an fsync of its own, once, not part of what is measured)
    check_before_apply(storage.directory, rig.db, storage)
    before = fs.count("fdatasync")
    assert deposit(m, "5").applied
    # with the ledger a lost COMPLETED mark only causes a replay the ledger skips: it rides on
    # the next fsync; without it, SYNCING and COMPLETED are each durable before they count
    assert fs.count("fdatasync") - before == (1 if ledger else 3)
    e = storage.get_entry(next(iter(storage.iter_entries())).entry_id)
    assert e.status is WALEntryStatus.COMPLETED
    assert deposit(m, "1").applied  # its append's fsync makes the first mark durable too
    assert fs.count("fdatasync") - before == (2 if ledger else 6)


def test_a_repeated_key_returns_the_first_receipt_and_writes_nothing(rig: Rig) -> None:
    m = rig.open(idempotency_cache_size=2)
    first = [deposit(m, amount, key=f"k{amount}") for amount in ("1", "2", "3")]
    next_lsn = m.storage.next_lsn
    # k1 was evicted from the two-key cache: the log answers; k3 is still cached
    for original, amount in ((first[0], "1"), (first[2], "3")):
        again = deposit(m, "1000", key=f"k{amount}")  # different content, same intent
        assert again.duplicate and again.entry_id == original.entry_id
        assert (again.lsn, again.status) == (original.lsn, WALEntryStatus.COMPLETED)
    assert m.storage.next_lsn == next_lsn  # nothing was logged
    assert rig.db.get_balance("main") == D(6)

    # eight threads retrying one intent at once: one entry
    barrier = threading.Barrier(8)
    receipts: list[Receipt] = []

    def retry() -> None:
        barrier.wait()
        receipts.append(deposit(m, "10", key="same-intent"))

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.entry_id for r in receipts}) == 1
    assert sum(not r.duplicate for r in receipts) == 1
    assert rig.db.get_balance("main") == D(16)

    # after a restart the key is found in the log
    rig.close(m)
    m2 = rig.open(idempotency_cache_size=2)
    again = deposit(m2, "1000", key="k2")
    assert again.duplicate and again.entry_id == first[1].entry_id
    assert m2.storage.next_lsn == next_lsn + 2  # the "same-intent" entry and its status
    assert rig.db.get_balance("main") == D(16)
    assert ledger_count(rig.db) == 4


def test_a_permanent_error_is_retried_then_dead_lettered_and_later_entries_apply(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wal.sync.manager")
    m = rig.open(max_retries=3)
    bad = m.write("update_position", position_id="no-such-position", current_price=D("1"))
    assert bad.status is WALEntryStatus.PENDING and bad.error is not None
    assert "no-such-position" in bad.error
    ok = deposit(m, "5")  # applied although an older entry is stuck
    assert ok.applied
    for _ in range(3):
        if m.storage.get_entry(bad.entry_id).status is WALEntryStatus.FAILED:
            break
        m.force_sync()
    dead = m.storage.get_entry(bad.entry_id)
    assert dead.status is WALEntryStatus.FAILED
    assert dead.attempts == 3 and dead.last_error and "no-such-position" in dead.last_error
    stats = m.get_stats()
    assert (stats["failed"], stats["failed_total"], stats["pending"]) == (1, 1, 0)
    later = deposit(m, "7")
    assert later.applied and rig.db.get_balance("main") == D(12)
    again = m.force_sync()
    assert (again.applied, again.failed, again.errors, again.pending) == (0, 0, 0, 0)
    assert m.storage.get_entry(bad.entry_id).attempts == 3  # a dead letter is not retried
    assert ledger_count(rig.db) == 2
    assert sum("dead letter" in r.message for r in caplog.records) == 1


def test_transient_errors_never_use_up_retries(rig: Rig) -> None:
    m = rig.open(max_retries=2)
    assert deposit(m, "1").applied
    rig.outage.begin()
    receipts = [deposit(m, str(n)) for n in (2, 3, 4)]
    assert all(r.pending for r in receipts)
    for _ in range(4):  # twice max_retries
        r = m.force_sync()
        assert r.error is not None and (r.applied, r.failed, r.errors, r.pending) == (0, 0, 0, 3)
    assert m.breaker.state is BreakerState.OPEN
    for rec in receipts:
        e = m.storage.get_entry(rec.entry_id)
        assert (e.status, e.attempts) == (WALEntryStatus.PENDING, 0)
    assert m.get_stats()["failed"] == 0
    rig.outage.end()
    r = m.force_sync()
    assert (r.applied, r.failed, r.pending, r.error) == (3, 0, 0, None)
    assert rig.db.get_balance("main") == D(10)
    assert m.get_stats()["breaker_state"] == "closed"


def test_an_outage_is_one_short_line_in_the_log_and_the_status(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wal.sync.manager")
    m = rig.open()
    assert deposit(m, "1").applied
    rig.outage.begin()
    assert deposit(m, "2").pending
    lines = [r.getMessage() for r in caplog.records if "database unavailable" in r.getMessage()]
    assert lines, "the outage is logged"
    for line in lines:
        # what failed, once: no SQL dump, no documentation links, no operator hint that
        # would point `atb wal status` at itself
        assert len(line) <= 260, line
        assert "atb wal status" not in line and "sqlalche.me" not in line and "\n" not in line
    last = m.get_stats()["last_error"]
    assert last is not None and len(last) <= 200 and "atb wal status" not in last


# --------------------------------------------------------------------------- lifecycle


def test_stop_leaves_pending_entries_durable_and_a_new_manager_drains_them(rig: Rig) -> None:
    plan = make_plan(seed=3, n=30)
    m = rig.open()
    m.start()
    m.start()  # idempotent
    assert m.running
    for op in plan[:10]:
        assert write_op(m, op).applied
    rig.outage.begin()
    for op in plan[10:]:
        assert write_op(m, op).pending
    m.stop()
    m.stop()  # idempotent
    assert not m.running
    m.storage.close()
    rig.outage.end()
    model = Model().apply_all(plan)
    assert db_state(rig.db) != model.state()  # the last 20 operations are only in the log

    m2 = rig.open()
    assert m2.storage.count(WALEntryStatus.PENDING) == 20
    m2.start()
    wait_for(lambda: m2.get_stats()["pending"] == 0, "the new manager to drain the log")
    assert db_state(rig.db) == model.state()
    assert ledger_count(rig.db) == 30
    assert m2.get_stats()["applied_total"] == 20


def test_force_sync_counts(rig: Rig) -> None:
    m = rig.open()
    rig.outage.begin()
    for n in range(4):
        assert deposit(m, f"{n}.25").pending
    bad = m.write("close_position", position_id="ghost", exit_price=D("2"))
    assert bad.pending
    r = m.force_sync()
    assert (r.applied, r.duplicates, r.failed, r.errors, r.pending) == (0, 0, 0, 0, 5)
    assert r.error is not None and r.seconds >= 0
    rig.outage.end()
    r = m.force_sync()
    assert (r.applied, r.duplicates, r.failed, r.errors, r.pending, r.error) == (
        4,
        0,
        0,
        1,
        1,
        None,
    )
    assert set(r.to_dict()) == {
        "applied",
        "duplicates",
        "failed",
        "errors",
        "pending",
        "seconds",
        "error",
    }
    r = m.force_sync()  # only the bad entry is left; it is tried again
    assert (r.applied, r.errors, r.pending) == (0, 1, 1)
    assert rig.db.get_balance("main") == D("7.00")
    assert m.get_stats()["applied_total"] == 4


# --------------------------------------------------------------------------- asyncio


class HeartbeatGatedDB(DatabaseManager):
    """The reference manager whose ``apply`` first waits for the event loop's heartbeat.

    If ``write_async`` ran the write on the event loop, the heartbeat could not tick while
    it waits, and the wait would time out: the test fails instead of hanging.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.beat = threading.Event()

    def apply(self, entries: Any) -> Any:
        assert self.beat.wait(15), "the event loop was blocked: the heartbeat never ticked"
        return super().apply(entries)


def test_write_async_never_blocks_the_event_loop(rig: Rig) -> None:
    rig.db.dispose()
    db = HeartbeatGatedDB(rig.url)
    rig.db = rig.outage.attach(db)
    m = rig.open()
    done = threading.Event()
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            if ticks == 20:
                db.beat.set()
            await asyncio.sleep(0)

    async def trade() -> list[Receipt]:
        beat = asyncio.ensure_future(heartbeat())
        try:
            return await asyncio.gather(
                *(
                    m.write_async(
                        "atomic_balance_update", delta=D(n), reason="async", account="main"
                    )
                    for n in range(50)
                )
            )
        finally:
            done.set()
            await beat

    receipts = asyncio.run(trade())
    assert ticks >= 20
    assert len({r.entry_id for r in receipts}) == 50
    m.force_sync()
    assert rig.db.get_balance("main") == D(sum(range(50)))
    assert ledger_count(rig.db) == 50


class GateFS(OSFileOps):
    """The real file system; once armed, the first fdatasync waits until ``expected``
    appends have started, so that the others queue behind it (group commit's best case,
    made certain instead of likely)."""

    def __init__(self) -> None:
        self.armed = False
        self.expected = 0
        self.entered = 0
        self.lock = threading.Condition()

    def note_append(self) -> None:
        with self.lock:
            self.entered += 1
            self.lock.notify_all()

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            with self.lock:
                self.lock.wait_for(lambda: self.entered >= self.expected, timeout=15)
        super().fdatasync(fd)


def test_concurrent_writers_share_fsyncs(rig: Rig) -> None:
    fs = GateFS()
    m = rig.open(fs=fs, breaker_failure_threshold=1)
    append_async = m.storage.append_async

    async def counted_append(e: WALEntry) -> WALEntry:
        fs.note_append()
        return await append_async(e)

    m.storage.append_async = counted_append  # type: ignore[method-assign]
    rig.outage.begin()
    assert deposit(m, "1").pending  # the breaker opens: no status records from here on
    assert m.breaker.state is BreakerState.OPEN
    fs.entered, fs.expected, fs.armed = 0, 50, True
    before = m.storage.get_stats().fsync_count

    async def trade() -> list[Receipt]:
        return await asyncio.gather(
            *(
                m.write_async("atomic_balance_update", delta=D(1), reason="x", account="main")
                for _ in range(50)
            )
        )

    receipts = asyncio.run(trade())
    fsyncs = m.storage.get_stats().fsync_count - before
    assert all(r.pending for r in receipts)
    assert fsyncs < 10, f"50 concurrent writes took {fsyncs} fsyncs"
    rig.outage.end()
    assert m.force_sync().applied == 51
    assert rig.db.get_balance("main") == D(51)


# --------------------------------------------------------------------------- log failure


class EIOAfterArming(OSFileOps):
    """The real file system, except that fdatasync fails with EIO while ``failing``."""

    failing = False

    def fdatasync(self, fd: int) -> None:
        if self.failing:
            raise OSError(errno.EIO, "Input/output error (injected)")
        super().fdatasync(fd)


def test_a_log_write_error_raises_and_nothing_reaches_the_database(rig: Rig) -> None:
    fs = EIOAfterArming()
    m = rig.open(fs=fs)
    m.start()
    assert deposit(m, "1").applied
    fs.failing = True
    with pytest.raises(WALWriteError):
        deposit(m, "2")
    fs.failing = False  # the log stays refused: an fsync error is never retried
    with pytest.raises(WALWriteError):
        deposit(m, "4")
    m.force_sync()
    assert m.get_stats()["log_failed"] is not None
    assert rig.db.get_balance("main") == D(1)
    assert ledger_count(rig.db) == 1
    rig.close(m)
    # Reopened: the refused entry's bytes may have reached the file (the write succeeded,
    # the fsync did not). It was never acknowledged, so it may be applied at most once.
    m2 = rig.open()
    m2.force_sync()
    assert rig.db.get_balance("main") in (D(1), D(3))
    assert ledger_count(rig.db) == m2.storage.count(WALEntryStatus.COMPLETED)


# --------------------------------------------------------------------------- alerts


def test_alerts_warn_once_per_crossing(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="wal.sync.manager")
    m = rig.open(pending_alert_threshold=2, pending_alert_age_seconds=0.001)

    def count(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records)

    for crossing in (1, 2):
        rig.outage.begin()
        for n in range(3):
            deposit(m, str(n))
        wait_for(
            lambda: (m.storage.get_stats().oldest_pending_age_seconds or 0) > 0.001,
            "the oldest entry to age",
        )
        for _ in range(3):
            assert m.force_sync().pending == 3
        assert count("entries pending (threshold 2)") == crossing
        assert count("the oldest pending entry is") == crossing
        rig.outage.end()
        assert m.force_sync().pending == 0  # back under: the next crossing warns again
    assert rig.db.get_balance("main") == D(6)
