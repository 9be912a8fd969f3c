"""The order journal against the in-process paper broker: every fault of ORDERS.md's incidents.

Real parts: a real log directory, a real SQLite database (and PostgreSQL where marked), the
``PaperBroker`` with a ``FaultPlan``. Retries run with zero backoff.
"""

from __future__ import annotations

import errno
from decimal import Decimal
from pathlib import Path

import pytest
from faultfs import CrashFS, FaultRule
from orders_helpers import (
    FAST_RETRY,
    Rig,
    broker_positions,
    buy,
    journal_positions,
    make_rig,
    open_ddb,
    run,
)
from trading_child import fast_config, make_outage

from wal import DurableDatabaseManager, WALStorage, WALWriteError
from wal.db import DatabaseManager
from wal.orders import (
    DUPLICATE_ANSWER,
    ClientIdRules,
    DedupScope,
    EventKind,
    Fault,
    FaultPlan,
    Fill,
    FillError,
    OrderIntent,
    OrderJournal,
    OrderManager,
    OrderRejected,
    OrderState,
    PaperBroker,
    RejectReason,
    RiskLimits,
)

GLOBAL = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)
OPEN_ONLY = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY, visibility_window_seconds=0)


def kinds(ddb: DurableDatabaseManager, cid: str) -> list[str]:
    return [e["kind"] for e in OrderJournal(ddb).events(cid)]


def settled_kinds(ddb: DurableDatabaseManager, cid: str) -> list[str]:
    """The order's event kinds as the journal reads them (the log's pending entries on top of
    the database), checked against the database's own rows once the log is applied."""
    via_log = kinds(ddb, cid)
    assert ddb.manager is not None and ddb.manager.force_sync().pending == 0
    assert [e["kind"] for e in ddb.db.get_order_events(cid)] == via_log
    assert kinds(ddb, cid) == via_log
    return via_log


def test_a_market_buy_is_journaled_sent_once_and_filled(db_url: str, tmp_path: Path) -> None:
    broker = PaperBroker(seed=1, rules=GLOBAL)
    rig = make_rig(tmp_path, broker, url=db_url)

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("10"))
        assert order.state is OrderState.FILLED
        assert order.filled_quantity == Decimal("10")
        assert order.avg_fill_price == Decimal("100")
        assert len(order.client_order_id) == 32
        assert broker.submit_calls == 1
        assert journal_positions(rig.ddb) == {"AAPL": Decimal("10")}  # read through the log
        assert settled_kinds(rig.ddb, order.client_order_id) == [
            "created",
            "submitted",
            "accepted",
            "fill",
        ]
        trades = rig.ddb.db.get_trades()
        assert [(t["symbol"], t["quantity"]) for t in trades] == [("AAPL", Decimal("10"))]
        assert journal_positions(rig.ddb) == {"AAPL": Decimal("10")}
        assert broker_positions(broker.positions()) == {"AAPL": Decimal("10")}
        pos = [p for p in rig.ddb.get_open_positions() if p["symbol"] == "AAPL"]
        assert len(pos) == 1 and pos[0]["quantity"] == Decimal("10")

    try:
        run(go())
    finally:
        rig.close()


@pytest.mark.parametrize("rules", [GLOBAL, OPEN_ONLY], ids=["global", "open_only"])
def test_timeout_after_accept_is_recovered_not_resent(tmp_path: Path, rules: ClientIdRules) -> None:
    """catalyst#317, blue_collar_gdax#1: a timeout after the order was placed, a second buy."""
    plan = FaultPlan().on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
    broker = PaperBroker(seed=2, rules=rules, faults=plan)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("5"))
        assert order.state is OrderState.FILLED
        assert len(broker.orders_with_client_id(order.client_order_id)) == 1
        assert len(broker.all_orders()) == 1
        assert broker.submitted_client_ids == [order.client_order_id]  # never resent
        assert plan.calls("get_order_by_client_id") == 1  # looked up once, found
        assert settled_kinds(rig.ddb, order.client_order_id) == [
            "created",
            "submitted",
            "unknown",
            "recovered",
            "fill",
        ]
        assert journal_positions(rig.ddb) == broker_positions(broker.positions())

    try:
        run(go())
    finally:
        rig.close()


def test_timeout_before_accept_is_resent_with_the_same_id_where_dedup_is_global(
    tmp_path: Path,
) -> None:
    plan = FaultPlan().on("submit_order", Fault.TIMEOUT_BEFORE_ACCEPT)
    broker = PaperBroker(seed=3, rules=GLOBAL, faults=plan)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("5"))
        cid = order.client_order_id
        assert order.state is OrderState.FILLED
        assert broker.submitted_client_ids == [cid, cid]  # resent with the same id
        assert [o.client_order_id for o in broker.all_orders()] == [cid]  # one order
        assert plan.calls("get_order_by_client_id") == 1  # looked up before the resend
        assert settled_kinds(rig.ddb, cid) == [
            "created",
            "submitted",
            "unknown",
            "submitted",
            "accepted",
            "fill",
        ]
        assert journal_positions(rig.ddb) == broker_positions(broker.positions())

    try:
        run(go())
    finally:
        rig.close()


def test_timeout_before_accept_is_never_resent_where_dedup_is_open_only(tmp_path: Path) -> None:
    """Binance: a reused id is accepted once the first order filled: never resend blindly."""
    plan = FaultPlan().on("submit_order", Fault.TIMEOUT_BEFORE_ACCEPT)
    broker = PaperBroker(seed=4, rules=OPEN_ONLY, faults=plan)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("5"))
        assert order.state is OrderState.UNKNOWN
        assert broker.submitted_client_ids == [order.client_order_id]
        assert broker.all_orders() == []
        assert plan.calls("get_order_by_client_id") == FAST_RETRY.max_attempts
        assert settled_kinds(rig.ddb, order.client_order_id) == ["created", "submitted", "unknown"]

    try:
        run(go())
    finally:
        rig.close()


@pytest.mark.parametrize("rules", [GLOBAL, OPEN_ONLY], ids=["global", "open_only"])
def test_a_duplicate_client_id_error_is_adopted_not_rejected(
    tmp_path: Path, rules: ClientIdRules
) -> None:
    plan = FaultPlan().on("submit_order", Fault.DUPLICATE_ID)
    broker = PaperBroker(seed=5, rules=rules, faults=plan)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("5"))
        cid = order.client_order_id
        assert order.state is OrderState.FILLED  # adopted, not rejected
        assert order.reason == DUPLICATE_ANSWER  # journaled: it exists, never SUBMIT_FAILED
        assert order.broker_order_id == broker.all_orders()[0].broker_order_id
        assert [o.client_order_id for o in broker.all_orders()] == [cid]
        assert broker.submitted_client_ids == [cid]  # looked up, never resent
        assert plan.calls("get_order_by_client_id") == 1
        assert settled_kinds(rig.ddb, cid) == [
            "created",
            "submitted",
            "unknown",
            "recovered",
            "fill",
        ]
        assert journal_positions(rig.ddb) == broker_positions(broker.positions())

    try:
        run(go())
    finally:
        rig.close()


def test_a_duplicate_answer_is_looked_up_until_it_shows_never_resent(tmp_path: Path) -> None:
    plan = (
        FaultPlan()
        .on("submit_order", Fault.DUPLICATE_ID)
        .on("get_order_by_client_id", Fault.NOT_FOUND, times=2)
    )
    broker = PaperBroker(seed=5, rules=GLOBAL, faults=plan)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("5"))
        cid = order.client_order_id
        assert order.state is OrderState.FILLED
        assert broker.submitted_client_ids == [cid]
        assert plan.calls("get_order_by_client_id") == 3
        assert settled_kinds(rig.ddb, cid) == [
            "created",
            "submitted",
            "unknown",
            "recovered",
            "fill",
        ]

    try:
        run(go())
    finally:
        rig.close()


def test_a_refused_resend_does_not_end_an_order_the_first_send_may_have_placed(
    tmp_path: Path,
) -> None:
    """Timeout after accept, a lagging lookup, and the resend refused (the first order used
    the buying power): REJECTED would forget a filled order. It is looked up again."""
    plan = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.NOT_FOUND)
        .on("submit_order", Fault.REJECT, nth=2)
    )
    broker = PaperBroker(seed=6, rules=GLOBAL, faults=plan)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("5"))
        cid = order.client_order_id
        assert order.state is OrderState.FILLED
        assert broker.submitted_client_ids == [cid, cid]
        assert [o.client_order_id for o in broker.all_orders()] == [cid]
        assert settled_kinds(rig.ddb, cid) == [
            "created",
            "submitted",
            "unknown",
            "submitted",
            "unknown",
            "recovered",
            "fill",
        ]
        assert journal_positions(rig.ddb) == broker.net_positions() == {"AAPL": Decimal("5")}

    try:
        run(go())
    finally:
        rig.close()


def test_a_clear_reject_ends_the_order_after_one_call(tmp_path: Path) -> None:
    plan = FaultPlan(reject_reason="insufficient buying power").on("submit_order", Fault.REJECT)
    broker = PaperBroker(seed=6, rules=GLOBAL, faults=plan)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        intent = buy("5")
        order = await rig.om.submit(intent)
        assert order.state is OrderState.REJECTED
        assert order.reason == "insufficient buying power"
        assert await rig.om.submit(intent) == order  # the same intent again: no second call
        assert broker.submitted_client_ids == [order.client_order_id]  # one call
        assert broker.all_orders() == []
        assert plan.calls("get_order_by_client_id") == 0
        assert rig.om.get(order.client_order_id) == order
        assert settled_kinds(rig.ddb, order.client_order_id) == [
            "created",
            "submitted",
            "rejected",
        ]
        assert rig.ddb.db.get_trades() == []

    try:
        run(go())
    finally:
        rig.close()


@pytest.mark.parametrize("at_once", [True, False], ids=["at_once", "one_by_one"])
def test_partial_fills_make_three_trades_and_replaying_them_adds_none(
    db_url: str, tmp_path: Path, at_once: bool
) -> None:
    """0.3/0.3/0.4: three executions, three fills, three trades; every replay (on_fill of each
    execution again, a poll, a restart that replays the log and asks the broker) adds none."""
    plan = FaultPlan(partial_fills=(Decimal("0.3"), Decimal("0.3"), Decimal("0.4")))
    broker = PaperBroker(seed=7, rules=GLOBAL, faults=plan, auto_fill=at_once)
    rig = make_rig(tmp_path, broker, url=db_url)
    three = [Decimal("3"), Decimal("3"), Decimal("4")]

    async def go() -> str:
        await rig.om.start()
        order = await rig.om.submit(buy("10", order_type="limit", limit_price=Decimal("101")))
        cid = order.client_order_id
        if not at_once:  # the executions arrive one at a time, each polled
            assert order.state is OrderState.ACCEPTED
            for filled, state in (
                ("3", OrderState.PARTIALLY_FILLED),
                ("6", OrderState.PARTIALLY_FILLED),
                ("10", OrderState.FILLED),
            ):
                assert broker.advance() == 1
                assert await rig.om.poll_fills() == 1
                o = rig.om.get(cid)
                assert o is not None and (o.filled_quantity, o.state) == (Decimal(filled), state)
            order = rig.om.get(cid)  # type: ignore[assignment]
        assert order.state is OrderState.FILLED
        assert order.filled_quantity == Decimal("10")
        assert order.avg_fill_price == Decimal("101")
        assert [f.quantity for f in broker.fills()] == three
        for f in broker.fills():
            again = await rig.om.on_fill(f)
            assert again.filled_quantity == Decimal("10") and again.last_seq == 6
        assert await rig.om.poll_fills() == 0
        rows = OrderJournal(rig.ddb).fills(client_order_id=cid)
        assert [r["quantity"] for r in rows] == three
        assert journal_positions(rig.ddb) == {"AAPL": Decimal("10")}
        return cid

    try:
        cid = run(go())
        assert settled_kinds(rig.ddb, cid) == [
            "created",
            "submitted",
            "accepted",
            "fill",
            "fill",
            "fill",
        ]
        assert sorted(t["quantity"] for t in rig.ddb.db.get_trades()) == three
    finally:
        rig.close()
    # a restart replays the log and asks the broker again: still three
    ddb = open_ddb(tmp_path / "wal", db_url)
    try:
        om = OrderManager(ddb, broker, retry=FAST_RETRY)

        async def again() -> None:
            await om.start()
            for f in broker.fills():
                await om.on_fill(f)
            assert await om.poll_fills() == 0

        run(again())
        assert settled_kinds(ddb, cid).count("fill") == 3
        assert sorted(t["quantity"] for t in ddb.db.get_trades()) == three
        assert len(OrderJournal(ddb).fills()) == 3
        assert journal_positions(ddb) == broker_positions(broker.positions())
    finally:
        ddb.stop()
        ddb.db.dispose()


@pytest.mark.parametrize("rules", [GLOBAL, OPEN_ONLY], ids=["global", "open_only"])
def test_visibility_lag_and_a_timeout_still_make_one_order(
    tmp_path: Path, rules: ClientIdRules
) -> None:
    plan = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.NOT_FOUND, times=2)
    )
    broker = PaperBroker(seed=8, rules=rules, faults=plan)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("5"))
        cid = order.client_order_id
        assert order.state is OrderState.FILLED
        assert [o.client_order_id for o in broker.all_orders()] == [cid]  # still one order
        assert plan.calls("get_order_by_client_id") == 3  # two lagging "not found", then found
        if rules.dedup_scope is DedupScope.GLOBAL:
            # the first miss is resent with the same id; the broker's duplicate answer
            # proves it exists: never resent again, looked up until it shows
            assert broker.submitted_client_ids == [cid, cid]
            expected = ["created", "submitted", "unknown", "submitted", "unknown"]
            expected += ["recovered", "fill"]
        else:  # never resent: looked up until it shows
            assert broker.submitted_client_ids == [cid]
            expected = ["created", "submitted", "unknown", "recovered", "fill"]
        assert settled_kinds(rig.ddb, cid) == expected
        assert journal_positions(rig.ddb) == broker_positions(broker.positions())

    try:
        run(go())
    finally:
        rig.close()


def test_submitting_the_same_intent_twice_is_one_entry_and_one_order(tmp_path: Path) -> None:
    broker = PaperBroker(seed=9, rules=GLOBAL)
    rig = make_rig(tmp_path, broker)
    intent = buy("3")

    async def go() -> None:
        await rig.om.start()
        first = await rig.om.submit(intent)
        second = await rig.om.submit(intent)
        assert first == second
        assert broker.submit_calls == 1
        changed = OrderIntent(
            symbol="AAPL", side="buy", quantity=Decimal("4"), client_order_id=intent.client_order_id
        )
        with pytest.raises(OrderRejected) as e:
            await rig.om.submit(changed)
        assert e.value.reason is RejectReason.CONFLICTING_INTENT

    try:
        run(go())
        assert rig.ddb.storage is not None
        intents = [
            e for e in rig.ddb.storage.iter_entries() if e.operation == "record_order_intent"
        ]
        assert len(intents) == 1
    finally:
        rig.close()


def test_a_log_failure_means_no_broker_call(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    d = tmp_path / "wal"
    fs = CrashFS(d)
    config = fast_config(d, url)
    storage = WALStorage(d, config.storage_options(), fs=fs)
    ddb = DurableDatabaseManager(DatabaseManager(url), config=config, storage=storage)
    ddb.start()
    broker = PaperBroker(seed=10, rules=GLOBAL)
    om = OrderManager(ddb, broker, retry=FAST_RETRY, price_source=broker.price)
    ddb.atomic_balance_update(Decimal("100000"), reason="deposit")

    async def go() -> None:
        await om.start()
        fs.rules.append(FaultRule("fdatasync", errno=errno.EIO, persistent=True))
        with pytest.raises(WALWriteError):
            await om.submit(buy("1"))
        assert broker.submit_calls == 0
        assert om.open_orders() == []

    try:
        run(go())
    finally:
        ddb.stop()
        storage.close()
        ddb.db.dispose()


def test_a_fill_beyond_the_order_quantity_is_an_error_and_not_applied(tmp_path: Path) -> None:
    broker = PaperBroker(seed=11, rules=GLOBAL, auto_fill=False)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("2"))
        assert order.state is OrderState.ACCEPTED
        cid = order.client_order_id
        f1 = Fill("x-1", cid, "AAPL", "buy", Decimal("1.5"), Decimal("100"))
        assert (await rig.om.on_fill(f1)).state is OrderState.PARTIALLY_FILLED
        with pytest.raises(FillError, match="would make order"):
            await rig.om.on_fill(Fill("x-2", cid, "AAPL", "buy", Decimal("1"), Decimal("100")))
        assert rig.om.get(cid).filled_quantity == Decimal("1.5")  # type: ignore[union-attr]
        with pytest.raises(FillError, match="is sell"):
            await rig.om.on_fill(Fill("x-3", cid, "AAPL", "sell", Decimal("0.1"), Decimal("1")))
        assert len(OrderJournal(rig.ddb).fills(client_order_id=cid)) == 1
        assert rig.ddb.force_sync()["pending"] == 0
        assert len(rig.ddb.db.get_trades()) == 1

    try:
        run(go())
    finally:
        rig.close()


def corrections_rig(tmp_path: Path) -> Rig:
    """A paper broker with IB-style execution ids ("E1.01", its correction "E1.02"), filled
    only by the test's ``on_fill`` calls."""
    rules = ClientIdRules(
        dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0, correction_separator="."
    )
    return make_rig(tmp_path, PaperBroker(seed=12, rules=rules, auto_fill=False))


def test_a_corrected_execution_replaces_the_fill_never_adds(tmp_path: Path) -> None:
    rig = corrections_rig(tmp_path)

    async def go() -> None:
        await rig.om.start()
        cid = (await rig.om.submit(buy("4"))).client_order_id
        await rig.om.on_fill(Fill("E1.01", cid, "AAPL", "buy", Decimal("2"), Decimal("100")))
        o = await rig.om.on_fill(Fill("E1.02", cid, "AAPL", "buy", Decimal("3"), Decimal("110")))
        assert o.filled_quantity == Decimal("3") and o.avg_fill_price == Decimal("110")
        o = await rig.om.on_fill(Fill("E1.02", cid, "AAPL", "buy", Decimal("3"), Decimal("110")))
        assert o.filled_quantity == Decimal("3")
        assert kinds(rig.ddb, cid)[-2:] == ["fill", "fill_corrected"]
        rows = OrderJournal(rig.ddb).fills(client_order_id=cid)
        assert [(r["execution_id"], r["quantity"]) for r in rows] == [("E1.02", Decimal("3"))]
        assert journal_positions(rig.ddb) == {"AAPL": Decimal("3")}
        assert rig.om.positions() == {"AAPL": Decimal("3")}
        # the original sent again after its correction (a broker's report listing both):
        # an earlier version, nothing to book; the order's next execution is booked after it
        o = await rig.om.on_fill(Fill("E1.01", cid, "AAPL", "buy", Decimal("2"), Decimal("100")))
        assert o.filled_quantity == Decimal("3") and o.avg_fill_price == Decimal("110")
        assert rig.om.known_execution(Fill("E1.01", cid, "AAPL", "buy", Decimal("2"), Decimal(1)))
        o = await rig.om.on_fill(Fill("E2.01", cid, "AAPL", "buy", Decimal("1"), Decimal("100")))
        assert o.filled_quantity == Decimal("4") and o.state is OrderState.FILLED
        assert rig.ddb.drain(timeout=10) == 0
        assert rig.ddb.get_wal_status()["failed"] == 0  # no entry of the order refused
        rows = OrderJournal(rig.ddb).fills(client_order_id=cid)
        assert sorted((r["execution_id"], r["quantity"]) for r in rows) == [
            ("E1.02", Decimal("3")),
            ("E2.01", Decimal("1")),
        ]
        assert journal_positions(rig.ddb) == rig.om.positions() == {"AAPL": Decimal("4")}

    try:
        run(go())
    finally:
        rig.close()


def test_an_execution_id_reused_by_another_order_is_refused_never_dropped(
    tmp_path: Path,
) -> None:
    """A broker whose execution ids repeat across orders (per-symbol trade ids; a session
    that restarts its numbering): the second order's execution under a journaled id is
    refused loudly (``FillError``), with the journal and memory agreeing that it was not
    booked, and the first order's fill untouched. Before, the log left the entry out as a
    retry (its key was there) while memory booked it: the journal lost the fill silently. The
    database refuses it too (the order's fill would have replaced another order's)."""
    rig = corrections_rig(tmp_path)

    async def go() -> None:
        await rig.om.start()
        first = (await rig.om.submit(buy("10"))).client_order_id
        second = (await rig.om.submit(buy("5", symbol="MSFT"))).client_order_id
        await rig.om.on_fill(Fill("T1", first, "AAPL", "buy", Decimal("10"), Decimal("50")))
        with pytest.raises(FillError, match="journaled for order"):
            await rig.om.on_fill(Fill("T1", second, "MSFT", "buy", Decimal("5"), Decimal("20")))
        order = rig.om.get(second)
        assert order is not None and order.filled_quantity == 0  # memory: not booked
        assert rig.ddb.drain(timeout=10) == 0
        assert rig.ddb.get_wal_status()["failed"] == 0
        assert journal_positions(rig.ddb) == rig.om.positions() == {"AAPL": Decimal("10")}
        rows = OrderJournal(rig.ddb).fills()
        assert [(r["client_order_id"], r["quantity"]) for r in rows] == [(first, Decimal("10"))]
        with pytest.raises(ValueError, match="journaled for order"):  # the database too
            rig.ddb.db.record_order_fill(
                execution_id="T1",
                execution_key="T1",
                client_order_id=second,
                symbol="MSFT",
                side="buy",
                quantity=Decimal("5"),
                price=Decimal("20"),
                executed_at=rows[0]["executed_at"],
                seq=order.last_seq + 1,
                kind="fill",
                state="filled",
                filled_quantity=Decimal("5"),
                avg_fill_price=Decimal("20"),
            )
        assert [r["client_order_id"] for r in OrderJournal(rig.ddb).fills()] == [first]

    try:
        run(go())
    finally:
        rig.close()


def test_a_correction_lowering_a_filled_orders_execution_is_booked(tmp_path: Path) -> None:
    """A filled order's execution corrected down (10 -> 8): the fill, the order's totals,
    the position and the cash follow the correction; the order stays FILLED (done at the
    broker). Before, the correction raised (FILLED -> PARTIALLY_FILLED is no transition) and
    the journal kept 10 where the broker held 8."""
    rig = corrections_rig(tmp_path)

    async def go() -> None:
        await rig.om.start()
        cid = (await rig.om.submit(buy("10"))).client_order_id
        await rig.om.on_fill(Fill("X1.01", cid, "AAPL", "buy", Decimal("10"), Decimal("50")))
        o = await rig.om.on_fill(Fill("X1.02", cid, "AAPL", "buy", Decimal("8"), Decimal("50")))
        assert o.state is OrderState.FILLED and o.filled_quantity == Decimal("8")
        assert rig.ddb.drain(timeout=10) == 0
        assert journal_positions(rig.ddb) == rig.om.positions() == {"AAPL": Decimal("8")}
        assert rig.ddb.get_balance() == Decimal("1000000") - 8 * Decimal("50")
        row = OrderJournal(rig.ddb).order(cid)
        assert row is not None and row.filled_quantity == Decimal("8")

    try:
        run(go())
    finally:
        rig.close()


def test_a_crash_before_the_send_fails_the_order_and_after_it_adopts_it(tmp_path: Path) -> None:
    """Seed 000's crash recovery, without its bug: a sent order is looked up, never failed."""
    plan = FaultPlan().on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
    broker = PaperBroker(seed=13, rules=OPEN_ONLY, faults=plan)
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    ddb = open_ddb(tmp_path / "wal", url)
    ddb.atomic_balance_update(Decimal("100000"), reason="deposit")
    never_sent = buy("1", symbol="MSFT")
    sent = buy("2")

    async def first_run() -> None:
        om = OrderManager(
            ddb,
            broker,
            retry=FAST_RETRY.__class__(max_attempts=0, base_delay=0),
            price_source=broker.price,
        )
        await om.start()
        OrderJournal(ddb).record_intent(never_sent)  # the process stopped right after this
        order = await om.submit(sent)
        assert order.state is OrderState.UNKNOWN  # no retries in this run

    run(first_run())
    ddb.stop()
    ddb.db.dispose()
    ddb = open_ddb(tmp_path / "wal", url)
    try:
        om = OrderManager(ddb, broker, retry=FAST_RETRY)
        result = run(om.start())
        assert result.adopted == 1 and result.submit_failed == 1
        assert om.get(sent.client_order_id).state is OrderState.FILLED  # type: ignore[union-attr]
        gone = om.get(never_sent.client_order_id)
        assert gone is not None and gone.state is OrderState.SUBMIT_FAILED
        assert broker.orders_with_client_id(never_sent.client_order_id) == []
        assert "recovered" in kinds(ddb, sent.client_order_id)
    finally:
        ddb.stop()
        ddb.db.dispose()


def test_force_state_is_for_the_reconciler_only(tmp_path: Path) -> None:
    broker = PaperBroker(seed=14, rules=GLOBAL, auto_fill=False)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        cid = (await rig.om.submit(buy("1"))).client_order_id
        with pytest.raises(RuntimeError, match="reconciler"):
            await rig.om.force_state(cid, OrderState.CANCELLED, reason="x")
        o = await rig.om.force_state(
            cid, OrderState.CANCELLED, reason="broker says so", _reconciliation=True
        )
        assert o.state is OrderState.CANCELLED
        assert kinds(rig.ddb, cid)[-1] == EventKind.FORCED.value

    try:
        run(go())
    finally:
        rig.close()


def test_events_stream_every_state_change_in_order(tmp_path: Path) -> None:
    import asyncio

    broker = PaperBroker(seed=15, rules=GLOBAL)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        seen: list[tuple[int, str]] = []
        stream = rig.om.events()

        async def collect() -> None:
            async for ev in stream:
                seen.append((ev.seq, ev.kind.value))
                if ev.state is OrderState.FILLED:
                    return

        task = asyncio.create_task(collect())
        await asyncio.sleep(0)  # let the subscriber register
        await rig.om.submit(buy("1"))
        await asyncio.wait_for(task, 10)
        assert seen == [(1, "created"), (2, "submitted"), (3, "accepted"), (4, "fill")]

    try:
        run(go())
    finally:
        rig.close()


def test_cancel_a_resting_order(tmp_path: Path) -> None:
    broker = PaperBroker(seed=16, rules=GLOBAL)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        o = await rig.om.submit(buy("1", order_type="limit", limit_price=Decimal("90")))
        assert o.state is OrderState.ACCEPTED
        o = await rig.om.cancel(o.client_order_id)
        assert o.state is OrderState.CANCELLED
        assert kinds(rig.ddb, o.client_order_id)[-2:] == ["cancel_requested", "cancelled"]

    try:
        run(go())
    finally:
        rig.close()


def test_orders_go_on_through_a_database_outage_and_reach_it_once(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The submit path waits for the log only: with the database really down (PostgreSQL
    crashed, SQLite locked by another connection) orders are journaled, sent, filled and read
    back through the log; once it is back, the database holds each of them exactly once."""
    outage = make_outage(db_url, request)
    broker = PaperBroker(seed=17, rules=GLOBAL)
    db = outage.attach(DatabaseManager(db_url))
    ddb = DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", db_url))
    ddb.start()
    om = OrderManager(
        ddb,
        broker,
        risk=RiskLimits(check_balance=False),
        retry=FAST_RETRY,
        price_source=broker.price,
    )
    try:

        async def go() -> list[str]:
            await om.start()
            first = await om.submit(buy("2"))
            outage.begin()
            during = [await om.submit(buy("1", symbol=s)) for s in ("AAPL", "MSFT", "AAPL")]
            assert [o.state for o in during] == [OrderState.FILLED] * 3
            # read through the log while the database is down (the kept state of start())
            j = om.journal
            assert {o.client_order_id: o.state for o in j.orders()} == {
                o.client_order_id: OrderState.FILLED for o in [first, *during]
            }
            assert om.positions() == {"AAPL": Decimal("4"), "MSFT": Decimal("1")}
            assert broker.submitted_client_ids == [o.client_order_id for o in [first, *during]]
            return [o.client_order_id for o in [first, *during]]

        cids = run(go())
        outage.end()
        assert ddb.manager is not None
        assert ddb.manager.force_sync().pending == 0
        for cid in cids:
            assert [e["kind"] for e in db.get_order_events(cid)] == [
                "created",
                "submitted",
                "accepted",
                "fill",
            ]
        assert len(db.get_trades()) == 4
        assert journal_positions(ddb) == broker.net_positions()
    finally:
        if outage.active:
            outage.end()
        ddb.stop()
        outage.close()
        db.dispose()
