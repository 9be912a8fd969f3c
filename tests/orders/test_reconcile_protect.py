"""Issue 19 against the reconciler: every position protected exactly, every fill booked to its
order, no live order forgotten, no run that ends on a wrong book.

Real parts as in ``test_reconcile.py``: a real log and database (SQLite; PostgreSQL where
``db_url`` is used), the in-process ``PaperBroker`` with a ``FaultPlan``; a "restart" is a new
engine on the same files. Every check reads the broker's own state.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

import orjson
import pytest
from orders_helpers import FAST_RETRY, Rig, buy, journal_positions, make_rig, run

from wal.orders import (
    DUPLICATE_ANSWER,
    BrokerOrder,
    ClientIdRules,
    DedupScope,
    Fault,
    FaultPlan,
    Fill,
    Order,
    OrderEvent,
    OrderIntent,
    OrderJournal,
    OrderState,
    PaperBroker,
    ReconcilerConfig,
    ReconciliationFatalError,
    ReconciliationResult,
    StartupReconciler,
)
from wal.orders.reconcile import emergency_stop_price, orphan_order_id
from wal.orders.states import EventKind
from wal.orders.ticks import TickTable, default_tick

FAST = ReconcilerConfig(fetch_timeout=5.0, fetch_backoff=(0.001, 0.002, 0.004))
RULES = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)
S = OrderState
LOOK_ONLY = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY, visibility_window_seconds=0)


def paper(rules: ClientIdRules = RULES, **kw: object) -> PaperBroker:
    return PaperBroker(seed=7, rules=rules, **kw)  # type: ignore[arg-type]


def restart(rig: Rig, tmp_path: Path, url: str | None = None) -> Rig:
    rig.close()
    return make_rig(tmp_path, rig.broker, url=url)


def reconcile(rig: Rig, config: ReconcilerConfig = FAST, **kw: object) -> ReconciliationResult:
    return run(StartupReconciler(rig.om, config).run(**kw))  # type: ignore[arg-type]


def stops(broker: PaperBroker, symbol: str = "AAPL") -> list[BrokerOrder]:
    """The active stops at the broker (its own state, no fault applies)."""
    return [
        o
        for o in broker.all_orders()
        if o.symbol == symbol
        and o.order_type == "stop"
        and o.status in ("new", "accepted", "partially_filled")
    ]


def cover(broker: PaperBroker, symbol: str = "AAPL") -> Decimal:
    """What the active stops on the reducing side cover (0 if any is on the wrong side)."""
    pos = broker.net_positions().get(symbol, Decimal(0))
    live = stops(broker, symbol)
    reducing = "sell" if pos > 0 else "buy"
    if any(o.side != reducing for o in live):
        return Decimal(-1)
    return sum((o.quantity - o.filled_quantity for o in live), Decimal(0))


def exact(broker: PaperBroker) -> bool:
    """Every position's stops sum to it; no stop without a position."""
    syms = set(broker.net_positions()) | {o.symbol for o in broker.all_orders()}
    return all(cover(broker, s) == abs(broker.net_positions().get(s, Decimal(0))) for s in syms)


def quiet(rig: Rig) -> None:
    """A second run: no change, no error, no broker write."""
    assert isinstance(rig.broker, PaperBroker)
    writes = rig.broker.write_calls()
    r = reconcile(rig)
    assert r.changes == 0 and not r.errors, r
    assert rig.broker.write_calls() == writes


def stop_intent(side: str, qty: str, price: str, symbol: str = "AAPL") -> OrderIntent:
    return OrderIntent(
        symbol=symbol,
        side=side,
        quantity=Decimal(qty),
        order_type="stop",
        stop_price=Decimal(price),
        time_in_force="gtc",
    )


def long_position(
    tmp_path: Path, broker: PaperBroker, qty: str = "10", url: str | None = None
) -> Rig:
    rig = make_rig(tmp_path, broker, url=url)
    run(rig.om.start())
    assert run(rig.om.submit(buy(qty))).state is OrderState.FILLED
    return rig


def es_orders(broker: PaperBroker) -> list[BrokerOrder]:
    return [o for o in broker.all_orders() if o.client_order_id.startswith("es-")]


# ---------------------------------------------------------------------------- item 3


def submit_failed_in_journal(
    tmp_path: Path, broker: PaperBroker, intent: OrderIntent, plan: FaultPlan | None = None
) -> tuple[Rig, Order]:
    """An order the broker accepted under a journal that says SUBMIT_FAILED: the reply lost,
    the manager's 3 lookups not finding it, then the state forced (a bug, an operator)."""
    broker.faults = (
        (plan or FaultPlan())
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.NOT_FOUND, times=3)
    )
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    order = run(rig.om.submit(intent))
    assert order.state is OrderState.UNKNOWN
    run(
        rig.om.force_state(
            order.client_order_id, OrderState.SUBMIT_FAILED, reason="wrong", _reconciliation=True
        )
    )
    return rig, order


def test_an_unknown_emergency_stop_is_looked_up_never_doubled(tmp_path: Path) -> None:
    """The stop's reply is lost after the broker accepted it and the manager's own lookups
    lag: the reconciler looks it up before anything else is sent (the old code placed a
    second one: a long of 10 covered by 20)."""
    broker = paper(LOOK_ONLY)
    rig = restart(long_position(tmp_path, broker), tmp_path)
    broker.faults = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.NOT_FOUND, times=3)  # the manager's 3 lookups
    )
    try:
        r = reconcile(rig)
        assert r.emergency_stops_placed == 1 and r.positions_closed == 0, r
        assert broker.submit_calls == 2  # the buy, the one stop
        ((stop),) = stops(broker)
        assert (stop.side, stop.quantity) == ("sell", Decimal("10"))
        got = rig.om.get(stop.client_order_id)
        assert got is not None and got.state is OrderState.ACCEPTED
        assert exact(broker)
        quiet(rig)
    finally:
        rig.close()


def test_a_failed_lookup_of_an_unknown_stop_sends_nothing_more(tmp_path: Path) -> None:
    """Its lookups fail: never "not found"; nothing else is sent, the end check fails, the
    next pass finds the stop in the broker's open orders and adopts it: one stop."""
    broker = paper(LOOK_ONLY)
    rig = restart(long_position(tmp_path, broker), tmp_path)
    broker.faults = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.SERVER_ERROR, times=3 + 3)  # manager, reconciler
    )
    try:
        r = reconcile(rig)
        assert broker.submit_calls == 2 and r.positions_closed == 0, r
        assert any("lookup failed" in e for e in r.errors), r.errors
        assert any("end check of pass 1" in e for e in r.errors), r.errors
        assert len(es_orders(broker)) == 1 and exact(broker)
        assert rig.om.halted is None
        quiet(rig)
    finally:
        rig.close()


def test_only_definite_refusals_count_toward_the_market_close(tmp_path: Path) -> None:
    """A stop that timed out before the broker saw it (looked up: not there after the
    window) is not a refusal: two refusals and that miss leave a stop, no market close."""
    broker = paper(LOOK_ONLY)
    rig = restart(long_position(tmp_path, broker), tmp_path)
    broker.faults = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_BEFORE_ACCEPT, nth=1)
        .on("submit_order", Fault.REJECT, nth=2, times=2)
    )
    try:
        r = reconcile(rig)
        assert r.positions_closed == 0 and r.emergency_stops_placed == 1, r
        assert broker.net_positions() == {"AAPL": Decimal("10")}
        assert len(stops(broker)) == 1 and exact(broker)
        states = sorted(
            o.state.value for o in rig.om.journal.orders() if o.client_order_id.startswith("es-")
        )
        assert states == ["accepted", "rejected", "rejected", "submit_failed"]
        quiet(rig)
    finally:
        rig.close()


# ---------------------------------------------------------------------------- item 4


def test_a_stop_without_a_position_is_cancelled_with_its_reason(
    db_url: str, tmp_path: Path
) -> None:
    """A user stop the journal knows outlives its position (closed by hand at the broker):
    cancelled, the reason journaled before the cancel."""
    broker = paper()
    rig = long_position(tmp_path, broker, "4", url=db_url)
    user = run(rig.om.submit(stop_intent("sell", "4", "90")))
    assert user.state is OrderState.ACCEPTED
    broker.submit(OrderIntent(symbol="AAPL", side="sell", quantity=Decimal("4")))  # by hand
    rig = restart(rig, tmp_path, db_url)
    try:
        r = reconcile(rig)
        assert r.stops_canceled == 1 and not stops(broker), r
        got = rig.om.get(user.client_order_id)
        assert got is not None and got.state is OrderState.CANCELLED
        events = rig.om.journal.events(user.client_order_id)
        reasons = [e["detail"] or "" for e in events if e["kind"] == EventKind.FORCED.value]
        assert any("it would open one" in x for x in reasons), events
        assert journal_positions(rig.ddb) == {} == broker.net_positions()
        quiet(rig)
    finally:
        rig.close()


def test_a_stop_that_would_grow_the_position_is_cancelled(tmp_path: Path) -> None:
    broker = paper()
    rig = long_position(tmp_path, broker, "5")
    grow = run(rig.om.submit(stop_intent("buy", "3", "120")))  # buys more of a long
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig)
        got = rig.om.get(grow.client_order_id)
        assert got is not None and got.state is OrderState.CANCELLED, r
        ((stop),) = stops(broker)
        assert (stop.side, stop.quantity) == ("sell", Decimal("5"))
        reasons = [e["detail"] or "" for e in rig.om.journal.events(grow.client_order_id)]
        assert any("would grow" in x for x in reasons)
        quiet(rig)
    finally:
        rig.close()


# ---------------------------------------------------------------------------- item 5


def test_over_cover_is_resized_never_left(db_url: str, tmp_path: Path) -> None:
    """A user stop of 10 under a long of 4 would make it a short of 6: resized to 4 at the
    user's own stop price (cancel, then replace; journaled)."""
    broker = paper()
    rig = long_position(tmp_path, broker, "4", url=db_url)
    big = run(rig.om.submit(stop_intent("sell", "10", "91.5")))
    rig = restart(rig, tmp_path, db_url)
    try:
        r = reconcile(rig)
        assert r.stops_canceled == 1 and r.emergency_stops_placed == 1, r
        ((stop),) = stops(broker)
        assert (stop.quantity, stop.stop_price) == (Decimal("4"), Decimal("91.50"))
        got = rig.om.get(big.client_order_id)
        assert got is not None and got.state is OrderState.CANCELLED
        assert rig.om.halted is None
        quiet(rig)
    finally:
        rig.close()


def test_two_user_stops_over_the_position_keep_the_oldest_and_resize_the_next(
    tmp_path: Path,
) -> None:
    broker = paper()
    rig = long_position(tmp_path, broker, "4")
    first = run(rig.om.submit(stop_intent("sell", "3", "95")))
    second = run(rig.om.submit(stop_intent("sell", "3", "93")))
    rig = restart(rig, tmp_path)
    try:
        reconcile(rig)
        live = {(o.quantity, o.stop_price) for o in stops(broker)}
        assert live == {(Decimal("3"), Decimal("95")), (Decimal("1"), Decimal("93.00"))}
        assert rig.om.get(first.client_order_id).state is OrderState.ACCEPTED  # type: ignore[union-attr]
        assert rig.om.get(second.client_order_id).state is OrderState.CANCELLED  # type: ignore[union-attr]
        assert exact(broker)
        quiet(rig)
    finally:
        rig.close()


def test_an_emergency_stop_covers_only_what_the_stops_in_place_leave(tmp_path: Path) -> None:
    broker = paper()
    rig = long_position(tmp_path, broker, "10")
    run(rig.om.submit(stop_intent("sell", "4", "95")))
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig)
        assert r.emergency_stops_placed == 1 and r.stops_canceled == 0, r
        assert sorted(o.quantity for o in stops(broker)) == [Decimal("4"), Decimal("6")]
        assert exact(broker)
        quiet(rig)
    finally:
        rig.close()


def test_an_unknown_stop_larger_than_its_position_is_not_adopted(tmp_path: Path) -> None:
    broker = paper()
    broker.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal("5")))
    big = broker.submit(stop_intent("sell", "8", "90"))  # someone else's, over the position
    rig = make_rig(tmp_path, broker)
    try:
        r = reconcile(rig)
        assert r.orders_adopted == 0 and r.orphan_orders_canceled == 1, r
        assert rig.om.journal.order(big.client_order_id) is None
        ((stop),) = stops(broker)
        assert stop.client_order_id.startswith("es-") and stop.quantity == Decimal("5")
        quiet(rig)
    finally:
        rig.close()


# ---------------------------------------------------------------------------- item 6


@pytest.mark.parametrize("failures", [1, FAST_RETRY.max_attempts], ids=["once", "every_try"])
def test_an_emergency_stop_filled_at_once_with_its_fill_fetch_failing_is_booked_in_the_run(
    db_url: str, tmp_path: Path, failures: int
) -> None:
    """The old run succeeded with the journal at 10 and the broker flat. The stop's fill
    fetch (the 2nd ``get_fills``, after the snapshot's) fails: once, the manager's own retry
    books it during the submit (issue 19: an order is never final while its booked fills
    differ from the broker's; the fetch is retried); on every try of the submit, the stop
    stays open, the end check of pass 1 sees it and the next pass books the fill to the
    stop. Either way: no orphan, no second run needed."""
    broker = paper()
    rig = long_position(tmp_path, broker, "10", url=db_url)
    broker.set_price("AAPL", Decimal("90"))  # below the stop's 98: it fills at once
    rig = restart(rig, tmp_path, db_url)
    broker.faults = FaultPlan().on("get_fills", Fault.FETCH_FAILURE, nth=2, times=failures)
    try:
        r = reconcile(rig)
        end_check = [e for e in r.errors if "end check of pass 1" in e]
        if failures == 1:
            assert not r.errors, r
        else:
            assert end_check, r
            assert not [e for e in r.errors if "end check of pass 2" in e], r
        assert broker.net_positions() == {} == journal_positions(rig.ddb)
        assert not [o for o in rig.om.journal.orders() if o.client_order_id.startswith("orphan-")]
        (es,) = es_orders(broker)
        got = rig.om.get(es.client_order_id)
        assert got is not None and got.state is OrderState.FILLED
        assert rig.om.halted is None
        quiet(rig)
    finally:
        rig.close()


def test_a_book_that_cannot_be_made_exact_is_fatal_and_halted(tmp_path: Path) -> None:
    """Every stop refused and the market close too: the position stays unprotected, so the
    run never succeeds: fatal after its passes, trading halted."""
    broker = paper()
    rig = restart(long_position(tmp_path, broker, "3"), tmp_path)
    broker.faults = FaultPlan().on("submit_order", Fault.REJECT, times=100)
    try:
        with pytest.raises(ReconciliationFatalError, match="the stops cover 0 of the 3"):
            reconcile(rig)
        assert rig.om.halted is not None
    finally:
        rig.close()


# ---------------------------------------------------------------------------- items 1 and 2


def test_a_fill_lost_behind_a_cancel_is_booked_to_its_order_not_an_orphan(
    db_url: str, tmp_path: Path
) -> None:
    broker = paper(
        auto_fill=False, faults=FaultPlan(partial_fills=(Decimal("0.3"), Decimal("0.7")))
    )
    rig = make_rig(tmp_path, broker, url=db_url)
    run(rig.om.start())
    order = run(rig.om.submit(buy("10")))
    broker.advance()  # 3 of 10 executed
    broker.faults = replace(broker.faults, rules=[]).on("get_fills", Fault.FETCH_FAILURE, times=5)
    run(rig.om.cancel(order.client_order_id))
    rig = restart(rig, tmp_path, db_url)
    broker.faults = FaultPlan()
    try:
        r = reconcile(rig)
        got = rig.om.get(order.client_order_id)
        assert got is not None and got.state is OrderState.CANCELLED, r
        assert got.filled_quantity == Decimal("3")
        booked = rig.om.journal.fills(client_order_id=order.client_order_id)
        assert [Decimal(str(f["quantity"])) for f in booked] == [Decimal("3")]
        assert not [o for o in rig.om.journal.orders() if o.client_order_id.startswith("orphan-")]
        assert r.orphans_detected == 0
        assert journal_positions(rig.ddb) == {"AAPL": Decimal("3")} == broker.net_positions()
        assert exact(broker)
        quiet(rig)
    finally:
        rig.close()


def test_a_live_order_under_a_final_journal_state_is_tracked_and_its_fills_booked(
    tmp_path: Path,
) -> None:
    """start() (or anything) left SUBMIT_FAILED while the broker holds the order open: the
    reconciler takes it back (never skipped, never cancelled as unknown); its later fill is
    booked to it."""
    broker = paper(LOOK_ONLY, auto_fill=False)
    limit = buy("2", order_type="limit", limit_price=Decimal("90"))
    rig, order = submit_failed_in_journal(tmp_path, broker, limit)
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig)
        got = rig.om.get(order.client_order_id)
        assert got is not None and got.state is OrderState.ACCEPTED, r
        assert r.orphan_orders_canceled == 0
        (bo,) = broker.orders_with_client_id(order.client_order_id)
        assert bo.status == "new" and got.broker_order_id == bo.broker_order_id
        broker.set_price("AAPL", Decimal("89"))  # it fills while we are down again
        broker.advance()
        rig = restart(rig, tmp_path)
        r2 = reconcile(rig)
        got = rig.om.get(order.client_order_id)
        assert got is not None and got.state is OrderState.FILLED, r2
        assert r2.orphans_detected == 0
        assert journal_positions(rig.ddb) == {"AAPL": Decimal("2")}
    finally:
        rig.close()


def test_a_live_partly_filled_order_under_a_final_journal_state_takes_the_brokers_id(
    tmp_path: Path,
) -> None:
    """SUBMIT_FAILED in the journal, live and 3 of 10 filled at the broker: the order is
    reopened with the broker's id (not only its fills booked), so the journal tracks the
    live order by it, and a cancel reaches the broker."""
    broker = paper(LOOK_ONLY, auto_fill=False)
    partly = FaultPlan(partial_fills=(Decimal("0.3"), Decimal("0.7")))
    rig, order = submit_failed_in_journal(tmp_path, broker, buy("10"), partly)
    broker.advance()  # 3 of 10 executed while the journal says it was never placed
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig)
        got = rig.om.get(order.client_order_id)
        (bo,) = broker.orders_with_client_id(order.client_order_id)
        assert bo.status == "partially_filled"
        assert got is not None and got.state is OrderState.PARTIALLY_FILLED, r
        assert got.filled_quantity == Decimal("3") and r.orphans_detected == 0
        assert got.broker_order_id == bo.broker_order_id
        broker.faults = FaultPlan()
        run(rig.om.cancel(order.client_order_id))
        (bo,) = broker.orders_with_client_id(order.client_order_id)
        assert bo.status == "canceled"
        assert journal_positions(rig.ddb) == {"AAPL": Decimal("3")} == broker.net_positions()
    finally:
        rig.close()


def test_a_reconciler_lookup_honours_the_visibility_window(tmp_path: Path) -> None:
    """A lookup that lags (not found although the broker holds it) inside the window is not
    the end: the reconciler waits the window out and looks again."""
    rules = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY, visibility_window_seconds=0.3)
    broker = PaperBroker(seed=3, rules=rules)
    broker.faults = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.NOT_FOUND, times=3 + 1)
    )
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    order = run(rig.om.submit(buy("4")))
    assert order.state is OrderState.UNKNOWN
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig, replace(FAST, recent_hours=1e-9))  # only a lookup can find it
        got = rig.om.get(order.client_order_id)
        assert got is not None and got.state is OrderState.FILLED, r
        assert r.orphans_detected == 0
    finally:
        rig.close()


def test_a_failed_reconciler_lookup_is_never_not_found(tmp_path: Path) -> None:
    broker = paper(LOOK_ONLY)
    broker.faults = FaultPlan().on("submit_order", Fault.TIMEOUT_BEFORE_ACCEPT)
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    order = run(rig.om.submit(buy("4")))
    assert order.state is OrderState.UNKNOWN
    rig = restart(rig, tmp_path)
    broker.faults = FaultPlan().on("get_order_by_client_id", Fault.SERVER_ERROR, times=3)
    try:
        with pytest.raises(ReconciliationFatalError, match="looking up client id"):
            reconcile(rig)
        got = rig.om.get(order.client_order_id)
        assert got is not None and got.state is OrderState.UNKNOWN
        assert rig.om.halted is not None
    finally:
        rig.close()


def test_a_half_written_orphan_is_completed_not_doubled(tmp_path: Path) -> None:
    broker = paper()
    broker.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal("5")))
    rig = make_rig(tmp_path, broker)
    cid = orphan_order_id("AAPL", datetime.now(UTC))
    OrderJournal(rig.ddb).record_intent(  # a crash between the orphan's intent and its fill
        OrderIntent(
            symbol="AAPL",
            side="buy",
            quantity=Decimal("5"),
            order_type="market",
            client_order_id=cid,
        )
    )
    rig = restart(rig, tmp_path)
    try:
        reconcile(rig)
        orphans = [o for o in rig.om.journal.orders() if o.client_order_id.startswith("orphan-")]
        assert [(o.client_order_id, o.state) for o in orphans] == [(cid, OrderState.FILLED)]
        assert journal_positions(rig.ddb) == {"AAPL": Decimal("5")}
        quiet(rig)
    finally:
        rig.close()


# ---------------------------------------------------------------------------- item 7


def test_default_ticks_follow_the_equity_rule() -> None:
    assert default_tick(Decimal("1.00")) == Decimal("0.01")
    assert default_tick(Decimal("0.9999")) == Decimal("0.0001")
    t = TickTable()
    assert t.round_stop("X", Decimal("90.7131555555"), "sell") == Decimal("90.71")
    assert t.round_stop("X", Decimal("90.7131555555"), "buy") == Decimal("90.72")
    assert t.round_stop("X", Decimal("0.51237"), "sell") == Decimal("0.5123")
    assert t.round_stop("X", Decimal("0.51231"), "buy") == Decimal("0.5124")
    assert t.round_stop("X", Decimal("90.71"), "buy") == Decimal("90.71")  # on the grid


def test_ticks_per_symbol_and_from_the_environment() -> None:
    t = TickTable.from_env({"ORDER_TICK_SIZES": "ES=0.25, BTC-USD=0.5"})
    assert t.round_stop("ES", Decimal("4012.30"), "buy") == Decimal("4012.50")
    assert t.round_stop("ES", Decimal("4012.30"), "sell") == Decimal("4012.25")
    assert t.round_stop("BTC-USD", Decimal("60000.7"), "sell") == Decimal("60000.5")
    assert t.round_stop("AAPL", Decimal("12.345"), "sell") == Decimal("12.34")
    for bad in ("ES", "ES=0", "ES=-1", "ES=x", "=0.1"):
        with pytest.raises(ValueError, match="ORDER_TICK_SIZES"):
            TickTable.parse(bad)
    with pytest.raises(ValueError, match="side"):
        t.round_stop("ES", Decimal("1"), "long")
    cfg = ReconcilerConfig.from_env({"ORDER_TICK_SIZES": "ES=0.25"})
    assert cfg.ticks.tick("ES", Decimal(1)) == Decimal("0.25")


@pytest.mark.parametrize("entry", ["90.7131555555", "187.255", "0.73211", "100"])
@pytest.mark.parametrize("qty", ["3", "-3"])
def test_an_emergency_stop_price_is_on_the_tick_beyond_the_entry(entry: str, qty: str) -> None:
    """Computed here independently: the raw price pct beyond the entry, then floor (a long's
    sell stop) or ceiling (a short's buy stop) to the tick."""
    e, q, pct = Decimal(entry), Decimal(qty), Decimal("0.02")
    tick = Decimal("0.01") if e >= 1 else Decimal("0.0001")
    raw = e * (1 - pct) if q > 0 else e * (1 + pct)
    steps = (raw / tick).to_integral_value(rounding=ROUND_FLOOR if q > 0 else ROUND_CEILING)
    want = steps * tick
    got = emergency_stop_price(e, q, pct)
    assert got == want and got.as_tuple().exponent >= tick.as_tuple().exponent
    assert (got < e) if q > 0 else (got > e)
    assert (got <= raw) if q > 0 else (got >= raw)


def test_an_emergency_stop_sent_to_the_broker_is_on_the_tick(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = paper(prices={"AAPL": Decimal("92.5655")})
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    run(rig.om.submit(buy("3")))
    broker.set_price("AAPL", Decimal("92.5711"))
    run(rig.om.submit(buy("4")))  # the broker's entry: 92.5686714285..., 10 places
    rig = restart(rig, tmp_path)
    try:
        with caplog.at_level(logging.INFO):
            reconcile(rig)
        ((stop),) = stops(broker)
        assert stop.stop_price is not None
        assert stop.stop_price == stop.stop_price.quantize(Decimal("0.01"))
        entry = Decimal(str(broker.positions()[0].avg_entry_price))
        assert stop.stop_price <= entry * Decimal("0.98")
    finally:
        rig.close()


def test_an_emergency_stop_follows_the_symbols_configured_tick(tmp_path: Path) -> None:
    broker = paper(prices={"AAPL": Decimal("101.13")})
    rig = restart(long_position(tmp_path, broker, "2"), tmp_path)
    try:
        cfg = replace(FAST, ticks=TickTable({"AAPL": Decimal("0.25")}))
        reconcile(rig, cfg)
        ((stop),) = stops(broker)
        assert stop.stop_price == Decimal("99.00")  # 101.13 * 0.98 = 99.1074, down to 0.25
    finally:
        rig.close()


def test_a_filled_order_the_journal_failed_is_booked_to_it(tmp_path: Path) -> None:
    """The journal says SUBMIT_FAILED (final); the broker filled it: its executions are
    booked to that order, never to a synthetic orphan."""
    broker = paper(LOOK_ONLY)
    rig, order = submit_failed_in_journal(tmp_path, broker, buy("3"))
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig)
        got = rig.om.get(order.client_order_id)
        assert got is not None and got.state is OrderState.FILLED, r
        assert got.filled_quantity == Decimal("3") and r.orphans_detected == 0
        assert not [o for o in rig.om.journal.orders() if o.client_order_id.startswith("orphan-")]
        assert exact(broker)
        quiet(rig)
    finally:
        rig.close()


class ShortPage(PaperBroker):
    """A broker whose fills endpoint returns a short page the first time (pagination cut)."""

    def __init__(self) -> None:
        super().__init__(seed=7, rules=RULES, auto_fill=False)
        self.short = True

    async def get_fills(self, since: datetime | None = None) -> list[Fill]:
        got = await super().get_fills(since)
        if self.short:
            self.short = False
            return []
        return got


def test_executions_the_fetch_missed_are_fetched_again_for_their_order(tmp_path: Path) -> None:
    """The broker reports 2 filled; the snapshot's fills lack them: the reconciler fetches
    the order's fills again (the broker's figure is authoritative) and books them to it."""
    broker = ShortPage()
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    order = run(rig.om.submit(buy("2", order_type="limit", limit_price=Decimal("101"))))
    broker.short = False
    broker.advance()  # it fills while we are down
    rig = restart(rig, tmp_path)
    broker.short = True
    try:
        r = reconcile(rig)
        got = rig.om.get(order.client_order_id)
        assert got is not None and got.state is OrderState.FILLED, r
        assert r.orphans_detected == 0 and r.fills_inferred == 1
        assert not any("end check" in e for e in r.errors), r.errors  # in the first pass
    finally:
        rig.close()


class HidingFills(PaperBroker):
    """A broker that never lists the executions of the client ids in ``hidden``."""

    def __init__(self) -> None:
        super().__init__(
            seed=7,
            rules=RULES,
            auto_fill=False,
            faults=FaultPlan(partial_fills=(Decimal("0.3"), Decimal("0.7"))),
        )
        self.hidden: set[str] = set()

    async def get_fills(self, since: datetime | None = None) -> list[Fill]:
        return [f for f in await super().get_fills(since) if f.client_order_id not in self.hidden]


def test_executions_the_broker_cannot_list_are_never_an_orphan(tmp_path: Path) -> None:
    """The broker says 3 of 10 filled, then cancelled; its executions cannot be had: no
    synthetic order takes them (they belong to that order), the run is fatal, halted."""
    broker = HidingFills()
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    order = run(rig.om.submit(buy("10")))
    assert order.broker_order_id is not None
    broker.advance()  # 3 of 10
    broker.cancel(order.broker_order_id)
    run(
        rig.om.force_state(
            order.client_order_id, OrderState.CANCELLED, reason="lost", _reconciliation=True
        )
    )
    broker.hidden.add(order.client_order_id)
    rig = restart(rig, tmp_path)
    try:
        with pytest.raises(ReconciliationFatalError, match="AAPL"):
            reconcile(rig)
        assert not [o for o in rig.om.journal.orders() if o.client_order_id.startswith("orphan-")]
        assert rig.om.halted is not None
    finally:
        rig.close()


def test_an_unknown_stop_is_not_given_up_inside_the_visibility_window(tmp_path: Path) -> None:
    """The stop's reply is lost and the broker's lookups lag inside its window: the
    reconciler waits the window out and looks again; it never marks the stop failed and
    sends a second one."""
    rules = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY, visibility_window_seconds=0.3)
    broker = PaperBroker(seed=7, rules=rules)
    rig = restart(long_position(tmp_path, broker), tmp_path)
    broker.faults = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.NOT_FOUND, times=3 + 1)
    )
    try:
        r = reconcile(rig)
        assert broker.submit_calls == 2 and r.emergency_stops_placed == 1, r
        assert len(stops(broker)) == 1 and exact(broker)
    finally:
        rig.close()


def test_status_reports_over_cover_and_stray_stops(tmp_path: Path) -> None:
    """``atb orders status``: over-cover is not "protected" (it would flip the position), a
    stop that would grow the position is listed; after reconciling, OK."""
    from click.testing import CliRunner

    from cli.main import atb

    broker = paper()
    rig = long_position(tmp_path, broker, "4")
    run(rig.om.submit(stop_intent("sell", "10", "90")))
    grow = run(rig.om.submit(stop_intent("buy", "1", "120")))
    rig.close()
    args = ["orders", "--dir", str(tmp_path / "wal"), "--database-url",
            f"sqlite:///{tmp_path / 'atb.db'}", "status", "--no-broker", "--json"]  # fmt: skip
    r = CliRunner().invoke(atb, args)
    st = orjson.loads(r.output)
    assert r.exit_code == 1 and not st["ok"], r.output
    assert st["unprotected_positions"] == ["AAPL"] and st["stray_stops"] == [grow.client_order_id]
    rig = make_rig(tmp_path, broker)
    try:
        reconcile(rig)
    finally:
        rig.close()
    r = CliRunner().invoke(atb, args)
    assert r.exit_code == 0 and orjson.loads(r.output)["ok"], r.output


# ---------------------------------------------------------------------------- the last send


def _journal_sent(rig: Rig, intent: OrderIntent, sent_at: datetime, *, duplicate: bool) -> str:
    """What a process that died left: the intent and SUBMITTED at ``sent_at`` (and, if
    ``duplicate``, the broker's "duplicate client id" answer journaled as UNKNOWN)."""
    cid = intent.client_order_id
    j = OrderJournal(rig.ddb)
    j.record_submission(intent, OrderEvent(cid, 2, EventKind.SUBMITTED, S.SUBMITTING, sent_at))
    if duplicate:
        j.record_event(
            OrderEvent(cid, 3, EventKind.UNKNOWN, S.UNKNOWN, sent_at, None, DUPLICATE_ANSWER),
            DUPLICATE_ANSWER,
        )
    return cid


def _states(rig: Rig, cid: str) -> list[str]:
    return [str(e["state"]) for e in rig.om.journal.events(cid)]


def test_the_reconciler_measures_the_window_from_the_last_send(tmp_path: Path) -> None:
    """Sent 2 s ago (the call's timeout is 5 s); the process died; the request reached the
    broker late and the broker's lookups lag. The request could arrive until the process
    ended, so the 1 s window runs from now: the reconciler waits and finds it. Measured
    from ``updated_at`` (the send, 2 s ago) the window was over: SUBMIT_FAILED at the first
    "not found", while the broker held it."""
    rules = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY, visibility_window_seconds=1.0)
    broker = paper(rules)
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    intent = buy("4", created_at=datetime.now(UTC) - timedelta(seconds=2))
    cid = _journal_sent(rig, intent, intent.created_at, duplicate=False)
    broker.submit(intent)  # the request arrived; it filled at once (not an open order)
    broker.faults = FaultPlan().on("get_order_by_client_id", Fault.NOT_FOUND)  # lags once
    rig = restart(rig, tmp_path)
    try:
        r = reconcile(rig, replace(FAST, recent_hours=1e-9))  # only a lookup can find it
        got = rig.om.get(cid)
        assert got is not None and got.state is S.FILLED, r
        assert "submit_failed" not in _states(rig, cid), r
        assert broker.faults.calls("get_order_by_client_id") >= 2  # looked again after it
        assert journal_positions(rig.ddb) == broker.net_positions()
    finally:
        rig.close()


@pytest.mark.parametrize("window", [0.0, 0.3], ids=["window0", "window0.3"])
def test_the_reconciler_never_gives_up_an_order_answered_duplicate(
    tmp_path: Path, window: float
) -> None:
    """The broker answered "duplicate client id" (it exists there) but never shows it. The
    manager keeps such an order UNKNOWN; so does the reconciler: never SUBMIT_FAILED, an
    error names it, the end check fails, trading stays halted."""
    rules = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY, visibility_window_seconds=window)
    broker = paper(rules)
    rig = make_rig(tmp_path, broker)
    run(rig.om.start())
    cid = _journal_sent(rig, buy("4"), datetime.now(UTC), duplicate=True)
    rig = restart(rig, tmp_path)
    try:
        with pytest.raises(ReconciliationFatalError, match=cid):
            reconcile(rig)
        got = rig.om.get(cid)
        assert got is not None and got.state is S.UNKNOWN
        assert "submit_failed" not in _states(rig, cid)
        assert rig.om.halted is not None
    finally:
        rig.close()


def test_an_unknown_emergency_stop_answered_duplicate_is_never_given_up(tmp_path: Path) -> None:
    """Rule 3 (protective orders) has the same rule: the emergency stop's submit is answered
    "duplicate client id" and lookups never show it: it is not given up (never
    SUBMIT_FAILED) and nothing more is sent for the symbol in that pass; the end check
    fails, and the next pass finds it in the broker's open orders and takes it."""
    broker = paper(LOOK_ONLY)
    rig = restart(long_position(tmp_path, broker, "10"), tmp_path)
    broker.faults = (
        FaultPlan()
        .on("submit_order", Fault.DUPLICATE_ID)
        .on("get_order_by_client_id", Fault.NOT_FOUND, times=1000)
    )
    try:
        r = reconcile(rig)
        assert any("duplicate client id" in e and "never submit_failed" in e for e in r.errors)
        assert any("end check of pass 1" in e for e in r.errors), r
        ((es),) = es_orders(broker)  # one stop at the broker: nothing more was sent
        got = rig.om.get(es.client_order_id)
        assert got is not None and got.state is S.ACCEPTED, r
        assert "submit_failed" not in _states(rig, es.client_order_id)
        assert rig.om.halted is None and exact(broker)
    finally:
        rig.close()
