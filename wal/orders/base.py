"""``OrderBase``: the order manager's state, its journal, and one journaled transition.

What every part of the ``OrderManager`` stands on: the orders and fills of this run in
memory (loaded from the journal by ``load()``), the positions (``PositionBook``), the halt
switch, the reads, the per-order locks, the event subscribers, and ``_transition``: one event
journaled (fsynced) before the order changes in memory. ``OrderFills``
(:mod:`wal.orders.fills`) builds on it, ``OrderManager`` (:mod:`wal.orders.manager`) on that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from wal import DurableDatabaseManager
from wal.entry import utc_now
from wal.orders.broker import Broker, BrokerOrder
from wal.orders.journal import OrderJournal
from wal.orders.models import Order, OrderEvent
from wal.orders.positions import PositionBook
from wal.orders.states import EventKind, OrderState, check_transition, is_final
from wal.orders.table import OrderTable
from wal.orders.validation import RiskLimits

__all__ = [
    "ABSENT_HORIZON",
    "LIVE_STATES",
    "OrderLocks",
    "NEVER_SENT",
    "OrderBase",
    "RetryPolicy",
    "is_absent",
    "utc",
    "why",
]

log = logging.getLogger("wal.orders")

LIVE_STATES = (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED)
NEVER_SENT = "never sent"  # how the reason of a SUBMIT_FAILED that was never sent starts
ABSENT_HORIZON = timedelta(hours=24)  # how long a SUBMIT_FAILED by absence is looked at again


def is_absent(order: Order) -> bool:
    """SUBMIT_FAILED because the broker did not show it (it was sent: it may exist)."""
    return order.state is OrderState.SUBMIT_FAILED and not (order.reason or "").startswith(
        NEVER_SENT
    )


def utc(v: object) -> datetime:
    """A datetime (or ISO text) as an aware UTC datetime (a naive one is taken as UTC)."""
    t = v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


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


class OrderLocks:
    """One ``asyncio.Lock`` per client id, kept only while someone holds or waits for it.

    Every journal write for an order holds its lock (an event's seq is the order's
    ``last_seq + 1``: two writers of one order would journal the same seq). A lock is dropped
    when its last holder or waiter leaves, so the table holds the orders being worked on
    now, not every order ever seen; a lock is never dropped while anyone waits on it, so two
    writers of one order never hold two different locks."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, cid: str) -> AsyncIterator[None]:
        entry = self._locks.get(cid)
        if entry is None:
            entry = self._locks[cid] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1  # counted before waiting: a waiter keeps the lock in the table
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[cid]


class OrderBase:
    """The state an ``OrderManager`` works on (module docstring)."""

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
        self._orders = OrderTable()  # with the open ones indexed (``_orders.open``)
        self._fills: dict[str, dict[str, dict[str, Any]]] = {}  # cid -> exec key -> fill row
        self._final_at_start: set[str] = set()  # client ids of orders already final at start()
        # orders the broker reports final whose fills are not all booked: why, and its report
        self._unsettled: dict[str, str] = {}
        # SUBMIT_FAILED because the broker did not show them (recently): looked at again by
        # start() and poll_fills(), since the broker's word wins over a final journal state
        self._absent: dict[str, datetime] = {}
        self._broker_final: dict[str, BrokerOrder] = {}
        self._book = PositionBook()  # positions and daily P&L, from the journaled fills
        self._locks = OrderLocks()  # per order: every journal write of an order holds it
        self._state_lock = asyncio.Lock()  # the reconciler's adoptions (no submit holds it)
        # submits checked but not journaled yet: open orders to every later risk check
        self._reserved: dict[str, Order] = {}
        self._ref_price: dict[str, Decimal] = {}  # client id -> the price it was checked at
        self._last_price: dict[str, Decimal] = {}  # symbol -> its last fill or checked price
        self._fill_epoch = 0  # +1 per fill booked in memory: a balance read it overtook is redone
        self._subscribers: list[asyncio.Queue[OrderEvent]] = []
        self._loaded = False
        self._halted: str | None = None  # why submit is refused (None: trading)

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        """Load the journal (open orders, their fills, positions, today's P&L); idempotent.
        ``start()`` does it; the startup reconciler calls it instead of ``start()``."""
        if not self._loaded:
            await asyncio.to_thread(self._load)

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
        for o in self.journal.orders():
            if is_final(o.state):
                self._final_at_start.add(o.client_order_id)  # a resubmit finds it without a read
                if is_absent(o) and utc(o.updated_at) > utc_now() - ABSENT_HORIZON:
                    self._absent[o.client_order_id] = o.intent.created_at
                continue
            self._orders[o.client_order_id] = o
            self._fills[o.client_order_id] = {
                str(r["execution_key"]): r
                for r in self.journal.fills(client_order_id=o.client_order_id)
            }
        self._book.load(self.db.get_open_positions())
        today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
        for r in self.journal.fills(since=today):
            if r.get("pnl") is not None:
                self._book.add_pnl(r["executed_at"], Decimal(str(r["pnl"])))
        self._loaded = True

    # ------------------------------------------------------------------ reading

    def get(self, client_order_id: str) -> Order | None:
        """The order, from memory or the journal (pending entries included)."""
        o = self._orders.get(client_order_id)
        return o if o is not None else self.journal.order(client_order_id)

    def open_orders(self) -> list[Order]:
        return list(self._orders.open.values())

    def positions(self) -> dict[str, Decimal]:
        """The journal's net position per symbol (signed), from the fills it holds."""
        return self._book.net()

    def entry_price(self, symbol: str) -> Decimal | None:
        """The journal's entry price of its open position in ``symbol`` (None if flat)."""
        return self._book.entry_price(symbol)

    async def events(self) -> AsyncIterator[OrderEvent]:
        """Every state change journaled from now on, in order."""
        q: asyncio.Queue[OrderEvent] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.remove(q)

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
        """Journal one event (fsynced), then change the order in memory and publish it.
        The caller holds the order's lock (``_lock``): ``order`` is its current state."""
        informational = kind is EventKind.CANCEL_REQUESTED and state is order.state
        if check and not informational:
            check_transition(order.state, state)
        # no global lock: the order's lock makes this the order's only writer (its seq), and
        # the journal batches concurrent events of different orders into one group commit
        seq = order.last_seq + 1
        ev = OrderEvent(
            order.client_order_id,
            seq,
            kind,
            state,
            utc_now(),
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

    def _lock(self, cid: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The order's lock (``async with``): every journal write for an order holds it."""
        return self._locks.hold(cid)

    def _publish(self, ev: OrderEvent) -> None:
        for q in self._subscribers:
            q.put_nowait(ev)

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError("call `await OrderManager.start()` before submitting")


def why(exc: BaseException) -> str:
    """One line on why a broker call failed ("timed out", or the exception's first line)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
