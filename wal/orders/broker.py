"""The ``Broker`` protocol: what the ``OrderManager`` needs from a broker, and its rules.

A broker adapter is async and raises the errors of :mod:`wal.orders.errors`:
``BrokerUnavailable`` when the outcome is unknown (timeout, transport, 5xx),
``BrokerRejectedError`` for a clear refusal, ``DuplicateClientOrderId`` when the client id is
taken, ``BrokerProtocolError`` for an answer it cannot read. It declares its client-id rules
(``ClientIdRules``): above all the **dedup scope**: whether the broker refuses a reused client
id forever (``GLOBAL``) or only while the first order is open (``OPEN_ONLY``, Binance), which
decides whether a retry may resend. Not declared, it is ``UNKNOWN`` (the default): never
resent, as ``OPEN_ONLY``.

A broker may also declare **OCO groups with reduce on fill** (``ClientIdRules.oco_groups``,
Interactive Brokers' OCA group with "reduce on fill"): orders submitted with the same
``OrderIntent.oco_group`` are linked at the broker, and a fill of any member by q reduces
every other live member by q in the same state transition as the fill (cancelling one that
has nothing left), so the group never fills more than its largest member. A reduction shows
in ``BrokerOrder.reduced_quantity`` (what is left: ``BrokerOrder.remaining``); a member
reduced to nothing is ``canceled``. Not declared (None), the broker has none: an intent with
an ``oco_group`` is refused before it is journaled (``oco_unsupported``).

Broker status strings (Alpaca's v2 vocabulary) map to ``OrderState`` through one static
table, ``BROKER_STATUS``; transient statuses map to None, an unknown string raises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, Protocol, runtime_checkable

from wal.money import exact
from wal.orders.errors import BrokerProtocolError
from wal.orders.models import Fill, OrderIntent
from wal.orders.states import OrderState

__all__ = [
    "BROKER_STATUS",
    "Broker",
    "BrokerOrder",
    "BrokerPosition",
    "ClientIdRules",
    "DedupScope",
    "OrderFillsLookup",
    "map_status",
]


class DedupScope(StrEnum):
    """How long the broker refuses a client id it has seen."""

    GLOBAL = "global"  # forever (Coinbase, Alpaca as far as documented): a resend is safe
    OPEN_ONLY = "open_only"  # only while the first order is open (Binance): never resend
    # not declared (a broker whose rule nobody stated): taken as the worst, never resend
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ClientIdRules:
    """A broker's declared client-order-id rules. ``dedup_scope`` defaults to ``UNKNOWN``:
    a retry never resends until the broker is declared ``GLOBAL`` (a resend after the first
    order filled is a second order wherever the broker accepts the id again)."""

    dedup_scope: DedupScope = DedupScope.UNKNOWN
    max_length: int = 36  # Binance's limit; the tightest of the listed brokers
    pattern: str = r"^[A-Za-z0-9_-]+$"  # the characters every listed broker accepts
    # how long a just-accepted order may be invisible to a lookup by client id
    visibility_window_seconds: float = 5.0
    # corrections keep the execution id up to this separator (IB's ExecId: "0001.01" ->
    # "0001.02" corrects it); None: every execution id is its own key
    correction_separator: str | None = None
    # OCO groups with reduce on fill (module docstring); None: not declared, taken as none
    oco_groups: bool | None = None

    def check(self, client_order_id: str) -> str | None:
        """None if the broker accepts this client id, else why not."""
        if not 1 <= len(client_order_id) <= self.max_length:
            return f"{len(client_order_id)} characters; the broker allows 1-{self.max_length}"
        if not re.fullmatch(self.pattern, client_order_id):
            return f"characters outside {self.pattern}"
        return None

    def execution_key(self, execution_id: str) -> str:
        """The key a fill is journaled under: a correction has the same key as the original."""
        sep = self.correction_separator
        if sep and sep in execution_id:
            return execution_id.rsplit(sep, 1)[0]
        return execution_id

    def supersedes(self, execution_id: str, booked_id: str) -> bool:
        """True when ``execution_id`` is a later version of the execution ``booked_id`` (the
        same key, a higher correction suffix: "0001.02" after "0001.01"): a correction to
        book. The same id, or an earlier version sent again after its correction, is not:
        booking it would undo the correction (and take the order's next seq)."""
        sep = self.correction_separator
        if execution_id == booked_id or not sep:
            return False
        if self.execution_key(execution_id) != self.execution_key(booked_id):
            return False
        new, old = _version(execution_id, sep), _version(booked_id, sep)
        if isinstance(new, int) and isinstance(old, int):
            return new > old
        return str(new) > str(old)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dedup_scope": self.dedup_scope.value,
            "max_length": self.max_length,
            "pattern": self.pattern,
            "visibility_window_seconds": self.visibility_window_seconds,
            "correction_separator": self.correction_separator,
            "oco_groups": self.oco_groups,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClientIdRules:
        return cls(
            # a document that does not say: never resend
            dedup_scope=DedupScope(d.get("dedup_scope", DedupScope.UNKNOWN.value)),
            max_length=int(d.get("max_length", 36)),
            pattern=str(d.get("pattern", r"^[A-Za-z0-9_-]+$")),
            visibility_window_seconds=float(d.get("visibility_window_seconds", 5.0)),
            correction_separator=d.get("correction_separator"),
            # a document that does not say (an older broker, an older state): no OCO groups
            oco_groups=_opt_bool(d.get("oco_groups")),
        )


BROKER_STATUS: Final[dict[str, OrderState | None]] = {
    "new": OrderState.ACCEPTED,
    "accepted": OrderState.ACCEPTED,
    "pending_new": OrderState.ACCEPTED,
    "accepted_for_bidding": OrderState.ACCEPTED,
    "held": OrderState.ACCEPTED,
    "calculated": OrderState.ACCEPTED,
    "partially_filled": OrderState.PARTIALLY_FILLED,
    "filled": OrderState.FILLED,
    "canceled": OrderState.CANCELLED,
    "expired": OrderState.CANCELLED,
    "done_for_day": OrderState.CANCELLED,
    "rejected": OrderState.REJECTED,
    "stopped": OrderState.ACCEPTED,
    "suspended": OrderState.ACCEPTED,
    # transient: the order is between two states; the next report settles it
    "pending_cancel": None,
    "pending_replace": None,
    "replaced": None,
}
"""Broker status string -> our state (None: transient, skip). Anything else is an error."""

OPEN_STATUSES: Final = frozenset(
    s for s, st in BROKER_STATUS.items() if st in (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED)
) | {"pending_cancel", "pending_replace"}


def map_status(status: str) -> OrderState | None:
    """Our state for a broker status; None if transient; ``BrokerProtocolError`` if unknown."""
    try:
        return BROKER_STATUS[status]
    except KeyError:
        raise BrokerProtocolError(
            f"unknown broker order status {status!r} (known: {', '.join(sorted(BROKER_STATUS))})"
        ) from None


def _opt_bool(v: Any) -> bool | None:
    return v if v is None or isinstance(v, bool) else None


def _dec(v: Any) -> Decimal | None:
    return None if v is None else Decimal(str(v))


def _s(v: Decimal | None) -> str | None:
    return None if v is None else format(v, "f")


def _aware(t: datetime) -> datetime:
    """A broker's time without a zone is UTC (it is compared with our aware times)."""
    return t.replace(tzinfo=UTC) if t.utcoffset() is None else t


@dataclass(frozen=True)
class BrokerOrder:
    """An order as the broker reports it (``status`` is the broker's own string)."""

    broker_order_id: str
    client_order_id: str
    symbol: str
    side: str
    quantity: Decimal
    order_type: str
    status: str
    filled_quantity: Decimal = Decimal(0)
    avg_fill_price: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    reject_reason: str | None = None
    oco_group: str | None = None
    # taken off by its OCO group's fills (reduce on fill): never to fill; ``quantity`` stays
    # what was ordered (the intent's), so a lookup still ``matches`` it
    reduced_quantity: Decimal = Decimal(0)

    @property
    @exact
    def remaining(self) -> Decimal:
        """What is left to fill: ordered, less filled, less reduced by its OCO group."""
        return self.quantity - self.filled_quantity - self.reduced_quantity

    @property
    def state(self) -> OrderState | None:
        """``map_status(self.status)``: raises ``BrokerProtocolError`` for an unknown one."""
        return map_status(self.status)

    def matches(self, intent: OrderIntent) -> bool:
        """True when this is the order ``intent`` asked for (same id, symbol, side, size)."""
        return (
            self.client_order_id == intent.client_order_id
            and self.symbol == intent.symbol
            and self.side == intent.side
            and self.quantity == intent.quantity
        )

    def to_dict(self) -> dict[str, Any]:
        """Alpaca's v2 order shape (the fields we use)."""
        return {
            "id": self.broker_order_id,
            "client_order_id": self.client_order_id,
            "symbol": self.symbol,
            "side": self.side,
            "qty": _s(self.quantity),
            "type": self.order_type,
            "status": self.status,
            "filled_qty": _s(self.filled_quantity),
            "filled_avg_price": _s(self.avg_fill_price),
            "limit_price": _s(self.limit_price),
            "stop_price": _s(self.stop_price),
            "created_at": self.created_at.isoformat(),
            "reject_reason": self.reject_reason,
            "oco_group": self.oco_group,
            "oco_reduced_qty": _s(self.reduced_quantity),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BrokerOrder:
        return cls(
            broker_order_id=str(d["id"]),
            client_order_id=str(d["client_order_id"]),
            symbol=str(d["symbol"]),
            side=str(d["side"]),
            quantity=Decimal(str(d["qty"])),
            order_type=str(d["type"]),
            status=str(d["status"]),
            filled_quantity=_dec(d.get("filled_qty")) or Decimal(0),
            avg_fill_price=_dec(d.get("filled_avg_price")),
            limit_price=_dec(d.get("limit_price")),
            stop_price=_dec(d.get("stop_price")),
            created_at=_aware(datetime.fromisoformat(str(d["created_at"]))),
            reject_reason=d.get("reject_reason"),
            oco_group=d.get("oco_group"),  # absent: a broker (or a state) without OCO groups
            reduced_quantity=_dec(d.get("oco_reduced_qty")) or Decimal(0),
        )


@dataclass(frozen=True)
class BrokerPosition:
    """A net position at the broker: ``quantity`` signed (negative: short)."""

    symbol: str
    quantity: Decimal
    avg_entry_price: Decimal

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "qty": _s(self.quantity),
            "side": "long" if self.quantity >= 0 else "short",
            "avg_entry_price": _s(self.avg_entry_price),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BrokerPosition:
        return cls(str(d["symbol"]), Decimal(str(d["qty"])), Decimal(str(d["avg_entry_price"])))


@runtime_checkable
class Broker(Protocol):
    """What the ``OrderManager`` (and the next issue's reconciler) call on a broker."""

    @property
    def rules(self) -> ClientIdRules:
        """The broker's declared client-id rules."""
        ...

    async def submit_order(self, intent: OrderIntent) -> BrokerOrder:
        """Send the order with ``intent.client_order_id``; the broker's acknowledgement."""
        ...

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order with this client id, or None if the broker does not show one (yet)."""
        ...

    async def cancel_order(self, broker_order_id: str) -> None:
        """Ask the broker to cancel; the outcome arrives as a status."""
        ...

    async def get_open_orders(self) -> list[BrokerOrder]:
        """Every order still open at the broker."""
        ...

    async def get_recent_orders(self, hours: float) -> list[BrokerOrder]:
        """Every order created in the last ``hours``, open or not."""
        ...

    async def get_positions(self) -> list[BrokerPosition]:
        """The broker's net positions (symbols with a zero position are left out)."""
        ...

    async def get_fills(self, since: datetime | None = None) -> list[Fill]:
        """Executions at or after ``since`` (all when None), oldest first."""
        ...


@runtime_checkable
class OrderFillsLookup(Protocol):
    """A broker that can list ONE order's executions (an optional part of ``Broker``).

    After a submit, the ``OrderManager`` books the new order's fills. With ``get_fills`` alone
    it asks for every execution since the order was made (a minute earlier, for clock skew):
    at a steady order rate that is every fill of the last minute, on every submit. A broker
    whose API filters executions by order implements this, and is asked for the order's own.
    """

    async def get_order_fills(
        self, client_order_id: str, since: datetime | None = None
    ) -> list[Fill]:
        """The executions of the order with this client id at or after ``since`` (all when
        None), oldest first: what ``get_fills(since)`` lists for that order."""
        ...


def _version(execution_id: str, sep: str) -> int | str:
    """An execution id's correction number: its suffix after ``sep`` (-1: none, the original)."""
    if sep not in execution_id:
        return -1
    suffix = execution_id.rsplit(sep, 1)[1]
    return int(suffix) if suffix.isascii() and suffix.isdigit() else suffix
