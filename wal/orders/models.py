"""The order layer's values: ``OrderIntent``, ``Order``, ``Fill``, ``OrderEvent``.

All money and quantities are ``Decimal``. Every value is a frozen dataclass; a new state is a
new ``Order`` (``dataclasses.replace``). ``to_dict``/``from_dict`` give the JSON-native form
the ``--json`` output and the HTTP broker use (decimals as strings, times as ISO 8601).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from wal.money import exact
from wal.orders.states import EventKind, OrderState

__all__ = ["Fill", "Order", "OrderEvent", "OrderIntent", "exposure", "new_client_order_id"]


def new_client_order_id() -> str:
    """``uuid4().hex``: 32 chars ``[0-9a-f]``, inside every listed broker's limit (36)."""
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


def _dec(v: Any) -> Decimal | None:
    return None if v is None else Decimal(str(v))


def _s(v: Decimal | None) -> str | None:
    return None if v is None else format(v, "f")


def _t(v: datetime | None) -> str | None:
    return None if v is None else v.isoformat()


def _time(v: Any) -> datetime | None:
    """A time read back (a row, the journal's kwargs, a broker's dict) as aware UTC: one
    journaled naive before ``validate_intent`` refused it is taken as UTC."""
    if v is None:
        return None
    t = v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
    return t.replace(tzinfo=UTC) if t.utcoffset() is None else _in_utc(t)


def _in_utc(t: datetime) -> datetime:
    """An aware time in UTC (the same instant); anything else as it is."""
    if t.tzinfo is UTC or t.utcoffset() is None:
        return t
    try:
        return t.astimezone(UTC)
    except (OverflowError, ValueError):
        return t  # no UTC equivalent: validate_intent refuses it as too old or in the future


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """What a strategy wants: validated by ``OrderManager.submit``, then journaled as is.

    ``created_at`` must be aware (``datetime.now(UTC)``, the default); one in another zone
    is kept in UTC. ``time_in_force``: ``day``, ``gtc``, ``ioc`` or ``fok``.

    ``client_order_id`` is made once, here, and never regenerated: it is the broker's client
    id and the log's idempotency key, so submitting the same intent twice is one order.
    """

    symbol: str
    side: str  # "buy" or "sell"
    quantity: Decimal
    order_type: str = "market"  # market, limit, stop, stop_limit
    limit_price: Decimal | None = None  # limit and stop_limit orders only
    stop_price: Decimal | None = None  # stop and stop_limit orders only
    time_in_force: str = "day"
    account: str = "default"  # the balance account the order is valued against
    client_order_id: str = field(default_factory=new_client_order_id)
    created_at: datetime = field(default_factory=_now)
    # one-cancels-other group at the broker, reduce on fill (``ClientIdRules.oco_groups``):
    # a fill of any member by q reduces every other live member by q, atomically there
    oco_group: str | None = None

    def __post_init__(self) -> None:
        # an aware created_at in another zone is kept as the same instant in UTC, as the
        # journal gives it back; a naive one is left for validate_intent to refuse
        created = self.created_at
        if isinstance(created, datetime) and created.tzinfo is not UTC:
            object.__setattr__(self, "created_at", _in_utc(created))

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_order_id": self.client_order_id,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": _s(self.quantity),
            "order_type": self.order_type,
            "limit_price": _s(self.limit_price),
            "stop_price": _s(self.stop_price),
            "time_in_force": self.time_in_force,
            "account": self.account,
            "created_at": _t(self.created_at),
            "oco_group": self.oco_group,
        }

    def same_order(self, other: OrderIntent) -> bool:
        """True when ``other`` asks for the same order (times aside). Decimals compare by
        value: the journal gives ``0.2500000000`` back for ``0.25``."""
        return all(getattr(self, f) == getattr(other, f) for f in _SAME_ORDER_FIELDS)


_SAME_ORDER_FIELDS = (
    "client_order_id",
    "symbol",
    "side",
    "quantity",
    "order_type",
    "limit_price",
    "stop_price",
    "time_in_force",
    "account",
    "oco_group",
)


@dataclass(frozen=True, slots=True)
class Order:
    """An order as the journal knows it."""

    intent: OrderIntent
    state: OrderState = OrderState.PENDING
    broker_order_id: str | None = None
    filled_quantity: Decimal = Decimal(0)
    avg_fill_price: Decimal | None = None
    reason: str | None = None  # the reject, failure or force reason
    last_seq: int = 0  # the seq of its last journaled event
    updated_at: datetime = field(default_factory=_now)

    @property
    def client_order_id(self) -> str:
        return self.intent.client_order_id

    @property
    def symbol(self) -> str:
        return self.intent.symbol

    @property
    @exact
    def remaining(self) -> Decimal:
        return self.intent.quantity - self.filled_quantity

    def to_dict(self) -> dict[str, Any]:
        d = self.intent.to_dict()
        d.update(
            state=self.state.value,
            broker_order_id=self.broker_order_id,
            filled_quantity=_s(self.filled_quantity),
            avg_fill_price=_s(self.avg_fill_price),
            reason=self.reason,
            last_seq=self.last_seq,
            updated_at=_t(self.updated_at),
        )
        return d

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Order:
        """An ``Order`` from an ``orders`` row (or ``to_dict`` output)."""
        intent = OrderIntent(
            symbol=str(row["symbol"]),
            side=str(row["side"]),
            quantity=Decimal(str(row["quantity"])),
            order_type=str(row["order_type"]),
            limit_price=_dec(row.get("limit_price")),
            stop_price=_dec(row.get("stop_price")),
            time_in_force=str(row.get("time_in_force") or "day"),
            account=str(row.get("account") or "default"),
            client_order_id=str(row["client_order_id"]),
            created_at=_time(row["created_at"]) or _now(),
            oco_group=row.get("oco_group"),  # absent from rows journaled before it existed
        )
        return cls(
            intent=intent,
            state=OrderState(row["state"]),
            broker_order_id=row.get("broker_order_id"),
            filled_quantity=_dec(row.get("filled_quantity")) or Decimal(0),
            avg_fill_price=_dec(row.get("avg_fill_price")),
            reason=row.get("reason"),
            last_seq=int(row.get("last_seq") or 0),
            updated_at=_time(row.get("updated_at")) or intent.created_at,
        )


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution reported by the broker.

    ``execution_id`` is the broker's id of the execution. Fills are journaled once per
    *execution key*: the id itself, or (brokers whose corrections change only a suffix, as
    Interactive Brokers' ``ExecId``) the id without it; a fill with a known key and a new id is
    a correction: it replaces the earlier one, never adds to it.
    """

    execution_id: str
    client_order_id: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    executed_at: datetime = field(default_factory=_now)
    broker_order_id: str | None = None
    fee: Decimal = Decimal(0)  # what the account paid for it (commission), >= 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "fee": _s(self.fee),
            "execution_id": self.execution_id,
            "client_order_id": self.client_order_id,
            "broker_order_id": self.broker_order_id,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": _s(self.quantity),
            "price": _s(self.price),
            "executed_at": _t(self.executed_at),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fill:
        return cls(
            execution_id=str(d["execution_id"]),
            client_order_id=str(d["client_order_id"]),
            broker_order_id=d.get("broker_order_id"),
            symbol=str(d["symbol"]),
            side=str(d["side"]),
            quantity=Decimal(str(d["quantity"])),
            price=Decimal(str(d["price"])),
            executed_at=_time(d.get("executed_at")) or _now(),
            fee=Decimal(str(d.get("fee") or 0)),
        )


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """One row of an order's journal: ``seq`` counts 1, 2, ... per order, never reused."""

    client_order_id: str
    seq: int
    kind: EventKind
    state: OrderState  # the order's state after this event
    at: datetime
    broker_order_id: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_order_id": self.client_order_id,
            "seq": self.seq,
            "kind": self.kind.value,
            "state": self.state.value,
            "at": _t(self.at),
            "broker_order_id": self.broker_order_id,
            "detail": self.detail,
        }


@exact
def exposure(orders: Iterable[tuple[str | None, Decimal]]) -> Decimal:
    """The most that ``orders`` ((OCO group or None, remaining) each) can execute together:
    an order outside a group counts whole, a group as its largest member (reduce on fill: a
    fill of one member by q takes q off every other, so the group never executes more)."""
    alone = Decimal(0)
    groups: dict[str, Decimal] = {}
    for group, left in orders:
        if group is None:
            alone += left
        else:
            groups[group] = max(groups.get(group, Decimal(0)), left)
    return alone + sum(groups.values(), Decimal(0))
