"""Idempotency keys: one effect per key, on every path, across cancellation, compaction and
restarts (issue 20, item 4).

* A key is claimed from the moment its entry is staged until it is durable or refused: a
  ``write_async`` cancelled while its entry is staged, then retried with the same key, is
  one entry (the issue's 30 keyed deposits of 1 gave 60).
* The database keeps every applied entry's key beside the ``wal_applied`` ledger (unique,
  ``wal_applied_keys``): after compaction drops the entry and the process restarts, a re-sent
  key is skipped by the apply (sync, async, ``write_deferred``; the receipt says
  ``duplicate``), and even entries that reach the log twice under one key (appended straight
  to the storage) are applied once.
* ``append_many_async([e, e])`` is refused like ``append_many``: nothing is written.

Real parts: log directories, a SQLite file or the PostgreSQL fixture, real restarts (the
whole stack closed and opened again from the files and the database).
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from trading_child import fast_config

from wal import DurableDatabaseManager, WALEntryStatus, WALStorage
from wal.db import DatabaseManager
from wal.entry import WALEntry
from wal.errors import WALDatabaseError
from wal.sync.results import Receipt
from wal.tools.bench_calls import DOWN_URL


class Stack:
    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.open()

    def open(self) -> None:
        config = fast_config(self.root / "wal", self.url, apply_mode="inline")  # receipts
        self.db = DatabaseManager(self.url)
        self.storage = WALStorage(config.directory, config.storage_options())
        self.ddb = DurableDatabaseManager(self.db, config=config, storage=self.storage)
        self.ddb.start()

    def close(self) -> None:
        self.ddb.stop()
        self.storage.close()
        self.db.dispose()

    def restart(self) -> None:
        self.close()
        self.open()

    @property
    def manager(self):  # type: ignore[no-untyped-def]
        assert self.ddb.manager is not None
        return self.ddb.manager


@pytest.fixture
def stack(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Stack(tmp_path, db_url)
    yield s
    s.close()


def test_a_cancelled_keyed_write_async_then_retried_is_one_entry(stack: Stack) -> None:
    async def one(i: int) -> None:
        key = f"dep-{i}"
        first = asyncio.ensure_future(
            stack.ddb.manager.write_async(  # type: ignore[union-attr]
                "atomic_balance_update", delta=Decimal(1), account="a", idempotency_key=key
            )
        )
        for _ in range(i % 4):  # cancel at different moments of the write
            await asyncio.sleep(0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        # the docstring's advice: retry with the same key
        await stack.manager.write_async(
            "atomic_balance_update", delta=Decimal(1), account="a", idempotency_key=key
        )

    async def run() -> None:
        await asyncio.gather(*(one(i) for i in range(30)))

    asyncio.run(run())
    assert stack.ddb.drain(timeout=10) == 0
    assert stack.ddb.get_balance("a") == Decimal(30)
    assert stack.db.get_balance("a") == Decimal(30)
    assert stack.storage.count(WALEntryStatus.COMPLETED) == 30


def _compact_and_restart(stack: Stack) -> None:
    assert stack.ddb.drain(timeout=10) == 0
    stack.storage.compact(0)
    stack.restart()
    assert stack.storage.find_by_idempotency_key("fill:EXEC-1") is None  # the log forgot it


def _deposit(stack: Stack, how: str) -> Receipt:
    kw = {"delta": Decimal(7), "account": "a", "reason": "fill"}
    if how == "sync":
        return stack.manager.write("atomic_balance_update", idempotency_key="fill:EXEC-1", **kw)
    if how == "async":

        async def go() -> Receipt:
            return await stack.manager.write_async(
                "atomic_balance_update", idempotency_key="fill:EXEC-1", **kw
            )

        return asyncio.run(go())
    [receipt] = stack.manager.write_deferred([("atomic_balance_update", kw, "fill:EXEC-1")])
    return receipt


@pytest.mark.parametrize("how", ["sync", "async", "deferred"])
def test_a_key_is_remembered_after_compaction_and_a_restart(stack: Stack, how: str) -> None:
    _deposit(stack, how)
    _compact_and_restart(stack)
    again = _deposit(stack, how)  # re-sent after the restart
    if how != "deferred":  # applied at once: the database's key ledger said it was done
        assert again.applied and again.duplicate
    assert stack.db.applied_key("fill:EXEC-1") is not None  # "ask before redoing", after all
    assert stack.ddb.drain(timeout=10) == 0
    assert stack.db.get_balance("a") == Decimal(7)
    assert stack.ddb.get_balance("a") == Decimal(7)
    assert stack.storage.count(WALEntryStatus.PENDING) == 0


def test_a_key_in_the_log_twice_is_applied_once(stack: Stack) -> None:
    """Entries that reach the log under one key (appended straight to the storage, or written
    while the database could not be asked): the database's key ledger applies one."""
    stack.ddb.stop()  # no sync thread: both are in the log before anything is applied
    stack.storage.close()
    stack.db.dispose()
    config = fast_config(stack.root / "wal", stack.url)
    with WALStorage(config.directory, config.storage_options()) as raw:
        kw = {"delta": Decimal(5), "account": "a", "reason": ""}
        raw.append_many(
            [
                WALEntry.create("atomic_balance_update", (), kw, "k-1"),
                WALEntry.create("atomic_balance_update", (), kw, "k-1"),
            ]
        )
        raw.append(WALEntry.create("atomic_balance_update", (), kw, "k-1"))
    stack.open()
    assert stack.ddb.drain(timeout=10) == 0
    assert stack.db.get_balance("a") == Decimal(5)
    assert stack.ddb.get_balance("a") == Decimal(5)


def test_append_many_async_refuses_the_same_entry_twice(tmp_path: Path) -> None:
    with WALStorage(tmp_path / "wal") as log:
        e = WALEntry.create("atomic_balance_update", (), {"delta": Decimal(1)}, "k")

        async def go() -> None:
            with pytest.raises(ValueError, match="same entry twice"):
                await log.append_many_async([e, e])

        asyncio.run(go())
        assert log.next_lsn == 1
        assert list(log.get_pending_entries()) == []


def test_find_by_key_after_compaction_asks_the_ledger_and_never_says_redo_blindly(
    stack: Stack, tmp_path: Path
) -> None:
    """After compaction dropped a key's entry, ``find_by_idempotency_key`` (the documented
    "ask before redoing") answers from the database's ledger, not "never acknowledged"; a
    key never used is still None; and with the database unreachable it raises instead of
    answering None (a redo then would count twice until the database is back)."""
    _deposit(stack, "sync")
    assert stack.ddb.find_by_idempotency_key("fill:EXEC-1") is not None  # the log's entry
    assert not stack.storage.may_have_dropped()
    _compact_and_restart(stack)
    assert stack.storage.may_have_dropped()
    found = stack.ddb.find_by_idempotency_key("fill:EXEC-1")
    assert found is not None and found.status is WALEntryStatus.COMPLETED
    assert found.operation == "atomic_balance_update" and found.idempotency_key == "fill:EXEC-1"
    assert found.lsn is not None and found.lsn >= 1
    assert stack.ddb.find_by_idempotency_key("fill:EXEC-2") is None  # never used
    stack.close()
    down = DatabaseManager(DOWN_URL)  # nothing listens there: the database is unreachable
    config = fast_config(stack.root / "wal", DOWN_URL)
    ddb = DurableDatabaseManager(down, config=config)
    try:
        with pytest.raises(WALDatabaseError, match="cannot tell") as info:
            ddb.find_by_idempotency_key("fill:EXEC-1")
        assert info.value.transient
    finally:
        ddb.stop()
        down.dispose()
        stack.open()  # for the fixture's close


def _position(stack: Stack, key: str) -> str:
    pid: str = stack.ddb.log_position(
        symbol="BTCUSDT",
        side="long",
        quantity=Decimal("0.1"),
        entry_price=Decimal(50_000),
        idempotency_key=key,
    )
    return pid


def test_a_retried_keyed_call_returns_the_first_calls_id_whatever_the_log_still_holds(
    stack: Stack,
) -> None:
    """A retry (same key, same call) answers the first call's id: from the receipt cache,
    from the log after a restart, and from the key alone after compaction (the id a keyed
    call gets is made from the operation and the key). Before, each retry returned a new id
    that was never logged: closing the position by it was a dead letter, the position open
    for good."""
    first = _position(stack, "open-1")
    assert _position(stack, "open-1") == first  # the receipt cache
    tid = stack.ddb.log_trade(
        symbol="BTCUSDT", side="buy", quantity=Decimal(1), price=Decimal(9), idempotency_key="t-1"
    )

    async def again() -> tuple[str, str]:
        a = await stack.ddb.log_position_async(
            symbol="BTCUSDT",
            side="long",
            quantity=Decimal("0.1"),
            entry_price=Decimal(50_000),
            idempotency_key="open-1",
        )
        b = await stack.ddb.log_trade_async(
            symbol="BTCUSDT",
            side="buy",
            quantity=Decimal(1),
            price=Decimal(9),
            idempotency_key="t-1",
        )
        return a, b

    assert asyncio.run(again()) == (first, tid)
    # a first call that gave its own id: a retry leaving it out gets that id (the logged one)
    given = str(uuid.uuid4())
    trade = {"symbol": "ETHUSDT", "side": "sell", "quantity": Decimal(2), "price": Decimal(3)}
    assert stack.ddb.log_trade(**trade, trade_id=given, idempotency_key="t-2") == given
    assert stack.ddb.log_trade(**trade, idempotency_key="t-2") == given
    stack.restart()  # the key found in the log
    assert _position(stack, "open-1") == first
    _compact_and_restart(stack)  # only the database's key ledger knows it now
    assert stack.storage.find_by_idempotency_key("open-1") is None
    assert _position(stack, "open-1") == first
    stack.ddb.close_position(position_id=first, exit_price=Decimal(51_000), pnl=Decimal(100))
    assert stack.ddb.drain(timeout=10) == 0
    assert stack.ddb.get_wal_status()["failed"] == 0
    assert stack.ddb.get_open_positions() == []
    assert sorted(t["trade_id"] for t in stack.db.get_trades()) == sorted([tid, given])


def test_a_used_key_with_another_call_is_refused_and_nothing_is_written(stack: Stack) -> None:
    """The same key for another operation, other arguments, or another id or time given is
    refused (``WALIdempotencyConflictError``), never answered as the first call (an
    acknowledgement of an operation that never happens); nothing is written."""
    from datetime import UTC, datetime

    from wal import WALIdempotencyConflictError

    stack.ddb.atomic_balance_update(Decimal(100), reason="deposit", idempotency_key="k1")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    trade = {"symbol": "BTCUSDT", "side": "buy", "quantity": Decimal(1), "price": Decimal(9)}
    tid = stack.ddb.log_trade(**trade, executed_at=at, idempotency_key="t")
    lsn = stack.storage.next_lsn
    refused = [
        lambda: stack.ddb.atomic_balance_update(
            Decimal(-500), account="other", idempotency_key="k1"
        ),
        lambda: stack.ddb.atomic_balance_update(Decimal(100), reason="other", idempotency_key="k1"),
        lambda: stack.ddb.log_trade(**{**trade, "symbol": "ETHUSDT"}, idempotency_key="t"),
        lambda: stack.ddb.log_trade(**trade, trade_id=str(uuid.uuid4()), idempotency_key="t"),
        lambda: stack.ddb.log_trade(
            **trade, executed_at=datetime(2026, 1, 3, tzinfo=UTC), idempotency_key="t"
        ),
        lambda: stack.ddb.atomic_balance_update(Decimal(1), idempotency_key="t"),
        lambda: _position(stack, "k1"),
    ]
    for call in refused:
        with pytest.raises(WALIdempotencyConflictError, match="idempotency_key") as info:
            call()
        assert "nothing was written" in str(info.value)
    assert stack.storage.next_lsn == lsn
    # the same call again is the first one: an amount whatever its trailing zeros, a time
    # whatever its zone, the id and time left out or given as logged
    assert stack.ddb.atomic_balance_update(
        Decimal("100.00"), reason="deposit", idempotency_key="k1"
    ) == Decimal(100)
    assert stack.ddb.log_trade(**trade, executed_at=at, idempotency_key="t") == tid
    assert stack.ddb.log_trade(**trade, trade_id=tid, idempotency_key="t") == tid
    assert stack.storage.next_lsn == lsn
    assert stack.ddb.get_balance() == Decimal(100) and stack.ddb.get_balance("other") == 0


def test_a_key_compacted_away_and_retried_after_a_restart_is_not_counted_twice(
    stack: Stack,
) -> None:
    """With the database up, a keyed call whose entry compaction removed is found in the
    database's key ledger before it is written: the retry returns the balance once (before,
    2040 where 1040 was right, until the apply skipped the second entry)."""
    stack.ddb.atomic_balance_update(Decimal(1000), reason="deposit", idempotency_key="dep-1")
    stack.ddb.atomic_balance_update(Decimal(40), reason="fill")
    _compact_and_restart(stack)
    lsn = stack.storage.next_lsn
    again = stack.ddb.atomic_balance_update(
        Decimal(1000), reason="deposit", idempotency_key="dep-1"
    )
    assert again == Decimal(1040)
    assert stack.ddb.get_balance() == Decimal(1040)
    assert stack.storage.next_lsn == lsn  # nothing written
