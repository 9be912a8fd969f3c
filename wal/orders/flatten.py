"""``flatten``: close the journal's positions, never more than is held.

A position is closed with a market order on the reducing side (``protective``: allowed
while trading is halted), sized from the journal's position. While a stop (or any other
order) of the symbol is live at the broker it may execute at any moment: a close sent
beside a live protective stop sells the position twice if the stop triggers meanwhile (the
position reversed). So, per symbol:

1. **Cancel first.** Every open journal order of the symbol is cancelled
   (``OrderManager.cancel``: looked up by client id, the cancel sent to the id the broker
   shows, its outcome read back), and each must be **final** in the journal before anything
   is sent: cancelled, or filled (the stop executed before its cancel arrived), its fills
   booked. A cancel whose outcome stays unknown (no lookup answered, the broker still shows
   it live, an order whose own outcome is unknown) stops the work on that symbol: no close
   is sent beside an order that may still execute (``problem``).
2. **Size the close after.** The position is read again once those orders are settled: what
   a stop executed before its cancel is gone from it. Flat: nothing is sent.
3. **Close** what is left at market. A close that is not filled is a ``problem``; the
   symbol's cancelled stops are not placed again (the engine's startup reconciliation
   protects a position left open).

``atb orders flatten`` (:mod:`cli.commands.orders_act`) is this, with the engine stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from wal.orders.errors import OrderError
from wal.orders.manager import OrderManager
from wal.orders.models import Order, OrderIntent
from wal.orders.states import OrderState, is_final

__all__ = ["FlattenResult", "flatten", "flatten_plan"]

log = logging.getLogger("wal.orders")

_STOP_TYPES = ("stop", "stop_limit")


@dataclass
class FlattenResult:
    """What ``flatten`` did for one symbol."""

    symbol: str
    held: Decimal  # the journal's position before (signed)
    cancelled: list[Order] = field(default_factory=list)  # the symbol's orders, now final
    close: Order | None = None  # the market close (None: none was sent)
    problem: str | None = None  # why the symbol may not be flat (None: it is)

    @property
    def flat(self) -> bool:
        return self.problem is None


def flatten_plan(om: OrderManager, symbols: Iterable[str] | None = None) -> dict[str, Decimal]:
    """The journal's non-zero positions (of ``symbols``, every one if None), by symbol."""
    held = {s: q for s, q in om.positions().items() if q != 0}
    if symbols is not None:
        wanted = set(symbols)
        held = {s: q for s, q in held.items() if s in wanted}
    return dict(sorted(held.items()))


async def flatten(om: OrderManager, symbols: Iterable[str] | None = None) -> list[FlattenResult]:
    """Close the journal's positions in ``symbols`` (every position if None), one symbol
    after another (module docstring). ``om`` must be started (``start()``: what a crash
    left unresolved is settled before a close is sized)."""
    return [await _flatten_one(om, s, q) for s, q in flatten_plan(om, symbols).items()]


async def _flatten_one(om: OrderManager, symbol: str, held: Decimal) -> FlattenResult:
    result = FlattenResult(symbol, held)
    for order in [o for o in om.open_orders() if o.symbol == symbol]:
        done = await _cancelled(om, order)
        if not is_final(done.state):
            result.problem = (
                f"{done.client_order_id} ({done.intent.side} {done.intent.order_type}) is "
                f"{done.state.value} after its cancel: it may still execute, so no close was "
                f"sent for {symbol} (the position stays {om.positions().get(symbol, 0)})"
            )
            log.error("flatten %s: %s", symbol, result.problem)
            return result
        result.cancelled.append(done)
    pos = om.positions().get(symbol, Decimal(0))  # after what the cancelled orders executed
    if pos == 0:
        return result  # a stop executed before its cancel: nothing to close
    side = "sell" if pos > 0 else "buy"
    intent = OrderIntent(symbol=symbol, side=side, quantity=abs(pos), order_type="market")
    try:
        result.close = await om.submit(intent, protective=True)
    except OrderError as exc:
        result.problem = f"the close of {pos} {symbol} was refused: {exc}"
    else:
        if result.close.state is not OrderState.FILLED:
            result.problem = (
                f"the close {result.close.client_order_id} of {pos} {symbol} is "
                f"{result.close.state.value}, not filled"
            )
    if result.problem is not None:
        stops = [o.client_order_id for o in result.cancelled if o.intent.order_type in _STOP_TYPES]
        if stops:
            result.problem += f"; its stops were cancelled ({', '.join(stops)}): UNPROTECTED"
        log.error("flatten %s: %s", symbol, result.problem)
    return result


async def _cancelled(om: OrderManager, order: Order) -> Order:
    """Cancel ``order`` and read its outcome until it is final (``RetryPolicy`` tries);
    the order as it then stands (not final: its outcome is not known)."""
    cid = order.client_order_id
    try:
        order = await om.cancel(cid)
    except OrderError as exc:  # not found by its client id, or not open any more
        log.warning("flatten: cancel of %s: %s", cid, exc)
        order = om.get(cid) or order
    for attempt in range(max(1, om.retry.max_attempts)):
        if is_final(order.state):
            break
        await asyncio.sleep(om.retry.delay(attempt))
        order = await om.refresh(cid)
    return order
