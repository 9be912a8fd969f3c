"""``OrderManager``: every order journaled before the broker hears of it; never sent twice.

The submit path, each step durable (fsynced in the log) before the next one starts::

    validate + risk  ->  journal the intent (PENDING)  ->  journal SUBMITTED (SUBMITTING)
        ->  broker.submit_order  ->  journal ACCEPTED / REJECTED / UNKNOWN  ->  fills

* A ``WALWriteError`` (the log failed) raises to the caller before the broker is called.
* A timeout, a transport error or a 5xx is not a failure: the order becomes UNKNOWN and the
  retries (``RetryPolicy``: backoff 1, 2, 4 s, 3 attempts) **look it up by client id first**:
  found -> adopted (event RECOVERED); not found -> resent with the same client id only if the
  broker deduplicates client ids globally (a duplicate then proves it exists), otherwise left
  UNKNOWN for reconciliation. A duplicate-client-id answer means "it exists: look it up".
* A clear reject ends the order after one call.
* Fills are journaled once per execution key (a correction replaces, never adds), with the
  order's filled quantity and average price, the trade and the position change in one entry;
  a fill beyond the order's quantity raises ``FillError`` and is not applied.
* ``start()`` resolves what a crash left: PENDING (never sent) and SUBMITTING/UNKNOWN orders
  are looked up by client id; only "not found" after ``max_attempts`` lookups *and* the
  broker's visibility window makes them SUBMIT_FAILED. Accepted orders get their missing fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from wal import DurableDatabaseManager
from wal.crashpoints import crash_point
from wal.orders.broker import Broker, BrokerOrder, DedupScope
from wal.orders.errors import (
    BrokerError,
    BrokerProtocolError,
    BrokerRejectedError,
    DuplicateClientOrderId,
    FillError,
    OrderRejected,
    RejectReason,
    TradingHalted,
)
from wal.orders.journal import OrderJournal
from wal.orders.models import Fill, Order, OrderEvent, OrderIntent
from wal.orders.states import EventKind, OrderState, check_transition, is_final
from wal.orders.validation import RiskLimits, RiskView, check_risk, validate_intent

__all__ = ["OrderManager", "RecoveryResult", "RetryPolicy"]

log = logging.getLogger("wal.orders")

_Q = Decimal("1E-10")
_S = OrderState
_LIVE = (_S.ACCEPTED, _S.PARTIALLY_FILLED)
_FILL_SLACK = timedelta(minutes=1)  # broker clocks differ: ask for fills a little earlier
_POSITION_PREFIX = "ord-"  # positions this manager opens; it is their only writer


@dataclass(frozen=True)
class RetryPolicy:
    """How an UNKNOWN order is chased. Delays ``base_delay * 2**n``: 1, 2, 4 s by default;
    tests use ``base_delay=0``."""

    max_attempts: int = 3  # ORDER_RETRY_MAX_ATTEMPTS: lookups (and resends) after a failure
    base_delay: float = 1.0  # ORDER_RETRY_BASE_DELAY, seconds
    max_delay: float = 30.0
    call_timeout: float = 10.0  # ORDER_CALL_TIMEOUT: one broker call; then it is UNKNOWN

    def __post_init__(self) -> None:
        if self.max_attempts < 0 or self.base_delay < 0 or self.call_timeout <= 0:
            raise ValueError(f"bad retry policy {self}")

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0-based)."""
        return float(min(self.max_delay, self.base_delay * (2**attempt)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        e = os.environ if env is None else env
        return cls(
            max_attempts=int(e.get("ORDER_RETRY_MAX_ATTEMPTS", "3")),
            base_delay=float(e.get("ORDER_RETRY_BASE_DELAY", "1.0")),
            call_timeout=float(e.get("ORDER_CALL_TIMEOUT", "10.0")),
        )


@dataclass(frozen=True)
class RecoveryResult:
    """What ``start()`` did with the orders a previous run left unfinished."""

    adopted: int = 0  # found at the broker by client id
    submit_failed: int = 0  # not at the broker after the lookups and the visibility window
    unknown: int = 0  # still UNKNOWN (lookups failed, or unreadable status): reconcile
    fills_journaled: int = 0


@dataclass
class _Pos:
    position_id: str
    quantity: Decimal  # signed
    entry_price: Decimal


def _now() -> datetime:
    return datetime.now(UTC)


class OrderManager:
    """Orders on the log (module docstring). ``db`` is a ``DurableDatabaseManager``."""

    def __init__(
        self,
        db: DurableDatabaseManager,
        broker: Broker,
        *,
        risk: RiskLimits | None = None,
        retry: RetryPolicy | None = None,
        price_source: Callable[[str], Decimal | None] | None = None,
    ) -> None:
        self.db = db
        self.broker = broker
        self.risk = risk if risk is not None else RiskLimits()
        self.retry = retry if retry is not None else RetryPolicy.from_env()
        self.price_source = price_source
        self.journal = OrderJournal(db)
        self._orders: dict[str, Order] = {}
        self._fills: dict[str, dict[str, dict[str, Any]]] = {}  # cid -> exec key -> fill row
        self._positions: dict[str, _Pos] = {}
        self._daily_pnl: dict[str, Decimal] = {}  # UTC date -> realized P&L
        self._locks: dict[str, asyncio.Lock] = {}
        self._state_lock = asyncio.Lock()  # validation + journal writes + memory updates
        self._subscribers: list[asyncio.Queue[OrderEvent]] = []
        self._loaded = False
        self._halted: str | None = None  # why submit is refused (None: trading)

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        """Load the journal (open orders, their fills, positions, today's P&L); idempotent.
        ``start()`` does it; the startup reconciler calls it instead of ``start()``."""
        if not self._loaded:
            await asyncio.to_thread(self._load)

    async def start(self) -> RecoveryResult:
        """Load the journal and resolve what a crash left unfinished (module docstring)."""
        await self.load()
        adopted = failed = unknown = fills = 0
        for order in [o for o in self._orders.values() if not is_final(o.state)]:
            async with self._lock(order.client_order_id):
                before_fills = len(self._fills.get(order.client_order_id, {}))
                o = await self._recover(self._orders[order.client_order_id])
                fills += len(self._fills.get(order.client_order_id, {})) - before_fills
                if o.state is _S.SUBMIT_FAILED:
                    failed += 1
                elif o.state is _S.UNKNOWN:
                    unknown += 1
                elif order.state not in _LIVE and o.state is not order.state:
                    adopted += 1
        return RecoveryResult(adopted, failed, unknown, fills)

    async def close(self) -> None:
        """Session end: journal an anchor of the audit chain at its head (a truncated
        ``order_events`` table is then detected by ``atb orders verify``)."""
        await self.journal.aanchor("session_end")

    # ------------------------------------------------------------------ halting

    @property
    def halted(self) -> str | None:
        """Why ``submit`` is refused (``TradingHalted``), or None while trading."""
        return self._halted

    def halt(self, reason: str) -> None:
        """Refuse ``submit`` (``TradingHalted``) until ``resume()``; cancels still work."""
        self._halted = reason
        log.warning("trading halted: %s", reason)

    def resume(self) -> None:
        """Allow ``submit`` again (the startup reconciler calls it when it succeeded)."""
        if self._halted is not None:
            log.info("trading resumed (was halted: %s)", self._halted)
        self._halted = None

    def _load(self) -> None:
        if self._loaded:
            return
        for o in self.journal.orders(open_only=True):
            self._orders[o.client_order_id] = o
            self._fills[o.client_order_id] = {
                str(r["execution_key"]): r
                for r in self.journal.fills(client_order_id=o.client_order_id)
            }
        for row in self.db.get_open_positions():
            pid = str(row["position_id"])
            if pid.startswith(_POSITION_PREFIX):
                q = Decimal(str(row["quantity"]))
                self._positions[str(row["symbol"])] = _Pos(
                    pid, q if row["side"] == "long" else -q, Decimal(str(row["entry_price"]))
                )
        today = _now().replace(hour=0, minute=0, second=0, microsecond=0)
        for r in self.journal.fills(since=today):
            if r.get("pnl") is not None:
                self._add_pnl(r["executed_at"], Decimal(str(r["pnl"])))
        self._loaded = True

    # ------------------------------------------------------------------ reading

    def get(self, client_order_id: str) -> Order | None:
        """The order, from memory or the journal (pending entries included)."""
        o = self._orders.get(client_order_id)
        return o if o is not None else self.journal.order(client_order_id)

    def open_orders(self) -> list[Order]:
        return [o for o in self._orders.values() if not is_final(o.state)]

    def positions(self) -> dict[str, Decimal]:
        """The journal's net position per symbol (signed), from the fills it holds."""
        return {s: p.quantity for s, p in self._positions.items() if p.quantity != 0}

    def entry_price(self, symbol: str) -> Decimal | None:
        """The journal's entry price of its open position in ``symbol`` (None if flat)."""
        p = self._positions.get(symbol)
        return None if p is None or p.quantity == 0 else p.entry_price

    async def events(self) -> AsyncIterator[OrderEvent]:
        """Every state change journaled from now on, in order."""
        q: asyncio.Queue[OrderEvent] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.remove(q)

    # ------------------------------------------------------------------ submit

    async def submit(self, intent: OrderIntent, *, protective: bool = False) -> Order:
        """Validate, journal, send (see the module docstring); the order as it stands.

        Raises ``TradingHalted`` while trading is halted (the startup reconciler has not
        succeeded), ``OrderRejected`` (nothing journaled or sent) and ``WALWriteError`` (the
        log failed: not sent if the failure came before the broker call).

        ``protective=True`` (the reconciler's emergency stops and market closes): an order
        that only reduces the journal's position in its symbol (opposite side, at most its
        size); it skips the risk limits and is allowed while halted.
        """
        if not protective and self._halted is not None:
            raise TradingHalted(f"trading is halted: {self._halted}; nothing was sent")
        self._require_loaded()
        if protective:
            self._check_protective(intent)
        cid = intent.client_order_id
        async with self._lock(cid):
            existing = self._orders.get(cid) or await asyncio.to_thread(self.journal.order, cid)
            if existing is not None:
                return await self._resubmitted(existing, intent)
            async with self._state_lock:
                validate_intent(intent, self.broker.rules)
                if not protective:
                    await self._check_risk(intent)
                await self.journal.arecord_intent(intent)  # fsynced: the order exists now
                order = Order(intent, _S.PENDING, last_seq=1, updated_at=intent.created_at)
                self._orders[cid] = order
                self._fills[cid] = {}
                self._publish(OrderEvent(cid, 1, EventKind.CREATED, _S.PENDING, order.updated_at))
            crash_point("order.after_intent_fsync")  # journaled, nothing sent
            return await self._send(order)

    async def _resubmitted(self, existing: Order, intent: OrderIntent) -> Order:
        """The same intent again: never a second order; chase it if its outcome is unknown."""
        if not existing.intent.same_order(intent):
            raise OrderRejected(
                RejectReason.CONFLICTING_INTENT,
                f"client_order_id {intent.client_order_id!r} is already the journal's order "
                f"{existing.intent.side} {existing.intent.quantity} {existing.intent.symbol}",
                field="client_order_id",
            )
        self._orders.setdefault(existing.client_order_id, existing)
        if existing.state in (_S.SUBMITTING, _S.UNKNOWN):
            return await self._chase(existing)
        return existing

    async def _send(self, order: Order) -> Order:
        """Journal SUBMITTING, call the broker once, journal what it answered."""
        order = await self._transition(order, EventKind.SUBMITTED, _S.SUBMITTING)
        crash_point("order.after_submitting_fsync")  # durable: the request may go out next
        try:
            bo = await asyncio.wait_for(
                self.broker.submit_order(order.intent), self.retry.call_timeout
            )
        except BrokerRejectedError as exc:
            return await self._transition(order, EventKind.REJECTED, _S.REJECTED, reason=exc.reason)
        except DuplicateClientOrderId:
            return await self._chase(order)  # it exists: look it up and adopt it
        except Exception as exc:  # timeout, transport, 5xx, unreadable: outcome unknown
            order = await self._transition(order, EventKind.UNKNOWN, _S.UNKNOWN, reason=_why(exc))
            return await self._chase(order)
        crash_point("order.after_broker_accept")  # accepted at the broker, not journaled
        return await self._adopt(order, bo, EventKind.ACCEPTED)

    async def _chase(self, order: Order) -> Order:
        """Retries of an order whose outcome is unknown: look up first (module docstring)."""
        for attempt in range(self.retry.max_attempts):
            await asyncio.sleep(self.retry.delay(attempt))
            try:
                bo = await asyncio.wait_for(
                    self.broker.get_order_by_client_id(order.client_order_id),
                    self.retry.call_timeout,
                )
            except Exception as exc:
                log.warning("lookup of %s failed: %s", order.client_order_id, _why(exc))
                continue
            if bo is not None:
                return await self._adopt(order, bo, EventKind.RECOVERED)
            if self.broker.rules.dedup_scope is not DedupScope.GLOBAL:
                continue  # a resend could double a filled order: only look again
            order = await self._transition(order, EventKind.SUBMITTED, _S.SUBMITTING)
            try:  # the broker refuses a known client id forever: the resend is safe
                bo = await asyncio.wait_for(
                    self.broker.submit_order(order.intent), self.retry.call_timeout
                )
            except BrokerRejectedError as exc:
                return await self._transition(
                    order, EventKind.REJECTED, _S.REJECTED, reason=exc.reason
                )
            except DuplicateClientOrderId:
                order = await self._transition(
                    order, EventKind.UNKNOWN, _S.UNKNOWN, reason="duplicate client id: look it up"
                )
                continue
            except Exception as exc:
                order = await self._transition(
                    order, EventKind.UNKNOWN, _S.UNKNOWN, reason=_why(exc)
                )
                continue
            return await self._adopt(order, bo, EventKind.ACCEPTED)
        if order.state is _S.SUBMITTING:  # a resend's outcome is not known either
            order = await self._transition(
                order, EventKind.UNKNOWN, _S.UNKNOWN, reason="retries exhausted"
            )
        return order

    async def _adopt(self, order: Order, bo: BrokerOrder, kind: EventKind) -> Order:
        """Take the broker's word for an order: its id, status and fills."""
        try:
            target = bo.state
        except BrokerProtocolError as exc:
            log.error("order %s: %s", order.client_order_id, exc)
            if order.state is not _S.UNKNOWN:
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
        if target is _S.REJECTED:
            return await self._transition(
                order,
                kind,
                _S.REJECTED,
                reason=bo.reject_reason,
                broker_order_id=bo.broker_order_id,
            )
        if order.state not in _LIVE:
            order = await self._transition(
                order, kind, _S.ACCEPTED, broker_order_id=bo.broker_order_id
            )
        crash_point("order.after_ack_before_fill")  # acknowledged in the journal, no fills yet
        if bo.filled_quantity > order.filled_quantity:
            await self._sync_fills([order])
            order = self._orders[order.client_order_id]
        if target is _S.CANCELLED and not is_final(order.state):
            order = await self._transition(
                order, EventKind.CANCELLED, _S.CANCELLED, broker_order_id=bo.broker_order_id
            )
        return order

    async def _recover(self, order: Order) -> Order:
        """Resolve one order a previous run left unfinished."""
        if order.state in _LIVE:
            return await self.refresh(order.client_order_id, _locked=True)
        rules = self.broker.rules
        needed = max(1, self.retry.max_attempts)
        misses = 0
        wait = 0.0
        for attempt in range(2 * needed + 1):
            if attempt:
                await asyncio.sleep(wait)
            wait = self.retry.delay(attempt)
            try:
                bo = await asyncio.wait_for(
                    self.broker.get_order_by_client_id(order.client_order_id),
                    self.retry.call_timeout,
                )
            except Exception as exc:
                log.warning("recovery lookup of %s failed: %s", order.client_order_id, _why(exc))
                bo = None
                if order.state is not _S.PENDING:
                    continue
            if bo is not None:
                return await self._adopt(order, bo, EventKind.RECOVERED)
            if order.state is _S.PENDING:  # SUBMITTING is journaled before any send
                return await self._transition(
                    order,
                    EventKind.SUBMIT_FAILED,
                    _S.SUBMIT_FAILED,
                    reason="never sent: stopped before the broker call",
                )
            misses += 1
            window_left = (
                order.updated_at + timedelta(seconds=rules.visibility_window_seconds) - _now()
            ).total_seconds()
            if misses >= needed and window_left <= 0:
                return await self._transition(
                    order,
                    EventKind.SUBMIT_FAILED,
                    _S.SUBMIT_FAILED,
                    reason=f"not at the broker after {misses} lookups and its "
                    f"{rules.visibility_window_seconds:g} s visibility window",
                )
            if misses >= needed:
                wait = max(wait, window_left)  # the broker may not show it yet: wait it out
        if order.state is not _S.UNKNOWN:
            order = await self._transition(
                order, EventKind.UNKNOWN, _S.UNKNOWN, reason="lookups failed during recovery"
            )
        return order

    # ------------------------------------------------------------------ status and fills

    async def refresh(self, client_order_id: str, *, _locked: bool = False) -> Order:
        """Ask the broker for the order's status and fills, journal what changed."""
        ctx = contextlib.nullcontext() if _locked else self._lock(client_order_id)
        async with ctx:
            order = self._orders.get(client_order_id)
            if order is None:
                raise FillError(f"no order with client_order_id {client_order_id!r} is open")
            try:
                bo = await self.broker.get_order_by_client_id(client_order_id)
            except BrokerError as exc:
                log.warning("refresh of %s failed: %s", client_order_id, exc)
                return order
            if bo is None:
                return order
            return await self._adopt(order, bo, EventKind.RECOVERED)

    async def poll_fills(self) -> int:
        """Fetch the broker's fills for every open order; journal the new ones. How many."""
        open_ = [o for o in self._orders.values() if not is_final(o.state)]
        return await self._sync_fills(open_) if open_ else 0

    async def _sync_fills(self, orders: list[Order]) -> int:
        wanted = {o.client_order_id for o in orders}
        since = min(o.intent.created_at for o in orders) - _FILL_SLACK
        try:
            fills = await asyncio.wait_for(self.broker.get_fills(since), self.retry.call_timeout)
        except Exception as exc:
            log.warning("fetching fills failed (%s); they are fetched again later", _why(exc))
            return 0
        n = 0
        for f in fills:
            if f.client_order_id in wanted and await self._apply_fill(f):
                n += 1
        return n

    async def on_fill(self, fill: Fill) -> Order:
        """Journal one execution (once per execution key); the order after it."""
        async with self._lock(fill.client_order_id):
            await self._apply_fill(fill)
            order = self.get(fill.client_order_id)
            assert order is not None
            return order

    async def _apply_fill(self, fill: Fill) -> bool:
        """Journal the fill unless it is known; True if it was journaled."""
        cid = fill.client_order_id
        order = self._orders.get(cid)
        if order is None:
            found = await asyncio.to_thread(self.journal.order, cid)
            if found is None:
                raise FillError(
                    f"fill {fill.execution_id}: no order with client_order_id "
                    f"{cid!r} in the journal"
                )
            order = found
            self._fills[cid] = {
                str(r["execution_key"]): r
                for r in await asyncio.to_thread(self.journal.fills, client_order_id=cid)
            }
        key = self.broker.rules.execution_key(fill.execution_id)
        known = self._fills.setdefault(cid, {})
        old = known.get(key)
        if old is not None and old["execution_id"] == fill.execution_id:
            return False  # already journaled: replaying a fill adds nothing
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
        avg = (notional / filled).quantize(_Q)
        state = _S.FILLED if filled == order.intent.quantity else _S.PARTIALLY_FILLED
        if state is not order.state or state is _S.PARTIALLY_FILLED:
            check_transition(order.state, state)
        kind = EventKind.FILL if old is None else EventKind.FILL_CORRECTED
        async with self._state_lock:
            signed = delta if fill.side == "buy" else -delta
            ops, pnl, new_pos = self._position_change(fill.symbol, signed, fill.price, cid)
            seq = order.last_seq + 1
            trade_id = uuid.uuid4().hex if old is None else None  # made here: a replay reuses it
            await self.journal.arecord_fill(
                fill,
                execution_key=key,
                seq=seq,
                kind=kind.value,
                state=state.value,
                filled_quantity=filled,
                avg_fill_price=avg,
                trade_id=trade_id,
                pnl=pnl,
                position_ops=ops,
            )  # fsynced: fill, event, order, trade and position change as one entry
            crash_point("order.after_fill_fsync")
            self._set_position(fill.symbol, new_pos)
            if pnl is not None:
                self._add_pnl(fill.executed_at, pnl)
            known[key] = {
                "execution_key": key,
                "execution_id": fill.execution_id,
                "quantity": fill.quantity,
                "price": fill.price,
                "executed_at": fill.executed_at,
                "pnl": pnl,
                "trade_id": trade_id,
            }
            order = replace(
                order,
                state=state,
                filled_quantity=filled,
                avg_fill_price=avg,
                last_seq=seq,
                updated_at=fill.executed_at,
                broker_order_id=order.broker_order_id or fill.broker_order_id,
            )
            self._orders[cid] = order
            self._publish(
                OrderEvent(
                    cid,
                    seq,
                    kind,
                    state,
                    fill.executed_at,
                    order.broker_order_id,
                    fill.execution_id,
                )
            )
        return True

    def _position_change(
        self, symbol: str, signed: Decimal, price: Decimal, cid: str
    ) -> tuple[list[dict[str, Any]], Decimal | None, _Pos | None]:
        """The position operations a fill makes, its realized P&L, the position after it."""
        pos = self._positions.get(symbol)
        q0 = pos.quantity if pos is not None else Decimal(0)
        q1 = q0 + signed
        ops: list[dict[str, Any]] = []
        pnl: Decimal | None = None
        if signed == 0:
            return ops, None, pos

        def opened(q: Decimal) -> tuple[dict[str, Any], _Pos]:
            pid = f"{_POSITION_PREFIX}{uuid.uuid4().hex}"  # made here: a replay reuses it
            return (
                {
                    "op": "log_position",
                    "kwargs": {
                        "position_id": pid,
                        "symbol": symbol,
                        "side": "long" if q > 0 else "short",
                        "quantity": abs(q),
                        "entry_price": price,
                    },
                },
                _Pos(pid, q, price),
            )

        if pos is None or q0 == 0:
            op, new = opened(q1)
            return [op], None, new
        if (q0 > 0) == (signed > 0):  # adding: the entry price becomes the average
            entry = ((pos.entry_price * abs(q0) + price * abs(signed)) / abs(q1)).quantize(_Q)
            ops.append(
                {
                    "op": "update_position",
                    "kwargs": {
                        "position_id": pos.position_id,
                        "quantity": abs(q1),
                        "entry_price": entry,
                    },
                }
            )
            return ops, None, _Pos(pos.position_id, q1, entry)
        closed = min(abs(signed), abs(q0))
        pnl = ((price - pos.entry_price) * closed * (1 if q0 > 0 else -1)).quantize(_Q)
        if q1 == 0 or (q1 > 0) != (q0 > 0):
            ops.append(
                {
                    "op": "close_position",
                    "kwargs": {"position_id": pos.position_id, "exit_price": price, "pnl": pnl},
                }
            )
            if q1 == 0:
                return ops, pnl, None
            op, new = opened(q1)
            ops.append(op)
            return ops, pnl, new
        ops.append(
            {
                "op": "update_position",
                "kwargs": {"position_id": pos.position_id, "quantity": abs(q1)},
            }
        )
        return ops, pnl, _Pos(pos.position_id, q1, pos.entry_price)

    def _set_position(self, symbol: str, pos: _Pos | None) -> None:
        if pos is None:
            self._positions.pop(symbol, None)
        else:
            self._positions[symbol] = pos

    def _add_pnl(self, at: datetime, pnl: Decimal) -> None:
        day = at.astimezone(UTC).date().isoformat()
        self._daily_pnl[day] = self._daily_pnl.get(day, Decimal(0)) + pnl

    def _check_protective(self, intent: OrderIntent) -> None:
        pos = self.positions().get(intent.symbol, Decimal(0))
        reduces = (pos > 0 and intent.side == "sell") or (pos < 0 and intent.side == "buy")
        if not reduces or not isinstance(intent.quantity, Decimal) or intent.quantity > abs(pos):
            raise OrderRejected(
                RejectReason.MAX_POSITION,
                f"a protective {intent.side} of {intent.quantity} {intent.symbol} does not only "
                f"reduce the journal's position of {pos}",
                field="quantity",
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
            created_at=bo.created_at,
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
            self._orders.setdefault(cid, existing)
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
                self._orders.setdefault(cid, order)
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
        """True if the journal holds this execution (by execution key and id)."""
        known = self._fills.get(fill.client_order_id, {})
        old = known.get(self.broker.rules.execution_key(fill.execution_id))
        return old is not None and old["execution_id"] == fill.execution_id

    # ------------------------------------------------------------------ cancel, force

    async def cancel(self, client_order_id: str) -> Order:
        """Cancel: a never-sent order locally; a live one at the broker (then its status)."""
        async with self._lock(client_order_id):
            order = self._orders.get(client_order_id)
            if order is None or is_final(order.state):
                raise OrderRejected(
                    RejectReason.CONFLICTING_INTENT,
                    f"order {client_order_id!r} is not open",
                    field="client_order_id",
                )
            if order.state is _S.PENDING:
                return await self._transition(
                    order, EventKind.CANCELLED, _S.CANCELLED, reason="cancelled before it was sent"
                )
            if order.broker_order_id is None:
                raise OrderRejected(
                    RejectReason.CONFLICTING_INTENT,
                    f"order {client_order_id!r} is {order.state.value}: its "
                    "broker id is not known yet",
                    field="client_order_id",
                )
            await self._transition(order, EventKind.CANCEL_REQUESTED, order.state)
            try:
                await self.broker.cancel_order(order.broker_order_id)
            except BrokerRejectedError as exc:
                log.info("cancel of %s refused: %s", client_order_id, exc.reason)
            return await self.refresh(client_order_id, _locked=True)

    async def force_state(
        self,
        client_order_id: str,
        state: OrderState,
        *,
        reason: str,
        broker_order_id: str | None = None,
        _reconciliation: bool = False,
    ) -> Order:
        """Set a state outside the transition table: the startup reconciler's tool only."""
        if not _reconciliation:
            raise RuntimeError(
                "force_state bypasses the order state machine and is reserved for the startup "
                "reconciler (pass _reconciliation=True there, nowhere else)"
            )
        async with self._lock(client_order_id):
            order = self.get(client_order_id)
            if order is None:
                raise FillError(f"no order with client_order_id {client_order_id!r}")
            return await self._transition(
                order,
                EventKind.FORCED,
                state,
                reason=reason,
                broker_order_id=broker_order_id,
                check=False,
            )

    # ------------------------------------------------------------------ internals

    async def _transition(
        self,
        order: Order,
        kind: EventKind,
        state: OrderState,
        *,
        reason: str | None = None,
        broker_order_id: str | None = None,
        check: bool = True,
    ) -> Order:
        """Journal one event (fsynced), then change the order in memory and publish it."""
        informational = kind is EventKind.CANCEL_REQUESTED and state is order.state
        if check and not informational:
            check_transition(order.state, state)
        async with self._state_lock:
            seq = order.last_seq + 1
            ev = OrderEvent(
                order.client_order_id,
                seq,
                kind,
                state,
                _now(),
                broker_order_id or order.broker_order_id,
                reason,
            )
            await self.journal.arecord_event(ev, reason)  # durable before anything follows
            new = replace(
                order,
                state=state,
                last_seq=seq,
                updated_at=ev.at,
                broker_order_id=ev.broker_order_id,
                reason=reason if reason is not None else order.reason,
            )
            self._orders[order.client_order_id] = new
            self._publish(ev)
        return new

    async def _check_risk(self, intent: OrderIntent) -> None:
        price = intent.limit_price or intent.stop_price
        if price is None and self.price_source is not None:
            price = self.price_source(intent.symbol)
        balance: Decimal | None = None
        if self.risk.check_balance and intent.side == "buy":
            try:
                balance = await asyncio.to_thread(self.db.get_balance, intent.account)
            except Exception as exc:
                log.warning("balance of %s unknown: %s", intent.account, _why(exc))
        reserved = Decimal(0)
        position = (
            self._positions[intent.symbol].quantity
            if intent.symbol in self._positions
            else Decimal(0)
        )
        for o in self._orders.values():
            if is_final(o.state):
                continue
            if o.symbol == intent.symbol:
                position += o.remaining if o.intent.side == "buy" else -o.remaining
            if o.intent.side == "buy" and o.intent.account == intent.account:
                p = (
                    o.intent.limit_price
                    or o.intent.stop_price
                    or o.avg_fill_price
                    or (self.price_source(o.symbol) if self.price_source else None)
                )
                reserved += o.remaining * (p or Decimal(0))
        today = _now().date().isoformat()
        check_risk(
            intent,
            self.risk,
            RiskView(price, balance, reserved, position, self._daily_pnl.get(today, Decimal(0))),
        )

    def _lock(self, cid: str) -> asyncio.Lock:
        lock = self._locks.get(cid)
        if lock is None:
            lock = self._locks[cid] = asyncio.Lock()
        return lock

    def _publish(self, ev: OrderEvent) -> None:
        for q in self._subscribers:
            q.put_nowait(ev)

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError("call `await OrderManager.start()` before submitting")


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
