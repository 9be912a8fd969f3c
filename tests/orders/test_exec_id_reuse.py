"""An execution id (or key) that the journal holds for one order, reported for another.

Brokers reuse execution ids across orders (docs/shared ORDERS.md, incident 9: a broker
restarted without its state numbers its orders, and so its executions, from 1 again). The
journal refuses such a fill (``FillError``: nothing journaled, nothing booked): the fills
table's primary key is the execution key, and the database refuses a key held by another
order. The journal looked for the other order in the log only, by the fill's idempotency key
``fill:<execution id>``; so it let two through:

* **after compaction** removed the first fill's entry from the log: the second order booked
  the fill in memory (its position, its filled quantity), the database refused the entry (a
  dead letter), and memory and database disagreed (15 held in memory, 10 in the tables);
* **a correction id** (``"E.02"`` when ``"E.01"`` is another order's; the broker's
  ``correction_separator``): another id, so another idempotency key, the same execution key.

Now ``OrderJournal.fill_owner`` names the order that holds an execution key: the log, the
fills written lately, and the database's ``fills`` table once the log cannot answer (it
dropped entries, or ids share keys), as the keyed writes ask the database's ledger after
compaction. Real log files, SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from orders_helpers import Rig, journal_positions, make_rig, run
from trading_child import fast_config, make_outage

from wal import DurableDatabaseManager, WALEntryStatus
from wal.db import DatabaseManager
from wal.orders import (
    ClientIdRules,
    DedupScope,
    Fill,
    FillError,
    OrderIntent,
    OrderManager,
    OrderState,
    PaperBroker,
    RiskLimits,
)
from wal.orders.journal import OrderJournal

GLOBAL = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)


def market_buy(cid: str, qty: str) -> OrderIntent:
    return OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(qty), client_order_id=cid)


def dead_letters(rig: Rig) -> int:
    assert rig.ddb.storage is not None
    return rig.ddb.storage.count(WALEntryStatus.FAILED)


@pytest.mark.parametrize("compact", [False, True], ids=["in_the_log", "compacted_away"])
def test_an_execution_id_of_another_order_is_refused_whether_or_not_the_log_holds_it(
    db_url: str, tmp_path: Path, compact: bool
) -> None:
    """Order ``first`` fills (execution ``paper-00000001-1``); the broker restarts without
    its state, and the next order, ``second``, is its order 1 again, filled under the same
    execution id. With the first fill still in the log or compacted away, the same outcome:
    ``FillError``, nothing booked, memory and database agree, no dead letter."""
    rig = make_rig(tmp_path, PaperBroker(seed=1, rules=GLOBAL), url=db_url)

    async def before() -> None:
        await rig.om.start()
        first = await rig.om.submit(market_buy("first", "10"))
        assert (first.state, first.filled_quantity) == (OrderState.FILLED, 10)

    try:
        run(before())
        assert rig.ddb.drain(10) == 0
        assert rig.ddb.storage is not None
        if compact:
            assert rig.ddb.storage.compact(0)["entries_dropped"] > 0
            assert rig.ddb.storage.find_by_idempotency_key("fill:paper-00000001-1") is None
        rig.close()
        # the engine restarts, and the broker restarted without its state: ids from 1 again
        rig = make_rig(tmp_path, PaperBroker(seed=1, rules=GLOBAL), url=db_url)

        async def after() -> None:
            await rig.om.start()
            with pytest.raises(FillError, match="journaled for order first"):
                await rig.om.submit(market_buy("second", "5"))
            second = rig.om.get("second")
            assert second is not None
            assert (second.state, second.filled_quantity) == (OrderState.ACCEPTED, 0)
            assert rig.om.positions() == {"AAPL": Decimal(10)}  # the fill was not booked

        run(after())
        assert rig.ddb.drain(10) == 0
        assert dead_letters(rig) == 0
        assert journal_positions(rig.ddb) == {"AAPL": Decimal(10)}
        assert [f["client_order_id"] for f in rig.ddb.db.get_order_fills()] == ["first"]
        row = rig.ddb.db.get_order_row("second")
        assert (row["state"], row["filled_quantity"]) == ("accepted", 0)
    finally:
        rig.close()


def _fill(rig: Rig, cid: str, execution_id: str, qty: str) -> Fill:
    order = rig.om.get(cid)
    assert order is not None
    return Fill(
        execution_id=execution_id,
        client_order_id=cid,
        broker_order_id=order.broker_order_id,
        symbol="AAPL",
        side="buy",
        quantity=Decimal(qty),
        price=Decimal(100),
        executed_at=datetime.now(UTC),
    )


def _resting(cid: str) -> OrderIntent:
    return OrderIntent(
        symbol="AAPL",
        side="buy",
        quantity=Decimal(10),
        order_type="limit",
        limit_price=Decimal(90),
        client_order_id=cid,
    )


@pytest.mark.parametrize("compact", [False, True], ids=["in_the_log", "compacted_away"])
def test_a_correction_id_of_another_orders_execution_is_refused(
    db_url: str, tmp_path: Path, compact: bool
) -> None:
    """A broker with corrections (``correction_separator="."``): ``E.01`` is order A's
    execution; ``E.02`` reported for order B has another id but the same execution key. It
    was booked to B in memory (10 held) and refused by the database (4 held, a dead letter).
    A correction of A's own execution (``E.02`` for A) is still booked, as a correction."""
    rules = ClientIdRules(correction_separator=".", visibility_window_seconds=0)
    rig = make_rig(tmp_path, PaperBroker(seed=1, auto_fill=False, rules=rules), url=db_url)

    async def go() -> None:
        await rig.om.start()
        await rig.om.submit(_resting("A"))
        await rig.om.submit(_resting("B"))
        await rig.om.on_fill(_fill(rig, "A", "E.01", "4"))

    try:
        run(go())
        if compact:
            assert rig.ddb.drain(10) == 0
            assert rig.ddb.storage is not None
            assert rig.ddb.storage.compact(0)["entries_dropped"] > 0
            rig.close()
            rig = make_rig(tmp_path, rig.broker, url=db_url)

        async def then() -> None:
            await rig.om.start()
            with pytest.raises(FillError, match="journaled for order A"):
                await rig.om.on_fill(_fill(rig, "B", "E.02", "6"))
            b = rig.om.get("B")
            assert b is not None and b.filled_quantity == 0
            assert rig.om.positions() == {"AAPL": Decimal(4)}
            corrected = await rig.om.on_fill(_fill(rig, "A", "E.02", "5"))  # A's own: a correction
            assert corrected.filled_quantity == 5
            assert rig.om.positions() == {"AAPL": Decimal(5)}

        run(then())
        assert rig.ddb.drain(10) == 0
        assert dead_letters(rig) == 0
        assert journal_positions(rig.ddb) == {"AAPL": Decimal(5)}
        rows = rig.ddb.db.get_order_fills()
        assert [(f["client_order_id"], f["execution_id"]) for f in rows] == [("A", "E.02")]
    finally:
        rig.close()


def test_the_journals_own_write_refuses_a_key_written_for_another_order_meanwhile(
    tmp_path: Path,
) -> None:
    """The owner is asked before a fill is booked; the write itself checks again, under the
    chain's lock, against the log and the fills written since (and earlier in the same
    write): one group commit never carries one execution key for two orders, and the same
    execution id for another order is refused there, never left out as a retry."""
    rig = make_rig(tmp_path, PaperBroker(seed=1, auto_fill=False, rules=GLOBAL))

    async def go() -> None:
        await rig.om.start()
        await rig.om.submit(_resting("A"))
        await rig.om.submit(_resting("B"))

    try:
        run(go())
        journal = OrderJournal(rig.ddb)
        computed = {
            "execution_key": "X-1",
            "seq": 4,
            "kind": "fill",
            "state": "partially_filled",
            "filled_quantity": Decimal(1),
            "avg_fill_price": Decimal(100),
            "trade_id": "t1",
            "pnl": None,
            "position_ops": [],
        }
        a = journal.fill_call(_fill(rig, "A", "X-1", "1"), computed)
        b = journal.fill_call(_fill(rig, "B", "X-1b", "1"), computed | {"trade_id": "t2"})
        b[1]["execution_key"] = "X-1"  # another id, the same key
        with pytest.raises(FillError, match="journaled for order A"):
            journal._write_chained([a, b])  # one write: refused whole, nothing written
        assert journal.fill_owner("X-1", "X-1") is None
        journal._write_chained([a])
        assert journal.fill_owner("X-1", "X-1") == "A"
        with pytest.raises(FillError, match="journaled for order A"):
            journal._write_chained([b])  # a later write
        same_id = journal.fill_call(_fill(rig, "B", "X-1", "1"), computed | {"trade_id": "t3"})
        with pytest.raises(FillError, match="journaled for order A"):
            journal._write_chained([same_id])  # the same id: never left out as a retry
        assert rig.ddb.drain(10) == 0
        assert dead_letters(rig) == 0
    finally:
        rig.close()


def test_after_compaction_fills_are_still_booked_while_the_database_is_down(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The owner of a new execution key is asked of the database once the log compacted:
    a database that cannot answer decides nothing (as for the keyed writes), so orders still
    fill and book through an outage, and reach the database once, when it is back."""
    outage = make_outage(db_url, request)
    broker = PaperBroker(seed=3, rules=GLOBAL)
    db = outage.attach(DatabaseManager(db_url))
    ddb = DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", db_url))
    ddb.start()
    om = OrderManager(ddb, broker, risk=RiskLimits(check_balance=False), price_source=broker.price)
    try:

        async def go() -> None:
            await om.start()
            await om.submit(market_buy("before", "2"))
            assert ddb.drain(10) == 0
            assert ddb.storage is not None and ddb.storage.compact(0)["entries_dropped"] > 0
            assert om.journal.fill_owner_needs_database()
            outage.begin()
            during = await om.submit(market_buy("during", "3"))
            assert (during.state, during.filled_quantity) == (OrderState.FILLED, 3)
            assert om.positions() == {"AAPL": Decimal(5)}

        run(go())
        outage.end()
        assert ddb.drain(30) == 0
        assert ddb.storage is not None and ddb.storage.count(WALEntryStatus.FAILED) == 0
        assert journal_positions(ddb) == broker.net_positions() == {"AAPL": Decimal(5)}
    finally:
        if outage.active:
            outage.end()
        ddb.stop()
        outage.close()
        db.dispose()
