"""The reconciler never leaves a position over-protected by its reducing orders that are not
stops (a bracket's take-profit, a user's limit sell against a long).

It used to count stops only: a take-profit live for the whole position (its stop-loss
refused) got an emergency stop ``es-...`` beside it, outside its OCO group, and a price
through the take-profit and then the emergency stop filled both (a long of 10 became a short
of 10); a market close left the take-profit live on a flat position (it filled later and
opened a short). The rule (``wal.orders.stops``): after the reconciler acts, all the live
reducing orders of a symbol filling together (an OCO group counted as its largest member)
never execute more than the position, and the stops still cover it exactly.

Real parts: a real log and database (SQLite and PostgreSQL where ``db_url`` is used), the
in-process ``PaperBroker`` whose ``set_price`` moves the market; a "restart" is a new engine
on the same files. Every check reads the broker's own state.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from orders_helpers import Rig, buy, make_rig, run

from wal.orders import (
    BrokerOrder,
    ClientIdRules,
    DedupScope,
    Fault,
    FaultPlan,
    OrderIntent,
    OrderState,
    PaperBroker,
    ReconcilerConfig,
    ReconciliationFatalError,
    ReconciliationResult,
    StartupReconciler,
)

D = Decimal
FAST = ReconcilerConfig(fetch_timeout=5.0, fetch_backoff=(0.001, 0.002, 0.004))
OCO = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)
NO_OCO = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0, oco_groups=False)
UP_THEN_DOWN = ("111", "97", "94", "89")  # through the take-profit (110), then every stop
DOWN_THEN_UP = ("97", "94", "89", "111")  # through every stop, then the take-profit


def reconcile(rig: Rig, config: ReconcilerConfig = FAST) -> ReconciliationResult:
    return run(StartupReconciler(rig.om, config).run())


def leg(kind: str, qty: str, group: str | None, price: str | None = None) -> OrderIntent:
    """A reducing sell of the long: a take-profit limit (110), or a stop-loss stop (95)."""
    return OrderIntent(
        symbol="AAPL",
        side="sell",
        quantity=D(qty),
        order_type="limit" if kind == "tp" else "stop",
        limit_price=D(price or "110") if kind == "tp" else None,
        stop_price=D(price or "95") if kind == "sl" else None,
        time_in_force="gtc",
        oco_group=group,
    )


def setup(
    tmp_path: Path,
    legs: list[OrderIntent],
    *,
    rules: ClientIdRules = OCO,
    url: str | None = None,
) -> tuple[Rig, PaperBroker, list[str]]:
    """A long of 10 at 100 with ``legs`` live (their client ids), then a restart."""
    broker = PaperBroker(seed=7, rules=rules)
    rig = make_rig(tmp_path, broker, url=url)
    run(rig.om.start())
    assert run(rig.om.submit(buy("10"))).state is OrderState.FILLED
    cids = []
    for intent in legs:
        order = run(rig.om.submit(intent))
        assert order.state is OrderState.ACCEPTED, order
        cids.append(order.client_order_id)
    rig.close()
    return make_rig(tmp_path, broker, url=url), broker, cids


def live(broker: PaperBroker) -> dict[str, BrokerOrder]:
    return {
        o.client_order_id: o
        for o in broker.all_orders()
        if o.status in ("new", "accepted", "partially_filled")
    }


def es(broker: PaperBroker) -> list[BrokerOrder]:
    return [o for cid, o in live(broker).items() if cid.startswith("es-")]


def exposure_ok(broker: PaperBroker) -> bool:
    """Stops exact, and every live reducing order executing never passes zero."""
    pos = broker.net_positions().get("AAPL", D(0))
    orders = [o for o in live(broker).values() if o.side == "sell"]
    stops = sum((o.remaining for o in orders if o.order_type == "stop"), D(0))
    alone = sum((o.remaining for o in orders if o.oco_group is None), D(0))
    groups: dict[str, Decimal] = {}
    for o in orders:
        if o.oco_group is not None:
            groups[o.oco_group] = max(groups.get(o.oco_group, D(0)), o.remaining)
    return stops == pos and alone + sum(groups.values(), D(0)) <= pos


def walk(broker: PaperBroker, prices: tuple[str, ...]) -> list[Decimal]:
    """Move the market through ``prices``; the position after each step."""
    seen = []
    for p in prices:
        broker.set_price("AAPL", D(p))
        seen.append(broker.net_positions().get("AAPL", D(0)))
    return seen


def quiet(rig: Rig, broker: PaperBroker) -> None:
    """A second run right after: no change, no error, no broker write."""
    writes = broker.write_calls()
    r = reconcile(rig)
    assert r.changes == 0 and not r.errors, r
    assert broker.write_calls() == writes


# ---------------------------------------------------------------------------- the key test

CASES = {  # the legs live at the restart, how many emergency stops get refused
    "tp_in_group": ([("tp", "10", "oco-b1")], 0),
    "tp_alone": ([("tp", "10", None)], 0),
    "sl6_tp10_one_group": ([("sl", "6", "oco-b1"), ("tp", "10", "oco-b1")], 0),
    "sl6_alone_tp10_in_group": ([("sl", "6", None), ("tp", "10", "oco-b1")], 0),
    "close_tp_in_group": ([("tp", "10", "oco-b1")], FAST.stop_attempts),
    "close_tp_alone": ([("tp", "10", None)], FAST.stop_attempts),
    "close_4_beside_sl6": ([("sl", "6", None), ("tp", "10", "oco-b1")], FAST.stop_attempts),
}


@pytest.mark.parametrize("path", [UP_THEN_DOWN, DOWN_THEN_UP], ids=["tp_first", "stop_first"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_after_the_reconciler_the_market_never_turns_the_long_short(
    db_url: str, tmp_path: Path, case: str, path: tuple[str, ...]
) -> None:
    """The defect, end to end: a long of 10 with a take-profit live (its stop-loss refused
    or partial), the reconciler run (an emergency stop, or a close when every stop is
    refused), then the market through the take-profit and the stops, in either order. The
    position never goes short and ends flat. (The old code: short 10, or short 4.)"""
    legs, refusals = CASES[case]
    rig, broker, _ = setup(tmp_path, [leg(*x) for x in legs], url=db_url)
    if refusals:
        broker.faults = FaultPlan().on("submit_order", Fault.REJECT, times=refusals)
    try:
        r = reconcile(rig)
        assert not [e for e in r.errors if "refus" not in e], r.errors
        seen = walk(broker, path)
        assert all(q >= 0 for q in seen), f"the long turned short: {seen}"
        assert broker.net_positions() == {}, seen
    finally:
        rig.close()


# ---------------------------------------------------------------------------- the ES links


@pytest.mark.parametrize("path", [UP_THEN_DOWN, DOWN_THEN_UP], ids=["tp_first", "stop_first"])
def test_an_emergency_stop_joins_the_take_profits_group_and_never_flips_the_long(
    db_url: str, tmp_path: Path, path: tuple[str, ...]
) -> None:
    """A bracket whose stop-loss was refused: its take-profit of 10 live in its OCO group.
    The emergency stop joins that group: whichever fills first takes the other off. (The
    old code placed it outside the group: through 110 then 98 the long of 10 became a
    short of 10.)"""
    rig, broker, (tp,) = setup(tmp_path, [leg("tp", "10", "oco-b1")], url=db_url)
    try:
        r = reconcile(rig)
        assert r.emergency_stops_placed == 1 and r.exits_canceled == 0, r
        ((stop),) = es(broker)
        assert (stop.quantity, stop.stop_price, stop.oco_group) == (D(10), D(98), "oco-b1")
        assert live(broker)[tp].remaining == 10  # the take-profit kept
        assert exposure_ok(broker)
        quiet(rig, broker)
        seen = walk(broker, path)
        assert all(q >= 0 for q in seen), seen  # never short
        assert broker.net_positions() == {} and live(broker) == {}
    finally:
        rig.close()


@pytest.mark.parametrize("rules", [OCO, NO_OCO], ids=["oco_broker", "no_oco_broker"])
@pytest.mark.parametrize("path", [UP_THEN_DOWN, DOWN_THEN_UP], ids=["tp_first", "stop_first"])
def test_a_take_profit_outside_any_group_is_cancelled_before_the_emergency_stop(
    tmp_path: Path, rules: ClientIdRules, path: tuple[str, ...]
) -> None:
    """A limit sell of 10 with no group (a single-leg bracket, a user's order) cannot be
    linked: it is cancelled, confirmed, before the emergency stop is sent."""
    rig, broker, (tp,) = setup(tmp_path, [leg("tp", "10", None)], rules=rules)
    try:
        r = reconcile(rig)
        assert r.emergency_stops_placed == 1 and r.exits_canceled == 1, r
        got = rig.om.get(tp)
        assert got is not None and got.state is OrderState.CANCELLED
        events = rig.om.journal.events(tp)
        assert any("protection beats profit-taking" in (e["detail"] or "") for e in events)
        ((stop),) = es(broker)
        assert stop.oco_group is None and set(live(broker)) == {stop.client_order_id}
        quiet(rig, broker)
        seen = walk(broker, path)
        assert all(q >= 0 for q in seen) and broker.net_positions() == {}, seen
    finally:
        rig.close()


@pytest.mark.parametrize("path", [UP_THEN_DOWN, DOWN_THEN_UP], ids=["tp_first", "stop_first"])
def test_a_partial_stop_loss_keeps_its_group_and_the_take_profit_goes(
    db_url: str, tmp_path: Path, path: tuple[str, ...]
) -> None:
    """The stop-loss covers 6 of 10 in the bracket's group, the take-profit 10 in the same
    group: the emergency stop of 4 cannot join (a stop-loss fill would reduce it) and the
    take-profit beside it would execute 14: it is cancelled. (The old code: through 110
    the group sold 10, then 98 sold 4 more: a short of 4.)"""
    rig, broker, (sl, tp) = setup(
        tmp_path, [leg("sl", "6", "oco-b1"), leg("tp", "10", "oco-b1")], url=db_url
    )
    try:
        r = reconcile(rig)
        assert r.emergency_stops_placed == 1 and r.exits_canceled == 1, r
        ((stop),) = es(broker)
        assert (stop.quantity, stop.oco_group) == (D(4), None)
        assert set(live(broker)) == {sl, stop.client_order_id}
        assert rig.om.get(tp).state is OrderState.CANCELLED  # type: ignore[union-attr]
        assert exposure_ok(broker)
        quiet(rig, broker)
        seen = walk(broker, path)
        assert all(q >= 0 for q in seen) and broker.net_positions() == {}, seen
    finally:
        rig.close()


@pytest.mark.parametrize("path", [UP_THEN_DOWN, DOWN_THEN_UP], ids=["tp_first", "stop_first"])
def test_an_emergency_stop_never_joins_a_group_that_holds_a_stop(
    tmp_path: Path, path: tuple[str, ...]
) -> None:
    """Stop-loss 4 and take-profit 4 in one group (they execute at most 4): the emergency
    stop of 6 stays outside it. Inside, its own fill would take the stop-loss off, or the
    stop-loss's fill 4 off it, and leave 4 of the long bare."""
    rig, broker, (sl, tp) = setup(tmp_path, [leg("sl", "4", "g"), leg("tp", "4", "g")])
    try:
        r = reconcile(rig)
        assert r.emergency_stops_placed == 1 and r.exits_canceled == 0, r
        ((stop),) = es(broker)
        assert (stop.quantity, stop.oco_group) == (D(6), None)
        assert set(live(broker)) == {sl, tp, stop.client_order_id} and exposure_ok(broker)
        seen = walk(broker, path)
        assert all(q >= 0 for q in seen) and broker.net_positions() == {}, seen
    finally:
        rig.close()


def test_a_user_limit_beside_exact_stops_is_cancelled(db_url: str, tmp_path: Path) -> None:
    """Stops already exact (10 of 10) and a user's limit sell of 5 outside any group: the
    two could sell 15 of the 10. Nothing else to do, yet the limit goes."""
    rig, broker, (sl, _limit) = setup(
        tmp_path, [leg("sl", "10", None), leg("tp", "5", None)], url=db_url
    )
    try:
        r = reconcile(rig)
        assert r.exits_canceled == 1 and r.emergency_stops_placed == 0, r
        assert r.stops_canceled == 0 and set(live(broker)) == {sl}
        quiet(rig, broker)
        seen = walk(broker, UP_THEN_DOWN)
        assert all(q >= 0 for q in seen) and broker.net_positions() == {}, seen
    finally:
        rig.close()


def test_a_bracket_with_exact_protection_is_left_alone(tmp_path: Path) -> None:
    """Stop-loss 10 and take-profit 10 in one group: they execute 10 at most, exact."""
    rig, broker, cids = setup(tmp_path, [leg("sl", "10", "g"), leg("tp", "10", "g")])
    try:
        writes = broker.write_calls()
        r = reconcile(rig)
        assert r.changes == 0 and not r.errors, r
        assert broker.write_calls() == writes and set(live(broker)) == set(cids)
    finally:
        rig.close()


# ---------------------------------------------------------------------------- the close


@pytest.mark.parametrize("grouped", [True, False], ids=["in_group", "alone"])
def test_a_market_close_never_leaves_the_take_profit_live(
    db_url: str, tmp_path: Path, grouped: bool
) -> None:
    """Every emergency stop refused: the position is closed at market. The take-profit is
    cancelled first (the old code left it live on the flat position: through 110 it sold
    10 it did not hold, a short of 10)."""
    rig, broker, (tp,) = setup(
        tmp_path, [leg("tp", "10", "oco-b1" if grouped else None)], url=db_url
    )
    broker.faults = FaultPlan().on("submit_order", Fault.REJECT, times=FAST.stop_attempts)
    try:
        r = reconcile(rig)
        assert r.positions_closed == 1 and r.exits_canceled == 1, r
        got = rig.om.get(tp)
        assert got is not None and got.state is OrderState.CANCELLED
        assert broker.net_positions() == {} and live(broker) == {}
        quiet(rig, broker)
        seen = walk(broker, DOWN_THEN_UP + UP_THEN_DOWN)
        assert all(q == 0 for q in seen), seen
    finally:
        rig.close()


def test_a_partial_close_cancels_the_take_profit_the_rest_cannot_carry(tmp_path: Path) -> None:
    """A user stop covers 6 of 10, the emergency stop of 4 is refused, 4 are closed at
    market: the take-profit of 10 (alone in its group) beside the stop of 6 could sell 16
    of the 6 left: cancelled before the close."""
    rig, broker, (sl, tp) = setup(tmp_path, [leg("sl", "6", None), leg("tp", "10", "oco-b1")])
    broker.faults = FaultPlan().on("submit_order", Fault.REJECT, times=FAST.stop_attempts)
    try:
        r = reconcile(rig)
        assert r.positions_closed == 1 and r.exits_canceled == 1, r
        assert broker.net_positions() == {"AAPL": D(6)} and set(live(broker)) == {sl}
        assert rig.om.get(tp).state is OrderState.CANCELLED  # type: ignore[union-attr]
        quiet(rig, broker)
        seen = walk(broker, UP_THEN_DOWN)
        assert all(q >= 0 for q in seen) and broker.net_positions() == {}, seen
    finally:
        rig.close()


# ---------------------------------------------------------------------------- confirmation


def test_an_unconfirmed_cancel_of_a_take_profit_places_nothing(tmp_path: Path) -> None:
    """The take-profit's cancel never reaches the broker: nothing is placed beside it (no
    emergency stop, no close); the run fails its end check and trading stays halted."""
    rig, broker, (tp,) = setup(tmp_path, [leg("tp", "10", None)])
    broker.faults = FaultPlan().on("cancel_order", Fault.TIMEOUT_BEFORE_ACCEPT, times=1000)
    submits = broker.submit_calls
    try:
        with pytest.raises(ReconciliationFatalError):
            reconcile(rig, ReconcilerConfig(fetch_timeout=5.0, fetch_backoff=(0.0,)))
        assert broker.submit_calls == submits and es(broker) == []
        assert set(live(broker)) == {tp} and rig.om.halted is not None
    finally:
        rig.close()


def test_the_end_check_counts_every_reducing_order(tmp_path: Path) -> None:
    """A stop of 10 and a limit sell of 5 outside any group under a long of 10: the end
    check reports it (a pass that left it so would not succeed)."""
    rig, _broker, _ = setup(tmp_path, [leg("sl", "10", None), leg("tp", "5", None)])
    try:
        problems = run(StartupReconciler(rig.om, FAST)._end_check())
        assert any("could execute 15 of the 10 position" in p for p in problems), problems
    finally:
        rig.close()


def test_a_dry_run_reports_the_link_and_the_cancel_and_changes_nothing(tmp_path: Path) -> None:
    rig, broker, (_sl, tp) = setup(tmp_path, [leg("sl", "6", None), leg("tp", "10", "oco-b1")])
    try:
        writes = broker.write_calls()
        r = run(StartupReconciler(rig.om, FAST).run(dry_run=True))
        assert r.exits_canceled == 1 and r.emergency_stops_placed == 1, r
        assert any(a.startswith(f"cancel order {tp} ") for a in r.actions), r.actions
        assert broker.write_calls() == writes
        r = run(StartupReconciler(rig.om, FAST).run(dry_run=True))  # still only planned
        assert r.exits_canceled == 1, r
    finally:
        rig.close()
