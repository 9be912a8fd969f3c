"""What startup reconciliation works with: its config, its result, the ids it makes, its rules.

``ReconcilerConfig`` (the knobs), ``ReconciliationResult`` (what a run did), ``FilledTrade``
(phase 3's rows); the run's ``Snapshot`` of the broker and its ``Counts`` (the tallies and
actions, logged as they are made); the ids of synthetic orders (``orphan_order_id``) and
emergency stops (``emergency_stop_id``), the emergency stop's price, and which broker orders
are live or protect a position. Used by :mod:`wal.orders.reconcile` (the run, phase 1) and
:mod:`wal.orders.stops` (phase 2).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from wal.money import exact
from wal.orders.broker import BROKER_STATUS, Broker, BrokerOrder, BrokerPosition
from wal.orders.journal import OrderJournal
from wal.orders.models import Fill, Order, exposure
from wal.orders.states import EventKind, OrderState
from wal.orders.ticks import TickTable
from wal.orders.validation import CLOSE_PREFIX, EMERGENCY_STOP_PREFIX, ORPHAN_PREFIX

__all__ = [
    "CLOSE_PREFIX",
    "EMERGENCY_STOP_PREFIX",
    "ORPHAN_PREFIX",
    "Counts",
    "FilledTrade",
    "ReconciliationResult",
    "ReconcilerConfig",
    "Snapshot",
    "cancel_at_broker",
    "emergency_stop_id",
    "emergency_stop_price",
    "error_text",
    "exposure",
    "is_live",
    "is_stop",
    "is_synthetic",
    "orphan_order_id",
    "protects",
    "reduces",
    "remaining",
    "symbol_tag",
]

log = logging.getLogger("wal.orders.reconcile")

_S = OrderState
# the ids' prefixes (EMERGENCY_STOP_PREFIX, ORPHAN_PREFIX: synthetic orders, journaled, never
# sent; CLOSE_PREFIX: market closes) are reserved: wal.orders.validation refuses them to anyone
# but the reconciler
_STOP_TYPES = ("stop", "stop_limit")
_MIN_PCT = Decimal("0.005")
_MAX_PCT = Decimal("0.10")


@dataclass(frozen=True)
class ReconcilerConfig:
    """The reconciler's knobs. ``emergency_stop_pct`` is a fraction: 0.02 is 2 %."""

    emergency_stop_pct: Decimal = Decimal("0.02")  # allowed 0.005-0.10 (0.5 %-10 %)
    fetch_timeout: float = 10.0  # seconds, one broker call
    fetch_attempts: int = 3  # tries per fetch before ReconciliationFatalError
    fetch_backoff: tuple[float, ...] = (1.0, 2.0, 4.0)  # the waits between tries
    stop_attempts: int = 3  # emergency stop tries before the position is closed at market
    recent_hours: float = 24.0  # how far back the broker's order history is fetched
    run_attempts: int = 3  # passes until the end check holds (then ReconciliationFatalError)
    ticks: TickTable = field(default_factory=TickTable)  # every computed price on its tick

    def __post_init__(self) -> None:
        pct = self.emergency_stop_pct
        if isinstance(pct, bool) or not isinstance(pct, (Decimal, int, str)):
            raise ValueError(
                f"emergency_stop_pct must be a Decimal fraction (0.02 is 2 %), got "
                f"{type(pct).__name__} {pct!r}"
            )
        try:
            d = Decimal(pct)
        except InvalidOperation:
            raise ValueError(f"emergency_stop_pct {pct!r} is not a number") from None
        if not d.is_finite() or not _MIN_PCT <= d <= _MAX_PCT:
            raise ValueError(
                f"emergency_stop_pct must be between {_MIN_PCT} and {_MAX_PCT} (0.5 %-10 %), "
                f"got {pct}"
            )
        object.__setattr__(self, "emergency_stop_pct", d)
        if self.fetch_timeout <= 0:
            raise ValueError(f"fetch_timeout must be > 0 seconds, got {self.fetch_timeout}")
        if self.fetch_attempts < 1 or self.stop_attempts < 1 or self.run_attempts < 1:
            raise ValueError(
                f"fetch_attempts, stop_attempts and run_attempts must be >= 1, got "
                f"{self.fetch_attempts}, {self.stop_attempts} and {self.run_attempts}"
            )
        if any(b < 0 for b in self.fetch_backoff) or self.recent_hours <= 0:
            raise ValueError("fetch_backoff must be >= 0 and recent_hours > 0")

    def backoff(self, attempt: int) -> float:
        """The wait after failed try ``attempt`` (0-based)."""
        if not self.fetch_backoff:
            return 0.0
        return self.fetch_backoff[min(attempt, len(self.fetch_backoff) - 1)]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReconcilerConfig:
        """``ORDER_EMERGENCY_STOP_PCT`` (fraction), ``ORDER_RECONCILE_TIMEOUT`` (s),
        ``ORDER_TICK_SIZES`` (``SYM=TICK,...``, :class:`wal.orders.ticks.TickTable`)."""
        e = os.environ if env is None else env
        return cls(
            emergency_stop_pct=Decimal(e.get("ORDER_EMERGENCY_STOP_PCT", "0.02")),
            fetch_timeout=float(e.get("ORDER_RECONCILE_TIMEOUT", "10")),
            ticks=TickTable.from_env(e),
        )


@dataclass(frozen=True)
class ReconciliationResult:
    """What a run did (or, dry, would do). All zeros: the journal and the broker agreed."""

    orders_reconciled: int = 0  # journal orders whose state changed to the broker's
    orders_adopted: int = 0  # found by client id without a broker id, or a protective stop
    orphans_detected: int = 0  # positions the journal's fills did not explain
    orphan_orders_canceled: int = 0  # open broker orders the journal did not know
    emergency_stops_placed: int = 0
    fills_inferred: int = 0  # fills journaled from the broker's executions
    errors: tuple[str, ...] = ()
    stops_canceled: int = 0  # stops cancelled: wrong side, no position, or resized (replaced)
    positions_closed: int = 0  # closed at market after the stop failed stop_attempts times
    # reducing orders that are not stops (a take-profit) cancelled: with the stops they
    # could have executed more than the position (``wal.orders.stops``)
    exits_canceled: int = 0
    dry_run: bool = False
    actions: tuple[str, ...] = field(default=(), compare=False)

    @property
    def changes(self) -> int:
        """The number of changes made (or planned): 0 on an idempotent second run."""
        return (
            self.orders_reconciled
            + self.orders_adopted
            + self.orphans_detected
            + self.orphan_orders_canceled
            + self.emergency_stops_placed
            + self.fills_inferred
            + self.stops_canceled
            + self.positions_closed
            + self.exits_canceled
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "orders_reconciled": self.orders_reconciled,
            "orders_adopted": self.orders_adopted,
            "orphans_detected": self.orphans_detected,
            "orphan_orders_canceled": self.orphan_orders_canceled,
            "emergency_stops_placed": self.emergency_stops_placed,
            "fills_inferred": self.fills_inferred,
            "stops_canceled": self.stops_canceled,
            "positions_closed": self.positions_closed,
            "exits_canceled": self.exits_canceled,
            "errors": list(self.errors),
            "dry_run": self.dry_run,
            "actions": list(self.actions),
        }


@dataclass(frozen=True)
class FilledTrade:
    """One journaled execution, what a circuit breaker rebuilds its state from."""

    client_order_id: str
    execution_id: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    executed_at: datetime
    pnl: Decimal | None
    trade_id: str | None


@dataclass
class Snapshot:
    """What the broker reported at the start of a run."""

    positions: list[BrokerPosition]
    open_orders: list[BrokerOrder]
    recent_orders: list[BrokerOrder]
    fills: list[Fill]


@dataclass
class Counts:
    """A run's tallies, errors and actions (``ReconciliationResult`` is made from them)."""

    reconciled: int = 0
    adopted: int = 0
    orphans: int = 0
    orphan_cancels: int = 0
    stops: int = 0
    fills: int = 0
    stop_cancels: int = 0
    closed: int = 0
    exit_cancels: int = 0
    errors: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)  # broker order ids cancelled in this run
    unsettled: set[str] = field(default_factory=set)  # symbols with executions not booked

    def act(self, dry: bool, what: str) -> None:
        """Record (and log) one change made, or planned by a dry run."""
        self.actions.append(what)
        log.info("reconciliation%s: %s", " (dry run)" if dry else "", what)


def orphan_order_id(symbol: str, day: datetime, n: int = 1) -> str:
    """``orphan-{symbol}-{YYYYMMDD}`` (``-{n}`` from the second one of that day on)."""
    base = f"{ORPHAN_PREFIX}{symbol}-{day.astimezone(UTC):%Y%m%d}"
    return base if n == 1 else f"{base}-{n}"


async def is_synthetic(journal: OrderJournal, order: Order) -> bool:
    """The reconciler's own synthetic order: an ``orphan-...`` id, no broker id, and never
    sent (no ``submitted`` event: ``submit`` journals one before every send). A user's order
    under such an id (journaled before ``reserved_client_order_id`` refused them) is not: it
    is reconciled like any other order, and never completed with a synthetic fill."""
    if not order.client_order_id.startswith(ORPHAN_PREFIX) or order.broker_order_id is not None:
        return False
    events = await asyncio.to_thread(journal.events, order.client_order_id)
    return not any(e["kind"] == EventKind.SUBMITTED.value for e in events)


def symbol_tag(symbol: str) -> str:
    """A short tag of ``symbol`` for client ids (letters and digits, unique)."""
    tag = re.sub(r"[^A-Za-z0-9]", "", symbol)[:10]
    if tag != symbol:  # shortened or characters dropped: keep it unique
        tag += f"{zlib.crc32(symbol.encode()) & 0xFFFF:04x}"
    return tag


def emergency_stop_id(symbol: str, day: datetime, n: int) -> str:
    """``es-{tag}-{YYYYMMDD}-{n}``: the client id of an emergency stop."""
    return f"{EMERGENCY_STOP_PREFIX}{symbol_tag(symbol)}-{day.astimezone(UTC):%Y%m%d}-{n}"


@exact
def emergency_stop_price(
    entry: Decimal,
    quantity: Decimal,
    pct: Decimal,
    *,
    symbol: str = "",
    ticks: TickTable | None = None,
) -> Decimal:
    """``pct`` below the entry for a long (``quantity`` > 0: a sell stop), above it for a
    short (a buy stop); on ``symbol``'s tick (``ticks``, default: the equity rule), rounded
    away from the market (down for the sell stop, up for the buy stop)."""
    table = ticks if ticks is not None else TickTable()
    if quantity > 0:
        return table.round_stop(symbol, entry * (1 - pct), "sell")
    return table.round_stop(symbol, entry * (1 + pct), "buy")


@exact
def remaining(bo: BrokerOrder) -> Decimal:
    """What is left of a broker order to fill (less what its OCO group reduced it by)."""
    return bo.remaining


def is_stop(bo: BrokerOrder) -> bool:
    """A stop or stop-limit order."""
    return bo.order_type in _STOP_TYPES


def protects(bo: BrokerOrder, position: Decimal) -> bool:
    """A stop on the reducing side of ``position`` (sell stop for a long, buy stop for a
    short). Any other stop would open or grow a position."""
    return is_stop(bo) and reduces(bo, position)


def reduces(bo: BrokerOrder, position: Decimal) -> bool:
    """Any order (a stop, a limit, ...) on the reducing side of ``position``."""
    return (position > 0 and bo.side == "sell") or (position < 0 and bo.side == "buy")


def is_live(bo: BrokerOrder) -> bool:
    """Accepted or partially filled at the broker."""
    return BROKER_STATUS.get(bo.status) in (_S.ACCEPTED, _S.PARTIALLY_FILLED)


async def cancel_at_broker(broker: Broker, bo: BrokerOrder, c: Counts, timeout: float) -> None:
    """Cancel a broker order directly (the journal does not hold it); an error is counted."""
    try:
        await asyncio.wait_for(broker.cancel_order(bo.broker_order_id), timeout)
    except Exception as exc:
        c.errors.append(f"cancelling broker order {bo.broker_order_id}: {error_text(exc)}")


def error_text(exc: BaseException | None) -> str:
    """One line on what failed ("timed out", or the exception's first line)."""
    if exc is None:
        return "no error"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
