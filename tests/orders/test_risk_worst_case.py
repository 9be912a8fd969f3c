"""Risk limits on the worst case, per side (issue 20, item 2).

``max_position`` used to net the open orders of both sides: a resting sell of 10 let a buy
of 20 through a limit of 10 (the sell may never fill: the position would be 20). Now, per
side: the position plus every open buy (this one included) <= max, the position minus every
open sell >= -max; the same for ``max_position_notional``, valued at the order's price.
Concurrent submits cannot pass a limit together: each is checked and reserved with no
await in between (its balance read outside any lock), and counts as an open order of
every later check from then on.

Real parts: the paper broker (orders rest with ``auto_fill=False``), a log directory and a
SQLite file or the PostgreSQL fixture.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from orders_helpers import Rig, make_rig, run

from wal.orders import (
    Fill,
    OrderIntent,
    OrderRejected,
    OrderState,
    PaperBroker,
    RejectReason,
    RiskLimits,
    RiskView,
    check_risk,
)
from wal.orders.journal import FillCall

D = Decimal


def view(position: str = "0", buys: str = "0", sells: str = "0") -> RiskView:
    return RiskView(D(100), D(10**9), D(0), D(position), D(0), D(buys), D(sells))


def order(side: str, qty: str) -> OrderIntent:
    return OrderIntent(symbol="AAPL", side=side, quantity=D(qty))


@pytest.mark.parametrize(
    ("side", "qty", "position", "buys", "sells", "ok"),
    [
        ("buy", "20", "0", "0", "10", False),  # the case: a resting sell makes no room
        ("buy", "10", "0", "0", "10", True),
        ("buy", "5", "0", "6", "0", False),  # open buys count on the buy side
        ("buy", "4", "0", "6", "0", True),
        ("sell", "20", "0", "10", "0", False),  # a resting buy makes no room for a sell
        ("sell", "5", "-6", "0", "0", False),
        ("sell", "5", "-6", "0", "0", False),
        ("sell", "15", "6", "0", "0", True),  # ends short 9
        ("buy", "5", "-20", "0", "0", True),  # reduces a short beyond the limit
        ("sell", "5", "20", "0", "0", True),  # reduces a long beyond the limit
        ("buy", "1", "10", "0", "0", False),
    ],
)
def test_max_position_per_side_on_the_worst_case(
    side: str, qty: str, position: str, buys: str, sells: str, ok: bool
) -> None:
    limits = RiskLimits(max_position=D(10), check_balance=False)
    if ok:
        check_risk(order(side, qty), limits, view(position, buys, sells))
        return
    with pytest.raises(OrderRejected) as info:
        check_risk(order(side, qty), limits, view(position, buys, sells))
    assert info.value.reason is RejectReason.MAX_POSITION


def test_max_position_notional_per_side_on_the_worst_case() -> None:
    limits = RiskLimits(max_position_notional=D(1000), check_balance=False)
    check_risk(order("buy", "10"), limits, view(sells="10"))  # 10 x 100 = 1000
    with pytest.raises(OrderRejected) as info:
        check_risk(order("buy", "11"), limits, view(sells="10"))
    assert info.value.reason is RejectReason.MAX_NOTIONAL
    with pytest.raises(OrderRejected):
        check_risk(order("sell", "5"), limits, view(position="-3", sells="3"))


def test_a_resting_sell_does_not_let_a_buy_past_the_limit(db_url: str, tmp_path: Path) -> None:
    broker = PaperBroker(seed=1, auto_fill=False)
    limits = RiskLimits(max_position=D(10))
    rig = make_rig(tmp_path, broker, url=db_url, risk=limits)

    async def go() -> None:
        await rig.om.start()
        limit = {"order_type": "limit"}
        await rig.om.submit(
            OrderIntent(symbol="AAPL", side="sell", quantity=D(10), limit_price=D(500), **limit)
        )  # rests: far above the market
        with pytest.raises(OrderRejected) as info:
            await rig.om.submit(
                OrderIntent(symbol="AAPL", side="buy", quantity=D(20), limit_price=D(1), **limit)
            )
        assert info.value.reason is RejectReason.MAX_POSITION
        await rig.om.submit(
            OrderIntent(symbol="AAPL", side="buy", quantity=D(10), limit_price=D(1), **limit)
        )

    try:
        run(go())
    finally:
        rig.close()


def test_concurrent_submits_cannot_pass_a_limit_together(db_url: str, tmp_path: Path) -> None:
    broker = PaperBroker(seed=1, auto_fill=False)
    rig = make_rig(tmp_path, broker, url=db_url, risk=RiskLimits(max_position=D(10)))

    async def go() -> None:
        await rig.om.start()
        buys = [
            OrderIntent(
                symbol="AAPL", side="buy", quantity=D(6), order_type="limit", limit_price=D(1)
            )
            for _ in range(4)
        ]
        got = await asyncio.gather(*(rig.om.submit(b) for b in buys), return_exceptions=True)
        rejected = [g for g in got if isinstance(g, OrderRejected)]
        assert len(rejected) == 3, got
        assert all(r.reason is RejectReason.MAX_POSITION for r in rejected)

    try:
        run(go())
    finally:
        rig.close()


class _BarrierAtBalance:
    """The database's balance read, which waits until both submits are reading it: both
    reads are in flight together, so both checks come after both reads (threads + a
    barrier, no sleeps)."""

    def __init__(self, read: Any) -> None:
        self.read = read
        self.barrier = threading.Barrier(2, timeout=30)

    def __call__(self, account: str = "default") -> Decimal:
        self.barrier.wait()
        return Decimal(self.read(account))


@pytest.mark.parametrize("limit", ["balance", "position"])
def test_two_submits_checked_at_once_never_both_pass_a_limit_only_one_fits(
    limit: str, db_url: str, tmp_path: Path
) -> None:
    """The check and the reservation happen with no await between them, while the balance
    is read outside any lock: two submits whose balance reads overlap cannot both pass a
    limit only one of them fits (the second sees the first's reservation)."""
    broker = PaperBroker(seed=1, auto_fill=False)
    risk = RiskLimits(max_position=D(10)) if limit == "position" else RiskLimits()
    rig = make_rig(tmp_path, broker, url=db_url, risk=risk, deposit=D(1000))
    reads = _BarrierAtBalance(rig.ddb.get_balance)
    rig.om.db.get_balance = reads  # type: ignore[method-assign]
    qty = D(6)  # 2 x 6 > 10 units; 2 x 600 > 1000 cash

    async def go() -> None:
        await rig.om.start()
        buys = [
            OrderIntent(
                symbol="AAPL", side="buy", quantity=qty, order_type="limit", limit_price=D(100)
            )
            for _ in range(2)
        ]
        got = await asyncio.gather(*(rig.om.submit(b) for b in buys), return_exceptions=True)
        assert not reads.barrier.broken  # both balance reads were in flight together
        refused = [g for g in got if isinstance(g, OrderRejected)]
        assert len(refused) == 1, got
        want = (
            RejectReason.MAX_POSITION
            if limit == "position"
            else (RejectReason.INSUFFICIENT_BALANCE)
        )
        assert refused[0].reason is want, refused[0]
        assert len(broker.all_orders()) == 1  # one order at the broker

    try:
        run(go())
    finally:
        rig.close()


def test_an_open_market_buy_reserves_at_its_reference_price(db_url: str, tmp_path: Path) -> None:
    """A market buy has no price of its own: it reserves at the price it was checked at
    when the market has no quote any more (it used to reserve 0, letting a second buy
    spend the same cash)."""
    broker = PaperBroker(seed=1, auto_fill=False)
    rig = make_rig(tmp_path, broker, url=db_url, deposit=D(1000))
    quotes: dict[str, Decimal] = {"AAPL": D(100)}
    rig.om.price_source = quotes.get

    async def go() -> None:
        await rig.om.start()
        await rig.om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=D(6)))  # rests
        quotes.clear()  # no quote: the open market buy is valued at its checked price
        with pytest.raises(OrderRejected) as info:
            await rig.om.submit(
                OrderIntent(
                    symbol="AAPL",
                    side="buy",
                    quantity=D(6),
                    order_type="limit",
                    limit_price=D(100),
                )
            )
        assert info.value.reason is RejectReason.INSUFFICIENT_BALANCE
        await rig.om.submit(
            OrderIntent(
                symbol="AAPL", side="buy", quantity=D(4), order_type="limit", limit_price=D(100)
            )
        )  # 600 reserved + 400 = the balance

    try:
        run(go())
    finally:
        rig.close()


def fill_writes(rig: Rig, hold_first: asyncio.Event | None = None) -> list[int]:
    """The sizes of the journal's fill writes, in order (each still written); with
    ``hold_first``, the first write stays in flight until that event is set."""
    writes: list[int] = []
    write_fills = rig.om.journal.arecord_fills

    async def counted(calls: list[FillCall]) -> None:
        writes.append(len(calls))
        if hold_first is not None and len(writes) == 1:
            await hold_first.wait()
        await write_fills(calls)

    rig.om.journal.arecord_fills = counted  # type: ignore[method-assign]
    return writes


async def buys_executed(rig: Rig, broker: PaperBroker, n: int) -> list[Fill]:
    """Start the manager, submit n buys of 1 AAPL, let the broker execute them all."""
    await rig.om.start()
    for _ in range(n):
        await rig.om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=D(1)))
    assert broker.advance() == n
    return broker.all_fills()


def test_fills_of_one_symbol_at_once_share_writes_each_from_the_last_position(
    db_url: str, tmp_path: Path
) -> None:
    """Twenty fills of one symbol booked at once: those that wait for the symbol's turn are
    journaled together (fewer writes than fills), each computed from the position the one
    before it made, so the position is their sum in memory and in the database, and every
    fill is booked to its own order once."""
    broker = PaperBroker(seed=1, auto_fill=False)
    rig = make_rig(tmp_path, broker, url=db_url)
    writes = fill_writes(rig)

    async def go() -> None:
        fills = await buys_executed(rig, broker, 20)
        await asyncio.gather(*(rig.om.on_fill(f) for f in fills))
        assert rig.om.positions() == {"AAPL": D(20)}

    try:
        run(go())
        assert sum(writes) == 20 and len(writes) < 20, writes
        orders = [o for o in rig.om.journal.orders() if o.symbol == "AAPL"]
        assert len(orders) == 20 and {o.state for o in orders} == {OrderState.FILLED}
        rig.ddb.drain(timeout=30)
        open_ = [p for p in rig.ddb.get_open_positions() if p["symbol"] == "AAPL"]
        assert [D(str(p["quantity"])) for p in open_] == [D(20)]
    finally:
        rig.close()


def test_a_fill_that_comes_while_its_symbols_write_is_in_flight_waits_for_it(
    tmp_path: Path,
) -> None:
    """The symbol's first fill is being written (held there); a second fill comes: it is
    queued, not written beside it from the same durable position. Once the first is
    durable, the second is computed from it: the position is 2, not 1."""
    broker = PaperBroker(seed=1, auto_fill=False)
    rig = make_rig(tmp_path, broker)
    release = asyncio.Event()
    writes = fill_writes(rig, hold_first=release)  # the first write in flight until released

    async def go() -> None:
        first, second = await buys_executed(rig, broker, 2)
        t1 = asyncio.create_task(rig.om.on_fill(first))
        while not writes:  # the loop's turns, not time: until the first write started
            await asyncio.sleep(0)
        t2 = asyncio.create_task(rig.om.on_fill(second))
        for _ in range(1_000):  # the loop's turns until the second fill is queued or written
            if len(writes) > 1 or rig.om._fill_turns.queued():
                break
            await asyncio.sleep(0)
        assert writes == [1], writes  # queued behind the write in flight, not written beside it
        release.set()
        await asyncio.gather(t1, t2)
        assert writes == [1, 1] and rig.om.positions() == {"AAPL": D(2)}

    try:
        run(go())
    finally:
        rig.close()


def test_two_fills_in_one_symbol_never_compute_from_the_same_position(
    db_url: str, tmp_path: Path
) -> None:
    """Fills of two orders in one symbol booked at once: the second waits for the first's
    position (the symbol's turn), so the position is their sum, in memory and in the
    database, never the last one's alone."""
    broker = PaperBroker(seed=1, auto_fill=False)
    rig = make_rig(tmp_path, broker, url=db_url)

    async def go() -> None:
        await rig.om.start()
        for q in (D(2), D(3)):
            await rig.om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=q))
        assert broker.advance() == 2
        fills = broker.all_fills()
        await asyncio.gather(*(rig.om.on_fill(f) for f in fills))
        assert rig.om.positions() == {"AAPL": D(5)}

    try:
        run(go())
        rig.ddb.drain(timeout=30)
        open_ = [p for p in rig.ddb.get_open_positions() if p["symbol"] == "AAPL"]
        assert [D(str(p["quantity"])) for p in open_] == [D(5)]
    finally:
        rig.close()
