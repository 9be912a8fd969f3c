"""``OrderFills``: the broker's word taken into the journal: status, fills, adopted orders.

* ``_adopt``: an order as the broker reports it: its id, its state (ACCEPTED, REJECTED,
  CANCELLED) and its fills (an order not yet live in the journal that reports fills journals
  ACCEPTED in the same write as its first fetched fill: one fsync); a status the broker
  reports that we cannot read leaves the order for reconciliation. The broker's filled
  quantity is authoritative: an order takes a final state only once its booked fills equal
  it (missing executions fetched with retries and booked to it; otherwise it stays open and
  ``unsettled()`` lists it), and a final journal state the broker contradicts is reopened
  (``forced``): the broker's word wins. An execution of a known client id is never an orphan.
* Fills are journaled once per execution key (a correction replaces, never adds), with the
  order's filled quantity and average price, the trade and the position change
  (``PositionBook``) in one entry; a fill beyond the order's quantity raises ``FillError``.
* The startup reconciler's tools: ``adopt_external`` (a broker order the journal lacks),
  ``record_synthetic`` (an order the broker's books imply), ``apply_fills``,
  ``known_execution``.

``OrderManager`` (:mod:`wal.orders.manager`) builds on this class: submit, retries, recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from wal.crashpoints import crash_point
from wal.db.orders import fill_cash
from wal.entry import utc_now
from wal.errors import WALWriteError
from wal.money import exact
from wal.orders.base import LIVE_STATES, OrderBase, utc, why
from wal.orders.broker import BrokerOrder, OrderFillsLookup
from wal.orders.errors import BrokerProtocolError, FillError
from wal.orders.journal import FillCall, foreign_fill
from wal.orders.models import Fill, Order, OrderEvent, OrderIntent
from wal.orders.positions import PRICE_QUANTUM, Position
from wal.orders.states import EventKind, OrderState, check_transition, is_final
from wal.orders.turns import KeyedWriters

__all__ = ["OrderFills"]

log = logging.getLogger("wal.orders")

_S = OrderState
_FILL_SLACK = timedelta(minutes=1)  # broker clocks differ: ask for fills a little earlier


@dataclass(eq=False)
class _Booking:
    """A fill checked against its order, waiting for its symbol's turn (``_fill_turns``)."""

    fill: Fill
    order: Order
    key: str
    old: dict[str, Any] | None  # the execution it corrects, if any
    delta: Decimal  # what it adds to the order's filled quantity
    filled: Decimal
    avg: Decimal
    state: OrderState
    kind: EventKind
    # the order's acknowledgement (ACCEPTED, RECOVERED), journaled in the same write just
    # before the fill: ``order`` is then the order as that event leaves it
    ack: OrderEvent | None = None
    done: asyncio.Future[None] = field(init=False)


class OrderFills(OrderBase):
    """Status, fills and adoption (module docstring); ``OrderManager`` builds on it."""

    # ------------------------------------------------------------------ status and fills

    async def refresh(self, client_order_id: str, *, _locked: bool = False) -> Order:
        """Ask the broker for the order's status and fills, journal what changed.

        Any journal order, final ones included: broker evidence wins over a final journal
        state (``_adopt``). A failed lookup changes nothing: the order as it stands."""
        ctx = contextlib.nullcontext() if _locked else self._lock(client_order_id)
        async with ctx:
            order = await self._load_order(client_order_id)
            if order is None:
                raise FillError(f"no order with client_order_id {client_order_id!r}")
            try:
                bo = await asyncio.wait_for(
                    self.broker.get_order_by_client_id(client_order_id), self.retry.call_timeout
                )
            except Exception as exc:  # unknown is not "not found": nothing is decided on it
                log.warning("refresh of %s failed: %s", client_order_id, why(exc))
                return order
            if bo is None:
                return order
            return await self._adopt(order, bo, EventKind.RECOVERED)

    async def _load_order(self, cid: str) -> Order | None:
        """The order (memory, else the journal: then kept in memory with its fills)."""
        order = self._orders.get(cid)
        if order is not None:
            return order
        found = await asyncio.to_thread(self.journal.order, cid)
        if found is None:
            return None
        rows = await asyncio.to_thread(self.journal.fills, client_order_id=cid)
        if cid in self._orders:  # loaded meanwhile (and maybe changed since): that one holds
            return self._orders[cid]
        self._orders[cid] = found
        self._fills[cid] = {str(r["execution_key"]): r for r in rows}
        return found

    def unsettled(self) -> dict[str, str]:
        """Orders the broker reports final whose booked fills differ from the broker's filled
        quantity: they stay open in the journal until the missing executions are booked
        (``poll_fills``, ``refresh``, ``start`` or the reconciler); client id -> why."""
        return dict(self._unsettled)

    async def _adopt(self, order: Order, bo: BrokerOrder, kind: EventKind) -> Order:
        """Take the broker's word for an order: its id, status and fills.

        The broker is authoritative: a final journal state it contradicts is corrected (a
        ``forced`` event reopens the order, its fills are booked, then the broker's state);
        an order reaches a final state only once its booked fills equal the broker's filled
        quantity (missing executions are fetched, with retries, and booked to this order)."""
        try:
            target = bo.state
        except BrokerProtocolError as exc:
            log.error("order %s: %s", order.client_order_id, exc)
            if order.state in (_S.PENDING, _S.SUBMITTING):  # a live order stays as it is
                order = await self._transition(
                    order,
                    EventKind.UNKNOWN,
                    _S.UNKNOWN,
                    reason=str(exc),
                    broker_order_id=bo.broker_order_id,
                )
            return order  # left for reconciliation: we cannot read what the broker says
        if not bo.matches(order.intent):
            log.critical(
                "broker order %s under client id %s does not match the intent",
                bo.broker_order_id,
                order.client_order_id,
            )
        if is_final(order.state):
            if target is order.state and bo.filled_quantity == order.filled_quantity:
                return order  # the broker agrees with the journal
            order = await self._reopen(order, bo)  # broker evidence wins over a final state
            if is_final(order.state):
                return order
        if target is _S.REJECTED and bo.filled_quantity == 0 == order.filled_quantity:
            return await self._transition(
                order,
                kind,
                _S.REJECTED,
                reason=bo.reject_reason,
                broker_order_id=bo.broker_order_id,
            )
        if bo.filled_quantity == order.filled_quantity:
            if order.state not in LIVE_STATES:
                order = await self._acknowledge(order, bo, kind)
            return await self._settle(order, bo)
        ack = None
        if order.state not in LIVE_STATES:
            # an order that filled at once: its acknowledgement is journaled with its first
            # fetched fill, ONE write (one fsync fewer before the caller has its answer)
            ack = OrderEvent(
                order.client_order_id,
                order.last_seq + 1,
                kind,
                _S.ACCEPTED,
                utc_now(),
                bo.broker_order_id or order.broker_order_id,
            )
            check_transition(order.state, _S.ACCEPTED)
        else:
            crash_point("order.after_ack_before_fill")  # acknowledged in the journal, no fills
        order = await self._book_missing(order, bo, self._fetch_fills([order]), ack)
        return await self._settle(order, bo)

    async def _acknowledge(self, order: Order, bo: BrokerOrder, kind: EventKind) -> Order:
        """Journal the broker's acknowledgement (ACCEPTED) alone: no fill came with it."""
        order = await self._transition(order, kind, _S.ACCEPTED, broker_order_id=bo.broker_order_id)
        crash_point("order.after_ack_before_fill")  # acknowledged in the journal, no fills
        return order

    async def _book_missing(
        self,
        order: Order,
        bo: BrokerOrder,
        first: Awaitable[list[Fill] | None],
        ack: OrderEvent | None = None,
    ) -> Order:
        """Fetch and book the executions of ``order`` until its booked fills equal the
        broker's filled quantity, ``RetryPolicy`` tries (a failed or lagging fetch is
        tried again); the order as it then stands. ``ack``: the order's acknowledgement,
        journaled with the first fill booked, or alone (``_acknowledge``) before anything
        else when the first fetch books none."""
        cid = order.client_order_id
        fetched = first
        for attempt in range(max(1, self.retry.max_attempts)):
            if attempt:
                await asyncio.sleep(self.retry.delay(attempt - 1))
                fetched = self._fetch_fills([order])
            fills = await fetched
            try:
                for f in fills or ():
                    if f.client_order_id == cid and await self._apply_fill(f, ack):
                        ack = None  # durable with that fill
            except Exception as exc:
                if ack is not None and not isinstance(exc, WALWriteError):
                    # the fill refused (not the log failed): the acknowledgement stands alone
                    await self._acknowledge(self._orders[cid], bo, ack.kind)
                raise
            if ack is not None:  # no fill took it (none fetched yet, or all known)
                await self._acknowledge(self._orders[cid], bo, ack.kind)
                ack = None
            order = self._orders[cid]
            if order.filled_quantity == bo.filled_quantity:
                break
        return order

    async def _settle(self, order: Order, bo: BrokerOrder) -> Order:
        """The broker's final state, once the booked fills equal its filled quantity; until
        then the order stays open in the journal and is listed by ``unsettled()``."""
        cid = order.client_order_id
        target = bo.state
        if target is None or not is_final(target):
            self._unsettled.pop(cid, None)
            self._broker_final.pop(cid, None)
            return order
        problem = None
        if order.filled_quantity != bo.filled_quantity:
            problem = (
                f"the broker reports it {bo.status} with {bo.filled_quantity} filled; "
                f"{order.filled_quantity} booked: the missing executions could not be fetched"
            )
        elif target is _S.FILLED and order.state is not _S.FILLED:
            problem = (
                f"the broker reports it filled with {bo.filled_quantity} of {order.intent.quantity}"
            )
        elif target is _S.REJECTED and order.filled_quantity > 0:
            problem = f"the broker reports it rejected with {bo.filled_quantity} filled"
        if problem is not None:
            if self._unsettled.get(cid) != problem:
                log.error("order %s stays %s: %s", cid, order.state.value, problem)
            self._unsettled[cid] = problem
            self._broker_final[cid] = bo
            return order
        self._unsettled.pop(cid, None)
        self._broker_final.pop(cid, None)
        if is_final(order.state):
            return order  # FILLED by its fills
        kind = EventKind.CANCELLED if target is _S.CANCELLED else EventKind.REJECTED
        return await self._transition(
            order,
            kind,
            target,
            reason=bo.reject_reason if target is _S.REJECTED else None,
            broker_order_id=bo.broker_order_id,
        )

    async def _reopen(self, order: Order, bo: BrokerOrder | None, why: str = "") -> Order:
        """A final journal order the broker contradicts: reopened (event ``forced``) so that
        its fills are booked and the broker's state follows. A FILLED order is not reopened
        (its fills are its quantity): logged CRITICAL and listed by ``unsettled()``."""
        cid = order.client_order_id
        seen = why or (
            f"the broker reports {bo.status} with {bo.filled_quantity} filled"
            if bo is not None
            else "the broker reports an execution"
        )
        if order.state is _S.FILLED:
            log.critical("order %s is filled in the journal but %s", cid, seen)
            self._unsettled[cid] = f"filled in the journal; {seen}"
            return order
        log.critical(
            "order %s is %s in the journal but %s: the broker's word wins",
            cid,
            order.state.value,
            seen,
        )
        state = _S.PARTIALLY_FILLED if order.filled_quantity > 0 else _S.ACCEPTED
        return await self._transition(
            order,
            EventKind.FORCED,
            state,
            reason=f"was {order.state.value}; {seen}",
            broker_order_id=bo.broker_order_id if bo is not None else None,
            check=False,
        )

    async def poll_fills(self) -> int:
        """Fetch the broker's fills for every open order; journal the new ones. How many.
        An order the broker reported final (``unsettled()``) gets that state once its fills
        are all booked."""
        open_ = list(self._orders.open.values())
        n = await self._sync_fills(open_) if open_ else 0
        n += await self._book_absent()
        for cid, bo in list(self._broker_final.items()):
            async with self._lock(cid):
                await self._settle(self._orders[cid], bo)
        return n

    async def _book_absent(self) -> int:
        """Executions of orders journaled SUBMIT_FAILED because the broker did not show them
        (``is_absent``, the last 24 h): booked to them (``on_fill`` reopens the order and
        looks it up): an execution whose client id the journal knows is never an orphan."""
        if not self._absent:
            return 0
        since = min(self._absent.values()) - _FILL_SLACK
        try:
            fills = await asyncio.wait_for(self.broker.get_fills(since), self.retry.call_timeout)
        except Exception as exc:
            log.warning("fetching fills failed (%s); they are fetched again later", why(exc))
            return 0
        n = 0
        for f in fills:
            if f.client_order_id not in self._absent:
                continue
            await self._load_order(f.client_order_id)  # with its fills: known ones are skipped
            if not self.known_execution(f):
                order = await self.on_fill(f)
                n += 1
                if order.state is not _S.SUBMIT_FAILED:
                    self._absent.pop(f.client_order_id, None)
        return n

    async def _fetch_fills(self, orders: list[Order]) -> list[Fill] | None:
        """The broker's fills since the oldest of ``orders`` (one order's own, when the
        broker can list them: ``OrderFillsLookup``); None if the fetch failed."""
        since = min(o.intent.created_at for o in orders) - _FILL_SLACK
        broker = self.broker
        if len(orders) == 1 and isinstance(broker, OrderFillsLookup):
            # not every fill of the last minute on every submit: the order's own
            fetch = broker.get_order_fills(orders[0].client_order_id, since)
        else:
            fetch = broker.get_fills(since)
        try:
            return await asyncio.wait_for(fetch, self.retry.call_timeout)
        except Exception as exc:
            log.warning("fetching fills failed (%s); they are fetched again later", why(exc))
            return None

    async def _sync_fills(
        self, orders: list[Order], *, fetched: Awaitable[list[Fill] | None] | None = None
    ) -> int:
        """Journal the new fills of ``orders`` (fetched now, or by ``fetched``); how many."""
        wanted = {o.client_order_id for o in orders}
        fills = await (fetched if fetched is not None else self._fetch_fills(orders))
        if fills is None:
            return 0
        n = 0
        for f in fills:
            if f.client_order_id not in wanted:
                continue
            # under the order's lock: a submit, cancel or refresh of it may be journaling
            # its events now (the fill's seq follows theirs, never repeats one)
            async with self._lock(f.client_order_id):
                if await self._apply_fill(f):
                    n += 1
        return n

    async def on_fill(self, fill: Fill) -> Order:
        """Journal one execution (once per execution key); the order after it. An execution
        of an order the journal holds final reopens it (the broker's word wins) and the
        order is looked up for the broker's state."""
        cid = fill.client_order_id
        async with self._lock(cid):
            was = await self._load_order(cid)
            await self._apply_fill(fill)
            order = self._orders[cid]
            if was is not None and is_final(was.state) and not is_final(order.state):
                order = await self.refresh(cid, _locked=True)
            return order

    @exact
    async def _apply_fill(self, fill: Fill, ack: OrderEvent | None = None) -> bool:
        """Journal the fill unless it is known; True if it was journaled. The caller holds
        the order's lock (``_lock``): the fill's seq follows the order's last one. ``ack``:
        the order's acknowledgement, journaled in the same write just before the fill."""
        cid = fill.client_order_id
        order = await self._load_order(cid)
        if order is None:
            raise FillError(
                f"fill {fill.execution_id}: no order with client_order_id {cid!r} in the journal"
            )
        if ack is not None:  # the fill follows the acknowledgement, in the same write
            order = replace(
                order,
                state=ack.state,
                last_seq=ack.seq,
                updated_at=ack.at,
                broker_order_id=ack.broker_order_id,
            )
        key = self.broker.rules.execution_key(fill.execution_id)
        known = self._fills.setdefault(cid, {})
        old = known.get(key)
        if old is not None and not self.broker.rules.supersedes(
            fill.execution_id, str(old["execution_id"])
        ):
            return False  # journaled already, or an earlier version of what is: adds nothing
        if fill.symbol != order.symbol or fill.side != order.intent.side:
            raise FillError(
                f"fill {fill.execution_id} is {fill.side} {fill.symbol}; order {cid} "
                f"is {order.intent.side} {order.symbol}"
            )
        if not (
            isinstance(fill.quantity, Decimal)
            and fill.quantity > 0
            and isinstance(fill.price, Decimal)
            and fill.price > 0
        ):
            raise FillError(
                f"fill {fill.execution_id}: quantity and price must be positive "
                f"Decimals, got {fill.quantity!r} at {fill.price!r}"
            )
        if old is None:  # a new execution key for this order: is it another order's?
            await self._check_owner(fill, key)
        old_qty = Decimal(str(old["quantity"])) if old is not None else Decimal(0)
        delta = fill.quantity - old_qty
        filled = order.filled_quantity + delta
        if filled > order.intent.quantity:
            raise FillError(
                f"fill {fill.execution_id} of {fill.quantity} would make order {cid} "
                f"filled {filled} > its quantity {order.intent.quantity}; not applied"
            )
        rows = [r for k, r in known.items() if k != key]
        notional = (
            sum((Decimal(str(r["quantity"])) * Decimal(str(r["price"])) for r in rows), Decimal(0))
            + fill.quantity * fill.price
        )
        avg = (notional / filled).quantize(PRICE_QUANTUM)
        if order.state is _S.FILLED and old is not None:
            # a correction of a filled order's execution (a bust, a lower quantity): the
            # totals and the position follow it, the order stays done as the broker has it
            state = _S.FILLED
        else:
            if is_final(order.state):  # an execution of an order the journal holds final
                order = await self._reopen(
                    order, None, f"the broker reports execution {fill.execution_id}"
                )
            state = _S.FILLED if filled == order.intent.quantity else _S.PARTIALLY_FILLED
        if state is not order.state or state is _S.PARTIALLY_FILLED:
            check_transition(order.state, state)
        kind = EventKind.FILL if old is None else EventKind.FILL_CORRECTED
        booking = _Booking(fill, order, key, old, delta, filled, avg, state, kind, ack)
        # in its symbol's turn: durable and booked in memory on return (or what it raised);
        # the caller holds the order's lock, so the order cannot move while its fill waits
        await self._fill_turns.submit(fill.symbol, booking)
        return True

    async def _check_owner(self, fill: Fill, key: str) -> None:
        """``FillError`` when the journal holds execution ``key`` for another order
        (``OrderJournal.fill_owner``: the log, and the database's fills table once the log
        may have dropped it), before anything is booked: the database would refuse the
        entry (a dead letter) while memory booked the fill. The journal's write checks the
        fills written meanwhile again (``_check_fill_keys``)."""
        journal = self.journal
        shared = self.broker.rules.correction_separator is not None
        if journal.fill_owner_needs_database(shared_keys=shared):
            owner = await asyncio.to_thread(
                journal.fill_owner, key, fill.execution_id, shared_keys=shared
            )
        else:  # the log's key index: no database read
            owner = journal.fill_owner(key, fill.execution_id, shared_keys=shared)
        if owner is not None and owner != fill.client_order_id:
            raise foreign_fill(
                {
                    "execution_id": fill.execution_id,
                    "execution_key": key,
                    "client_order_id": fill.client_order_id,
                },
                owner,
            )

    @cached_property
    def _fill_turns(self) -> KeyedWriters[_Booking]:
        """Each symbol's fills, written one write after another, those that wait gathered
        into the next write (``_book_group``): a fill's entry holds the position itself, so
        it must be computed from the one the last write made durable."""
        return KeyedWriters(self._book_group)

    @exact
    async def _book_group(self, sym: str, group: list[_Booking]) -> None:
        """The symbol's turn (``KeyedWriters``): compute the group's entries in order from
        the durable position, write them as one unit (all or none), then book them in
        memory; each booking's ``done`` gets the outcome. A failed write raises to the
        writer, which gives the error to every booking of the group."""
        pos = self._book.position(sym)
        entries: list[tuple[_Booking, dict[str, Any], Position | None]] = []
        calls: list[FillCall] = []
        for b in group:
            fill, order = b.fill, b.order
            signed = b.delta if fill.side == "buy" else -b.delta
            ops, pnl, new_pos = self._book.change_from(pos, sym, signed, fill.price)
            old = b.old
            replaces = None
            if old is not None:
                old_q, old_p = Decimal(str(old["quantity"])), Decimal(str(old["price"]))
                replaces = fill_cash(fill.side, old_q, old_p, Decimal(str(old.get("fee") or 0)))
            computed: dict[str, Any] = {
                "execution_key": b.key,
                "seq": order.last_seq + 1,
                "kind": b.kind.value,
                "state": b.state.value,
                "filled_quantity": b.filled,
                "avg_fill_price": b.avg,
                # made here: a replay reuses it
                "trade_id": uuid.uuid4().hex if old is None else None,
                "pnl": pnl,
                "position_ops": ops,
                "account": order.intent.account,
                "fee": fill.fee,
                # the cash it moves on the order's account, in the same entry (wal.db.orders)
                "cash": fill_cash(fill.side, fill.quantity, fill.price, fill.fee),
                "replaces_cash": replaces,
            }
            try:
                call = self.journal.fill_call(fill, computed)  # refused alone, before the group
                ack = None if b.ack is None else self.journal.event_call(b.ack)
            except Exception as exc:
                b.done.set_exception(exc)
                continue
            entries.append((b, computed, new_pos))
            if ack is not None:
                calls.append(ack)  # the acknowledgement first: its seq precedes the fill's
            calls.append(call)
            pos = new_pos
        if not entries:
            return
        # fsynced: each fill, its event, order, trade, position change and cash; one write
        await self.journal.arecord_fills(calls)
        crash_point("order.after_fill_fsync")
        for b, c, new_pos in entries:
            self._booked(b, c, new_pos)
            if not b.done.done():
                b.done.set_result(None)

    def _booked(self, b: _Booking, c: dict[str, Any], new_pos: Position | None) -> None:
        """A durable fill in memory: the position, P&L, the order, its known executions."""
        fill, cid = b.fill, b.fill.client_order_id
        if b.ack is not None:
            self._publish(b.ack)  # durable with the fill: published first, in seq order
        self._book.set(fill.symbol, new_pos)
        if c["pnl"] is not None:
            self._book.add_pnl(fill.executed_at, c["pnl"])
        self._fill_epoch += 1  # cash moved from the open buys into the balance
        self._last_price[fill.symbol] = fill.price
        self._fills.setdefault(cid, {})[b.key] = {
            "execution_key": b.key,
            "execution_id": fill.execution_id,
            "quantity": fill.quantity,
            "price": fill.price,
            "executed_at": fill.executed_at,
            "pnl": c["pnl"],
            "trade_id": c["trade_id"],
            "fee": fill.fee,
        }
        order = replace(
            b.order,
            state=b.state,
            filled_quantity=b.filled,
            avg_fill_price=b.avg,
            last_seq=c["seq"],
            updated_at=fill.executed_at,
            broker_order_id=b.order.broker_order_id or fill.broker_order_id,
        )
        self._orders[cid] = order
        self._publish(
            OrderEvent(
                cid,
                c["seq"],
                b.kind,
                b.state,
                fill.executed_at,
                order.broker_order_id,
                fill.execution_id,
            )
        )

    # ------------------------------------------------------------------ the reconciler's tools

    async def adopt_external(self, bo: BrokerOrder, *, reason: str) -> Order:
        """Journal a broker order the journal does not know (a stop protecting a position
        we hold) under its own client id, then take the broker's word for it (state, fills).
        The startup reconciler's tool."""
        self._require_loaded()
        intent = OrderIntent(
            symbol=bo.symbol,
            side=bo.side,
            quantity=bo.quantity,
            order_type=bo.order_type,
            limit_price=bo.limit_price,
            stop_price=bo.stop_price,
            client_order_id=bo.client_order_id,
            created_at=utc(bo.created_at),  # the broker's time; a naive one taken as UTC
        )
        cid = intent.client_order_id
        async with self._lock(cid):
            existing = self._orders.get(cid) or await asyncio.to_thread(self.journal.order, cid)
            if existing is None:
                async with self._state_lock:
                    await self.journal.arecord_intent(intent)
                    existing = Order(intent, _S.PENDING, last_seq=1, updated_at=intent.created_at)
                    self._orders[cid] = existing
                    self._fills[cid] = {}
                    self._publish(
                        OrderEvent(cid, 1, EventKind.CREATED, _S.PENDING, existing.updated_at)
                    )
            existing = await self._load_order(cid) or existing  # with its fills
            log.info("adopted broker order %s (%s): %s", bo.broker_order_id, cid, reason)
            return await self._adopt(existing, bo, EventKind.RECOVERED)

    async def record_synthetic(self, intent: OrderIntent, fill: Fill, *, reason: str) -> Order:
        """Journal an order the broker's books imply but nobody sent (an orphan position):
        the intent, a ``forced`` ACCEPTED event with ``reason``, and ``fill`` (the trade and
        the position change). Never sent to the broker. If the order exists (a crash came
        between its entries), only what is missing is journaled."""
        self._require_loaded()
        cid = intent.client_order_id
        async with self._lock(cid):
            order = self._orders.get(cid) or await asyncio.to_thread(self.journal.order, cid)
            if order is None:
                async with self._state_lock:
                    await self.journal.arecord_intent(intent)
                    order = Order(intent, _S.PENDING, last_seq=1, updated_at=intent.created_at)
                    self._orders[cid] = order
                    self._fills[cid] = {}
            else:
                order = await self._load_order(cid) or order  # with its fills
            if order.state is _S.PENDING:
                order = await self._transition(
                    order, EventKind.FORCED, _S.ACCEPTED, reason=reason, check=False
                )
            if order.filled_quantity < order.intent.quantity:
                await self._apply_fill(fill)
            return self._orders[cid]

    async def apply_fills(self, fills: list[Fill]) -> int:
        """Journal the fills the journal lacks (each once per execution key) for orders it
        knows; how many were journaled. Fills of unknown orders are skipped."""
        n = 0
        for f in fills:
            async with self._lock(f.client_order_id):
                order = self._orders.get(f.client_order_id)
                if order is None:
                    order = await asyncio.to_thread(self.journal.order, f.client_order_id)
                if order is None:
                    continue
                if await self._apply_fill(f):
                    n += 1
        return n

    def known_execution(self, fill: Fill) -> bool:
        """True if the journal holds this execution, or a later correction of it."""
        known = self._fills.get(fill.client_order_id, {})
        rules = self.broker.rules
        old = known.get(rules.execution_key(fill.execution_id))
        return old is not None and not rules.supersedes(fill.execution_id, str(old["execution_id"]))
