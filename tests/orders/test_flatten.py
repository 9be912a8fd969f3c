"""Flatten racing a protective stop: the position is closed once, never sold twice.

A long of 10 AAPL with its protective stop (sell 10 at 95) resting at the broker. ``atb
orders flatten`` used to send the market close first and cancel the symbol's stops only
once the close had filled: while the close was on its way the stop was live, and a market
falling through 95 then sold the position twice (short 10). Now flatten cancels the
symbol's open orders first, waits for each to be final (a stop that executed before its
cancel arrived is booked), sizes the close from what is then held, and sends no close beside
an order whose cancel is not confirmed (``wal.orders.flatten``).

The interleavings are forced by the paper broker itself (``racing_paper``: the market moves
the moment a request arrives). Real log files and SQLite. The CLI over HTTP:
``tests/cli/test_flatten_race.py``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from orders_helpers import journal_positions, make_rig, run
from racing_paper import (
    StopFillsBeforeItsCancel,
    StopTriggersAsTheCloseArrives,
    long_with_stop,
    sells,
)

from wal.orders import (
    ClientIdRules,
    DedupScope,
    Fault,
    FaultPlan,
    OrderIntent,
    OrderState,
    PaperBroker,
)
from wal.orders.flatten import flatten

GLOBAL = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)


def test_the_stop_triggering_as_the_close_arrives_sells_once(tmp_path: Path) -> None:
    """The stop is cancelled (confirmed) before the close is sent: the market falling
    through 95 as the close arrives triggers nothing; one sell of 10, flat."""
    broker = StopTriggersAsTheCloseArrives(seed=1, rules=GLOBAL)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        stop = await long_with_stop(rig.om)
        [result] = await flatten(rig.om)
        assert result.flat, result.problem
        assert [o.client_order_id for o in result.cancelled] == [stop]
        assert rig.om.get(stop).state is OrderState.CANCELLED  # type: ignore[union-attr]
        assert result.close is not None
        assert (result.close.state, result.close.filled_quantity) == (OrderState.FILLED, 10)
        assert rig.om.positions() == {}

    try:
        run(go())
        assert broker.net_positions() == {}
        assert [(t, q) for _, t, q in sells(broker)] == [("market", Decimal(10))]
        assert rig.ddb.drain(10) == 0
        assert journal_positions(rig.ddb) == {}
    finally:
        rig.close()


def test_a_stop_that_fills_before_its_cancel_leaves_nothing_to_close(tmp_path: Path) -> None:
    """The stop executes before its cancel arrives: the cancel is refused, the lookup says
    filled, its fill is booked, the position is read again: flat, no close is sent."""
    broker = StopFillsBeforeItsCancel(seed=1, rules=GLOBAL)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        stop = await long_with_stop(rig.om)
        calls = broker.submit_calls
        [result] = await flatten(rig.om)
        assert result.flat, result.problem
        assert result.close is None
        assert [(o.client_order_id, o.state) for o in result.cancelled] == [
            (stop, OrderState.FILLED)
        ]
        assert broker.submit_calls == calls  # no close was sent
        assert rig.om.positions() == {}

    try:
        run(go())
        assert broker.net_positions() == {}
        assert [(t, q) for _, t, q in sells(broker)] == [("stop", Decimal(10))]
        assert rig.ddb.drain(10) == 0
        assert journal_positions(rig.ddb) == {}
    finally:
        rig.close()


def test_no_close_is_sent_beside_a_stop_whose_cancel_is_not_confirmed(tmp_path: Path) -> None:
    """Every cancel fails (503): the stop stays live at the broker, so no close is sent for
    AAPL (it could sell the position a second time); the problem says why."""
    plan = FaultPlan().on("cancel_order", Fault.SERVER_ERROR, times=100)
    broker = PaperBroker(seed=1, rules=GLOBAL, faults=plan)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        stop = await long_with_stop(rig.om)
        calls = broker.submit_calls
        [result] = await flatten(rig.om)
        assert not result.flat and result.close is None
        assert result.problem is not None and stop in result.problem
        assert "no close was sent" in result.problem
        assert broker.submit_calls == calls
        assert rig.om.positions() == {"AAPL": Decimal(10)}

    try:
        run(go())
        assert broker.net_positions() == {"AAPL": Decimal(10)}
        assert [o.order_type for o in broker.open_orders()] == ["stop"]  # still protected
    finally:
        rig.close()


def test_every_open_order_of_the_symbol_is_cancelled_first_and_others_are_left(
    tmp_path: Path,
) -> None:
    """A take-profit (sell limit 110) and a resting buy (limit 90) of AAPL would sell the
    closed position short, or open it again: cancelled before the close. MSFT's order is
    not AAPL's: left as it is."""
    broker = PaperBroker(seed=1, rules=GLOBAL)
    rig = make_rig(tmp_path, broker)

    def limit(symbol: str, side: str, price: str) -> OrderIntent:
        return OrderIntent(
            symbol=symbol,
            side=side,
            quantity=Decimal(10 if side == "sell" else 1),
            order_type="limit",
            limit_price=Decimal(price),
            time_in_force="gtc",
        )

    async def go() -> None:
        await rig.om.start()
        stop = await long_with_stop(rig.om)
        tp = await rig.om.submit(limit("AAPL", "sell", "110"), protective=True)
        bid = await rig.om.submit(limit("AAPL", "buy", "90"))
        other = await rig.om.submit(limit("MSFT", "buy", "90"))
        [result] = await flatten(rig.om, ["AAPL"])
        assert result.flat, result.problem
        assert sorted(o.client_order_id for o in result.cancelled) == sorted(
            [stop, tp.client_order_id, bid.client_order_id]
        )
        assert rig.om.get(other.client_order_id).state is OrderState.ACCEPTED  # type: ignore[union-attr]
        assert rig.om.positions() == {}

    try:
        run(go())
        assert broker.net_positions() == {}
        assert [o.symbol for o in broker.open_orders()] == ["MSFT"]
    finally:
        rig.close()
