"""Startup reconciliation against the in-process paper broker: the note's test list.

Real parts: a real log directory and database (SQLite, PostgreSQL where ``db_url`` is used),
the ``PaperBroker`` with a ``FaultPlan``. Each "restart" closes the engine's log and
database and opens new ones on the same files, with a new ``OrderManager`` and reconciler.
Tiny backoffs (milliseconds), never seconds.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from orders_helpers import Rig, broker_positions, buy, journal_positions, make_rig, run

from wal.orders import (
    BrokerOrder,
    BrokerPosition,
    ClientIdRules,
    DedupScope,
    Fault,
    FaultPlan,
    Fill,
    OrderEvent,
    OrderIntent,
    OrderJournal,
    OrderState,
    PaperBroker,
    ReconcilerConfig,
    ReconciliationFatalError,
    ReconciliationResult,
    StartupReconciler,
    TradingHalted,
)
from wal.orders.reconcile import emergency_stop_price, orphan_order_id
from wal.orders.states import EventKind

FAST = ReconcilerConfig(fetch_timeout=5.0, fetch_backoff=(0.001, 0.002, 0.004))
RULES = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)
ZERO = ReconciliationResult()


def paper(**kw: object) -> PaperBroker:
    return PaperBroker(seed=7, rules=RULES, **kw)  # type: ignore[arg-type]


def restart(rig: Rig, tmp_path: Path, url: str | None = None) -> Rig:
    rig.close()
    return make_rig(tmp_path, rig.broker, url=url)


def reconcile(rig: Rig, config: ReconcilerConfig = FAST, **kw: object) -> ReconciliationResult:
    return run(StartupReconciler(rig.om, config).run(**kw))  # type: ignore[arg-type]


def zeros(r: ReconciliationResult) -> bool:
    return r.changes == 0 and not r.errors


def active_stops(broker: PaperBroker, symbol: str) -> list[BrokerOrder]:
    return [o for o in broker.open_orders() if o.symbol == symbol and o.order_type == "stop"]


def external(broker: PaperBroker, side: str, qty: str, symbol: str = "AAPL", **kw: object) -> str:
    """An order placed at the broker by someone else (no journal record)."""
    intent = OrderIntent(symbol=symbol, side=side, quantity=Decimal(qty), **kw)  # type: ignore[arg-type]
    return broker.submit(intent).broker_order_id


# ---------------------------------------------------------------------------- halting


def test_submit_is_halted_until_reconciliation_succeeds_cancel_is_not(tmp_path: Path) -> None:
    broker = paper(auto_fill=False)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        resting = await rig.om.submit(buy("1", order_type="limit", limit_price=Decimal("90")))
        rec = StartupReconciler(rig.om, FAST)
        with pytest.raises(TradingHalted):
            await rig.om.submit(buy("1"))
        assert broker.submit_calls == 1
        cancelled = await rig.om.cancel(resting.client_order_id)  # cancels still allowed
        assert cancelled.state is OrderState.CANCELLED
        result = await rec.run()
        assert zeros(result), result
        assert rig.om.halted is None
        assert (await rig.om.submit(buy("1"))).state is OrderState.ACCEPTED

    try:
        run(go())
    finally:
        rig.close()


@pytest.mark.parametrize("op", ["get_positions", "get_open_orders", "get_recent_orders"])
def test_three_failing_fetches_are_fatal_and_submit_stays_refused(tmp_path: Path, op: str) -> None:
    plan = FaultPlan().on(op, Fault.FETCH_FAILURE, times=3)
    broker = paper(faults=plan)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        rec = StartupReconciler(rig.om, FAST)
        with pytest.raises(ReconciliationFatalError, match="failed 3 times"):
            await rec.run()
        assert plan.calls(op) == 3
        with pytest.raises(TradingHalted, match="reconciliation failed"):
            await rig.om.submit(buy("1"))
        assert broker.submit_calls == 0
        assert (await rec.run()).changes == 0  # the broker is back: the next run succeeds
        assert (await rig.om.submit(buy("1"))).state is OrderState.FILLED

    try:
        run(go())
    finally:
        rig.close()


def test_two_failing_fetches_are_retried(tmp_path: Path) -> None:
    plan = FaultPlan().on("get_positions", Fault.FETCH_FAILURE, times=2)
    rig = make_rig(tmp_path, paper(faults=plan))
    try:
        assert zeros(reconcile(rig))
        # three tries, the read after the order and fill lists (they agree), the end check
        assert plan.calls("get_positions") == 3 + 1 + 1
    finally:
        rig.close()


def test_an_unknown_broker_status_is_fatal(tmp_path: Path) -> None:
    broker = paper(auto_fill=False)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        await rig.om.submit(buy("1", order_type="limit", limit_price=Decimal("90")))
        broker.faults = FaultPlan().on("get_open_orders", Fault.UNKNOWN_STATUS)
        with pytest.raises(ReconciliationFatalError, match="unknown broker order status"):
            await StartupReconciler(rig.om, FAST).run()
        with pytest.raises(TradingHalted):
            await rig.om.submit(buy("1"))

    try:
        run(go())
    finally:
        rig.close()


def test_the_lists_are_fetched_in_parallel_between_two_position_reads(tmp_path: Path) -> None:
    """The order and fill lists are read at once (each waits for the others: sequential
    reads would time out), and the positions before and after them (a consistent view)."""

    class Barrier(PaperBroker):
        """A paper broker whose first three list calls wait until all three have started."""

        def __init__(self) -> None:
            super().__init__(seed=1, rules=RULES)
            self.barrier = asyncio.Barrier(3)
            self.first: set[str] = set()
            self.order: list[str] = []

        async def _meet(self, op: str) -> None:
            self.order.append(op)
            if op not in self.first:  # the fetch; the end check's reads come later, alone
                self.first.add(op)
                await self.barrier.wait()

        async def get_positions(self) -> list[BrokerPosition]:
            self.order.append("positions")
            return await super().get_positions()

        async def get_open_orders(self) -> list[BrokerOrder]:
            await self._meet("open")
            return await super().get_open_orders()

        async def get_recent_orders(self, hours: float) -> list[BrokerOrder]:
            await self._meet("recent")
            return await super().get_recent_orders(hours)

        async def get_fills(self, since: datetime | None = None) -> list[Fill]:
            await self._meet("fills")
            return await super().get_fills(since)

    broker = Barrier()
    rig = make_rig(tmp_path, broker)
    try:  # sequential fetches would each wait for the others until their timeout
        assert zeros(reconcile(rig, replace(FAST, fetch_attempts=1)))
        assert broker.order[0] == "positions" and broker.order[4] == "positions"
        assert set(broker.order[1:4]) == {"open", "recent", "fills"}
    finally:
        rig.close()


@pytest.mark.parametrize("after", ["get_positions", "get_fills"])
def test_a_position_that_moves_while_the_lists_are_read_is_read_again(
    tmp_path: Path, after: str
) -> None:
    """A resting stop fills while the reconciler reads the broker (the market moves right
    after its positions read, or right after its fill list): the view is read again until
    positions and fills agree. Before, phase 2 took the stale long for an orphan, journaled a
    synthetic buy and sent an emergency sell stop that the market, already through it,
    filled at once (a short of 10 nobody wanted); or the fill the list lacked made a flat
    broker look like an orphan short of the journal's long."""

    class Moving(PaperBroker):
        armed = False

        def _move(self, op: str) -> None:
            if self.armed and op == after:  # the market drops right after this read
                self.armed = False
                self.set_price("AAPL", Decimal("89"))

        async def get_positions(self) -> list[BrokerPosition]:
            held = await super().get_positions()
            self._move("get_positions")
            return held

        async def get_fills(self, since: datetime | None = None) -> list[Fill]:
            fills = await super().get_fills(since)
            self._move("get_fills")
            return fills

    broker = Moving(seed=1, rules=RULES, prices={"AAPL": Decimal("100")})
    rig = make_rig(tmp_path, broker)
    stop = OrderIntent(
        symbol="AAPL",
        side="sell",
        quantity=Decimal("10"),
        order_type="stop",
        stop_price=Decimal("90"),
        time_in_force="gtc",
    )

    async def go() -> None:
        await rig.om.start()
        await rig.om.submit(buy("10"))
        await rig.om.submit(stop, protective=True)
        broker.armed = True
        result = await StartupReconciler(rig.om, FAST).run()
        assert result.orphans_detected == 0 and result.emergency_stops_placed == 0, result
        assert broker.net_positions() == {} and rig.om.positions().get("AAPL", 0) == 0
        assert journal_positions(rig.ddb).get("AAPL", Decimal(0)) == 0

    try:
        run(go())
    finally:
        rig.close()


def test_emergency_stop_pct_is_validated() -> None:
    for bad in (Decimal("0.004"), Decimal("0.11"), Decimal("-0.02"), Decimal("NaN"), 0.02):
        with pytest.raises(ValueError, match="emergency_stop_pct"):
            ReconcilerConfig(emergency_stop_pct=bad)  # type: ignore[arg-type]
    assert ReconcilerConfig(emergency_stop_pct=Decimal("0.005")).emergency_stop_pct == Decimal(
        "0.005"
    )
    assert ReconcilerConfig(emergency_stop_pct=Decimal("0.1")).emergency_stop_pct == Decimal("0.1")
    assert ReconcilerConfig().emergency_stop_pct == Decimal("0.02")
    assert emergency_stop_price(Decimal("100"), Decimal("5"), Decimal("0.02")) == Decimal("98.00")
    assert emergency_stop_price(Decimal("100"), Decimal("-5"), Decimal("0.02")) == Decimal("102.00")
    # on the tick (0.01 at or above 1.00), rounded away from the market: down for a sell stop
    assert emergency_stop_price(Decimal("187.255"), Decimal("1"), Decimal("0.02")) == Decimal(
        "183.50"
    )


# ---------------------------------------------------------------------------- phase 1


def test_an_order_with_a_broker_id_takes_the_brokers_state(db_url: str, tmp_path: Path) -> None:
    broker = paper(auto_fill=False)
    rig = make_rig(tmp_path, broker, url=db_url)
    run(rig.om.start())
    resting = run(rig.om.submit(buy("3", order_type="limit", limit_price=Decimal("90"))))
    assert resting.state is OrderState.ACCEPTED and resting.broker_order_id
    broker.cancel(resting.broker_order_id)  # cancelled at the broker while we were down
    rig = restart(rig, tmp_path, db_url)
    try:
        r = reconcile(rig)
        assert r.orders_reconciled == 1 and r.changes == 1 and not r.errors, r
        order = rig.om.get(resting.client_order_id)
        assert order is not None and order.state is OrderState.CANCELLED
        kinds = [e["kind"] for e in rig.om.journal.events(resting.client_order_id)]
        assert kinds[-1] == EventKind.FORCED.value
        writes = broker.write_calls()
        assert zeros(reconcile(rig)) and broker.write_calls() == writes
    finally:
        rig.close()


def test_an_order_without_a_broker_id_is_looked_up_by_client_id_not_failed(
    tmp_path: Path,
) -> None:
    """The note marks these failed blindly; ours asks the broker first (nautilus#4958)."""
    rules = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY, visibility_window_seconds=0)
    plan = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.NOT_FOUND, times=3)
    )
    broker = PaperBroker(seed=2, rules=rules, faults=plan)
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    order = run(rig.om.submit(buy("4")))
    assert order.state is OrderState.UNKNOWN and order.broker_order_id is None
    rig = restart(rig, tmp_path)
    try:
        # the broker's 24 h history is empty here: only the lookup by client id can find it
        r = reconcile(rig, replace(FAST, recent_hours=1e-9))
        assert r.orders_adopted == 1 and r.fills_inferred == 1 and not r.errors, r
        got = rig.om.get(order.client_order_id)
        assert got is not None and got.state is OrderState.FILLED
        assert (
            got.broker_order_id
            == broker.orders_with_client_id(order.client_order_id)[0].broker_order_id
        )
        assert journal_positions(rig.ddb) == broker_positions(broker.positions())
        assert len(broker.orders_with_client_id(order.client_order_id)) == 1
        assert zeros(reconcile(rig, replace(FAST, recent_hours=1e-9)))
    finally:
        rig.close()


def test_orders_never_sent_or_not_at_the_broker_become_submit_failed(tmp_path: Path) -> None:
    broker = paper()
    rig = make_rig(tmp_path, broker)
    journal = OrderJournal(rig.ddb)
    never_sent = buy("1")
    journal.record_intent(never_sent)  # a crash right after the intent's fsync
    lost = buy("2")
    journal.record_intent(lost)  # ... and one after SUBMITTED, the request never arrived
    journal.record_event(
        OrderEvent(
            lost.client_order_id, 2, EventKind.SUBMITTED, OrderState.SUBMITTING, datetime.now(UTC)
        )
    )
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig)
        assert r.orders_reconciled == 2 and not r.errors, r
        for i in (never_sent, lost):
            o = rig.om.get(i.client_order_id)
            assert o is not None and o.state is OrderState.SUBMIT_FAILED
        assert broker.submit_calls == 0
        assert plan_calls(broker, "get_order_by_client_id") == 2
        assert zeros(reconcile(rig))
    finally:
        rig.close()


def plan_calls(broker: PaperBroker, op: str) -> int:
    return broker.faults.calls(op)


def applied_trades(rig: Rig) -> list[dict[str, Any]]:
    """The database's trades once the log is applied: the journal's writes reach the tables
    through the sync thread, so the log is drained first (``force_sync``), then read."""
    assert rig.ddb.manager is not None
    synced = rig.ddb.manager.force_sync()
    assert synced.pending == 0 and synced.failed == 0, synced
    return rig.ddb.db.get_trades()


def test_missing_fills_are_inferred_once_by_execution_id(tmp_path: Path) -> None:
    broker = paper(
        auto_fill=False, faults=FaultPlan(partial_fills=(Decimal("0.5"), Decimal("0.5")))
    )
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    order = run(rig.om.submit(buy("10")))
    assert order.state is OrderState.ACCEPTED
    broker.advance()
    broker.advance()  # two executions while the engine was down
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig)
        assert r.fills_inferred == 2 and r.orders_reconciled == 1, r
        got = rig.om.get(order.client_order_id)
        assert got is not None and got.state is OrderState.FILLED
        assert got.filled_quantity == Decimal("10")
        assert len(applied_trades(rig)) == 2
        r2 = reconcile(rig)
        assert r2.fills_inferred == 0 and len(applied_trades(rig)) == 2
        assert journal_positions(rig.ddb) == broker_positions(broker.positions())
    finally:
        rig.close()


def test_a_filled_report_without_executions_is_critical_never_final_and_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rule 1: never FILLED in the journal while its booked fills (0) differ from the
    broker's filled quantity (2); the run cannot end exact, so it is fatal (halted)."""
    broker = paper(auto_fill=False)
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    order = run(rig.om.submit(buy("2", order_type="limit", limit_price=Decimal("90"))))
    assert order.broker_order_id is not None
    po = broker._orders[order.broker_order_id]  # the broker misreports: filled, no execution
    po.order = replace(po.order, status="filled", filled_quantity=Decimal("2"))
    rig = restart(rig, tmp_path)
    try:
        with (
            caplog.at_level(logging.CRITICAL, logger="wal.orders.reconcile"),
            pytest.raises(ReconciliationFatalError, match="still differ after 3 passes"),
        ):
            reconcile(rig)
        assert any("without a fill price" in r.message for r in caplog.records)
        assert any("its executions are missing" in r.message for r in caplog.records)
        got = rig.om.get(order.client_order_id)
        assert got is not None and got.state is OrderState.ACCEPTED
        assert rig.om.halted is not None
    finally:
        rig.close()


def test_unknown_open_orders_are_cancelled_a_protective_stop_is_adopted(tmp_path: Path) -> None:
    broker = paper()
    external(broker, "buy", "5")  # a position nobody journaled
    stop = external(broker, "sell", "5", order_type="stop", stop_price=Decimal("95"))
    stray = external(
        broker, "buy", "7", symbol="MSFT", order_type="limit", limit_price=Decimal("50")
    )
    rig = make_rig(tmp_path, broker)
    try:
        r = reconcile(rig)
        assert (r.orders_adopted, r.orphan_orders_canceled, r.orphans_detected) == (1, 1, 1), r
        assert r.emergency_stops_placed == 0 and not r.errors, r
        status = {o.broker_order_id: o.status for o in broker.all_orders()}
        assert status[stray] == "canceled" and status[stop] == "new"
        adopted = [o for o in rig.om.open_orders() if o.broker_order_id == stop]
        assert len(adopted) == 1 and adopted[0].state is OrderState.ACCEPTED
        assert journal_positions(rig.ddb) == {"AAPL": Decimal("5")}
        writes = broker.write_calls()
        assert zeros(reconcile(rig)) and broker.write_calls() == writes
    finally:
        rig.close()


# ---------------------------------------------------------------------------- phase 2


def test_an_orphan_over_three_restarts_in_one_day_is_one_record(
    db_url: str, tmp_path: Path
) -> None:
    broker = paper()
    external(broker, "buy", "3", symbol="BTC-USD")
    day = datetime.now(UTC)
    rig = make_rig(tmp_path, broker, url=db_url)
    try:
        for attempt in range(3):
            r = reconcile(rig)
            assert r.orphans_detected == (1 if attempt == 0 else 0), r
            rig = restart(rig, tmp_path, db_url)
        orphans = [o for o in rig.om.journal.orders() if o.client_order_id.startswith("orphan-")]
        assert [o.client_order_id for o in orphans] == [orphan_order_id("BTC-USD", day)]
        assert orphans[0].client_order_id == f"orphan-BTC-USD-{day:%Y%m%d}"
        assert orphans[0].state is OrderState.FILLED
        assert journal_positions(rig.ddb) == {"BTC-USD": Decimal("3")}
        assert len(active_stops(broker, "BTC-USD")) == 1
    finally:
        rig.close()


def test_every_position_gets_one_emergency_stop_and_a_second_run_is_all_zeros(
    db_url: str, tmp_path: Path
) -> None:
    broker = paper()
    rig = make_rig(tmp_path, broker, url=db_url)
    run(rig.om.start())
    run(rig.om.submit(buy("10")))
    run(rig.om.submit(OrderIntent(symbol="MSFT", side="sell", quantity=Decimal("4"))))
    rig = restart(rig, tmp_path, db_url)
    try:
        r = reconcile(rig)
        assert r.emergency_stops_placed == 2 and r.orphans_detected == 0 and not r.errors, r
        (long_stop,) = active_stops(broker, "AAPL")
        (short_stop,) = active_stops(broker, "MSFT")
        assert (long_stop.side, long_stop.quantity, long_stop.stop_price) == (
            "sell",
            Decimal("10"),
            Decimal("98.00"),
        )
        assert (short_stop.side, short_stop.quantity, short_stop.stop_price) == (
            "buy",
            Decimal("4"),
            Decimal("102.00"),
        )
        assert long_stop.client_order_id.startswith("es-AAPL-")
        writes = broker.write_calls()
        second = reconcile(rig)
        assert second == ZERO, second
        assert broker.write_calls() == writes  # no write call to the broker
        rig = restart(rig, tmp_path, db_url)
        assert zeros(reconcile(rig)) and broker.write_calls() == writes
    finally:
        rig.close()


def test_a_stop_rejected_three_times_closes_the_position_at_market(tmp_path: Path) -> None:
    broker = paper()
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    run(rig.om.submit(buy("6")))
    broker.faults = FaultPlan().on("submit_order", Fault.REJECT, times=3)
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig)
        assert r.emergency_stops_placed == 0 and r.positions_closed == 1, r
        assert len([e for e in r.errors if "emergency stop" in e]) == 3
        assert broker.submit_calls == 1 + 4
        assert broker_positions(broker.positions()) == {}
        assert journal_positions(rig.ddb) == {}
        assert zeros(reconcile(rig))
    finally:
        rig.close()


def test_a_stop_of_the_wrong_size_is_replaced_and_a_stale_one_cancelled(tmp_path: Path) -> None:
    broker = paper()
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    run(rig.om.submit(buy("5")))
    run(rig.om.submit(buy("2", symbol="MSFT")))
    rig = restart(rig, tmp_path)
    assert reconcile(rig).emergency_stops_placed == 2
    run(rig.om.submit(buy("3")))  # the AAPL position grew past its stop
    run(
        rig.om.submit(
            OrderIntent(symbol="MSFT", side="sell", quantity=Decimal("2"), order_type="market")
        )
    )  # MSFT closed: its stop protects nothing
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig)
        assert (r.stops_canceled, r.emergency_stops_placed) == (2, 1) and not r.errors, r
        (stop,) = active_stops(broker, "AAPL")
        assert stop.quantity == Decimal("8")
        assert active_stops(broker, "MSFT") == []
        assert zeros(reconcile(rig))
    finally:
        rig.close()


def test_journal_position_closed_at_the_broker_is_corrected(tmp_path: Path) -> None:
    """freqtrade#7606: closed by hand at the broker; the journal must not keep a phantom."""
    broker = paper()
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    run(rig.om.submit(buy("4")))
    external(broker, "sell", "4")  # closed by hand at the broker
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig)
        assert r.orphans_detected == 1 and r.emergency_stops_placed == 0, r
        assert journal_positions(rig.ddb) == {} == broker_positions(broker.positions())
        assert active_stops(broker, "AAPL") == []
        assert zeros(reconcile(rig))
    finally:
        rig.close()


def test_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    broker = paper()
    external(broker, "buy", "5")
    external(broker, "buy", "1", symbol="MSFT", order_type="limit", limit_price=Decimal("50"))
    rig = make_rig(tmp_path, broker)
    try:
        before = broker.write_calls()
        dry = reconcile(rig, dry_run=True)
        assert dry.dry_run and dry.orphans_detected == 1 and dry.orphan_orders_canceled == 1
        assert dry.emergency_stops_placed == 1 and dry.actions
        assert broker.write_calls() == before and rig.om.journal.orders() == []
        real = reconcile(rig)
        assert (
            real.orphans_detected,
            real.orphan_orders_canceled,
            real.emergency_stops_placed,
        ) == (1, 1, 1)
    finally:
        rig.close()


def test_filled_trades_since_rebuilds_a_circuit_breaker(tmp_path: Path) -> None:
    broker = paper()
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    run(rig.om.submit(buy("2")))
    broker.set_price("AAPL", Decimal("110"))
    run(rig.om.submit(OrderIntent(symbol="AAPL", side="sell", quantity=Decimal("2"))))
    rig = restart(rig, tmp_path)
    try:
        rec = StartupReconciler(rig.om, FAST)
        run(rec.run())
        trades = rec.filled_trades_since(datetime.now(UTC) - timedelta(hours=1))
        assert [(t.side, t.quantity) for t in trades] == [
            ("buy", Decimal("2")),
            ("sell", Decimal("2")),
        ]
        assert trades[1].pnl == Decimal("20")
        assert rec.filled_trades_since(datetime.now(UTC) + timedelta(hours=1)) == []
    finally:
        rig.close()
