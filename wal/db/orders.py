"""The order journal's tables and effects in the reference database.

Tables (created on first use, with the others)
----------------------------------------------
``orders``: one row per client order id, its intent and its current state, filled quantity
and average fill price, and ``last_seq``, the seq of its latest event. ``order_events``: the
order's history, primary key (client_order_id, seq): every state change, in order.
``fills``: one row per execution key (a correction replaces its row), with the trade it made.

Effects (one function per critical operation; ``DatabaseManager`` and ``apply`` share them)
------------------------------------------------------------------------------------------
* ``op_record_order_intent``: the ``orders`` row (PENDING) and event 1 (``created``).
* ``op_record_order_event``: the event row; the order's state (and broker id, reason).
* ``op_record_order_fill``: in the caller's ONE transaction: the fill row (inserted, or
  replaced for a correction), the event row, the order's filled quantity, average price and
  state, the ``trades`` row (``op_log_trade``; not for a correction) and the position change
  (``position_ops``: the ``log_position`` / ``update_position`` / ``close_position`` effects,
  decided by the ``OrderManager`` before logging so a replay does exactly the same).

The event's seq must be the order's ``last_seq + 1``: a gap or a repeat is refused (a
permanent error), so the history can never fork.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wal.db.classify import RecordNotFoundError
from wal.db.operations import (
    op_close_position,
    op_log_position,
    op_log_trade,
    op_update_position,
)
from wal.db.schema import (
    Money,
    UTCDateTime,
    metadata,
    valid_money,
    valid_opt_id,
    valid_opt_positive,
    valid_positive,
    valid_text,
    valid_utc,
)
from wal.entry import OperationType, utc_now

__all__ = [
    "ORDER_OPERATIONS",
    "fills",
    "op_record_order_event",
    "op_record_order_fill",
    "op_record_order_intent",
    "order_events",
    "orders",
]

_ID = 64

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("client_order_id", sa.String(_ID), primary_key=True),
    sa.Column("symbol", sa.String(_ID), nullable=False, index=True),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("quantity", Money(), nullable=False),
    sa.Column("order_type", sa.String(16), nullable=False),
    sa.Column("limit_price", Money(), nullable=True),
    sa.Column("stop_price", Money(), nullable=True),
    sa.Column("time_in_force", sa.String(16), nullable=False),
    sa.Column("account", sa.String(_ID), nullable=False),
    sa.Column("state", sa.String(24), nullable=False, index=True),
    sa.Column("broker_order_id", sa.String(_ID), nullable=True),
    sa.Column("filled_quantity", Money(), nullable=False),
    sa.Column("avg_fill_price", Money(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("last_seq", sa.Integer(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

order_events = sa.Table(
    "order_events",
    metadata,
    sa.Column("client_order_id", sa.String(_ID), primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("state", sa.String(24), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("broker_order_id", sa.String(_ID), nullable=True),
    sa.Column("detail", sa.Text(), nullable=True),
)

fills = sa.Table(
    "fills",
    metadata,
    sa.Column("execution_key", sa.String(128), primary_key=True),
    sa.Column("execution_id", sa.String(128), nullable=False),
    sa.Column("client_order_id", sa.String(_ID), nullable=False, index=True),
    sa.Column("broker_order_id", sa.String(_ID), nullable=True),
    sa.Column("symbol", sa.String(_ID), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("quantity", Money(), nullable=False),
    sa.Column("price", Money(), nullable=False),
    sa.Column("executed_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("trade_id", sa.String(_ID), nullable=True),
    sa.Column("pnl", Money(), nullable=True),
)


def op_record_order_intent(
    conn: Connection,
    *,
    client_order_id: str,
    symbol: str,
    side: str,
    quantity: Decimal,
    order_type: str,
    limit_price: Decimal | None = None,
    stop_price: Decimal | None = None,
    time_in_force: str = "day",
    account: str = "default",
    created_at: datetime | None = None,
) -> str:
    cid = valid_text(client_order_id, "client_order_id")
    at = utc_now() if created_at is None else valid_utc(created_at, "created_at")
    conn.execute(
        sa.insert(orders),
        {
            "client_order_id": cid,
            "symbol": valid_text(symbol, "symbol"),
            "side": valid_text(side, "side", 8),
            "quantity": valid_positive(quantity, "quantity"),
            "order_type": valid_text(order_type, "order_type", 16),
            "limit_price": valid_opt_positive(limit_price, "limit_price"),
            "stop_price": valid_opt_positive(stop_price, "stop_price"),
            "time_in_force": valid_text(time_in_force, "time_in_force", 16),
            "account": valid_text(account, "account"),
            "state": "pending",
            "broker_order_id": None,
            "filled_quantity": Decimal(0),
            "avg_fill_price": None,
            "reason": None,
            "last_seq": 1,
            "created_at": at,
            "updated_at": at,
        },
    )
    conn.execute(
        sa.insert(order_events),
        {
            "client_order_id": cid,
            "seq": 1,
            "kind": "created",
            "state": "pending",
            "at": at,
            "broker_order_id": None,
            "detail": None,
        },
    )
    return cid


def _next_seq(conn: Connection, cid: str, seq: object) -> int:
    """Lock the order's row; refuse a seq that is not its ``last_seq + 1``."""
    row = conn.execute(
        sa.select(orders.c.last_seq).where(orders.c.client_order_id == cid).with_for_update()
    ).first()
    if row is None:
        raise RecordNotFoundError(f"no order with client_order_id {cid!r}")
    if not isinstance(seq, int) or seq != row[0] + 1:
        raise ValueError(f"order {cid!r}: event seq {seq!r} does not follow {row[0]}")
    return seq


def op_record_order_event(
    conn: Connection,
    *,
    client_order_id: str,
    seq: int,
    kind: str,
    state: str,
    at: datetime,
    broker_order_id: str | None = None,
    reason: str | None = None,
) -> None:
    cid = valid_text(client_order_id, "client_order_id")
    n = _next_seq(conn, cid, seq)
    when = valid_utc(at, "at")
    bid = valid_opt_id(broker_order_id, "broker_order_id")
    conn.execute(
        sa.insert(order_events),
        {
            "client_order_id": cid,
            "seq": n,
            "kind": valid_text(kind, "kind", 24),
            "state": valid_text(state, "state", 24),
            "at": when,
            "broker_order_id": bid,
            "detail": reason,
        },
    )
    values: dict[str, Any] = {"state": state, "last_seq": n, "updated_at": when}
    if bid is not None:
        values["broker_order_id"] = bid
    if reason is not None:
        values["reason"] = reason
    conn.execute(sa.update(orders).where(orders.c.client_order_id == cid).values(values))


_POSITION_EFFECTS: Final[dict[str, Callable[..., Any]]] = {
    "log_position": op_log_position,
    "update_position": op_update_position,
    "close_position": op_close_position,
}


def op_record_order_fill(
    conn: Connection,
    *,
    execution_id: str,
    execution_key: str,
    client_order_id: str,
    symbol: str,
    side: str,
    quantity: Decimal,
    price: Decimal,
    executed_at: datetime,
    seq: int,
    kind: str,
    state: str,
    filled_quantity: Decimal,
    avg_fill_price: Decimal,
    broker_order_id: str | None = None,
    trade_id: str | None = None,
    pnl: Decimal | None = None,
    position_ops: list[dict[str, Any]] | None = None,
) -> None:
    cid = valid_text(client_order_id, "client_order_id")
    n = _next_seq(conn, cid, seq)
    when = valid_utc(executed_at, "executed_at")
    row = {
        "execution_key": valid_text(execution_key, "execution_key", 128),
        "execution_id": valid_text(execution_id, "execution_id", 128),
        "client_order_id": cid,
        "broker_order_id": valid_opt_id(broker_order_id, "broker_order_id"),
        "symbol": valid_text(symbol, "symbol"),
        "side": valid_text(side, "side", 8),
        "quantity": valid_positive(quantity, "quantity"),
        "price": valid_positive(price, "price"),
        "executed_at": when,
        "trade_id": trade_id,
        "pnl": None if pnl is None else valid_money(pnl, "pnl"),
    }
    # a correction (same key, new execution id) replaces the row: never a second one
    replaced = conn.execute(
        sa.delete(fills).where(fills.c.execution_key == row["execution_key"])
    ).rowcount
    if replaced and trade_id is not None:
        raise ValueError(
            f"execution key {execution_key!r} is journaled; a correction makes no second trade"
        )
    conn.execute(sa.insert(fills), row)
    conn.execute(
        sa.insert(order_events),
        {
            "client_order_id": cid,
            "seq": n,
            "kind": valid_text(kind, "kind", 24),
            "state": valid_text(state, "state", 24),
            "at": when,
            "broker_order_id": row["broker_order_id"],
            "detail": row["execution_id"],
        },
    )
    values: dict[str, Any] = {
        "state": state,
        "last_seq": n,
        "updated_at": when,
        "filled_quantity": valid_positive(filled_quantity, "filled_quantity"),
        "avg_fill_price": valid_positive(avg_fill_price, "avg_fill_price"),
    }
    if row["broker_order_id"] is not None:
        values["broker_order_id"] = row["broker_order_id"]
    conn.execute(sa.update(orders).where(orders.c.client_order_id == cid).values(values))
    if trade_id is not None:
        op_log_trade(
            conn,
            symbol=row["symbol"],
            side=row["side"],
            quantity=row["quantity"],
            price=row["price"],
            trade_id=trade_id,
            pnl=row["pnl"],
            executed_at=when,
        )
    for op in position_ops or []:
        effect = _POSITION_EFFECTS.get(op.get("op", ""))
        if effect is None:
            raise ValueError(f"unknown position operation {op.get('op')!r}")
        effect(conn, **op["kwargs"])


ORDER_OPERATIONS: Final[dict[str, Callable[..., Any]]] = {
    OperationType.ORDER_INTENT.value: op_record_order_intent,
    OperationType.ORDER_EVENT.value: op_record_order_event,
    OperationType.ORDER_FILL.value: op_record_order_fill,
}
"""The order journal's operations: name (from the log) -> effect (``apply``'s registry)."""


def _plain_row(m: Any) -> dict[str, Any]:
    """A row as a dict with plain ``str`` keys (SQLAlchemy's may be a ``str`` subclass)."""
    return {str(k): v for k, v in m.items()}


def order_row(conn: Connection, client_order_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(orders).where(orders.c.client_order_id == client_order_id)).first()
    return None if row is None else _plain_row(row._mapping)


def order_rows(conn: Connection, *, open_only: bool = False) -> list[dict[str, Any]]:
    q = sa.select(orders).order_by(orders.c.created_at, orders.c.client_order_id)
    if open_only:
        q = q.where(orders.c.state.not_in(["filled", "rejected", "cancelled", "submit_failed"]))
    return [_plain_row(r._mapping) for r in conn.execute(q)]


def event_rows(conn: Connection, client_order_id: str) -> list[dict[str, Any]]:
    q = (
        sa.select(order_events)
        .where(order_events.c.client_order_id == client_order_id)
        .order_by(order_events.c.seq)
    )
    return [_plain_row(r._mapping) for r in conn.execute(q)]


def fill_rows(
    conn: Connection, *, client_order_id: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    q = sa.select(fills).order_by(fills.c.executed_at, fills.c.execution_key)
    if client_order_id is not None:
        q = q.where(fills.c.client_order_id == client_order_id)
    if since is not None:
        q = q.where(fills.c.executed_at >= valid_utc(since, "since"))
    return [_plain_row(r._mapping) for r in conn.execute(q)]
