"""The order journal's tables read back: orders, events, fills, the audit chain and anchors.

Plain functions on a connection, for ``OrderJournalMethods`` (:mod:`wal.db.order_methods`);
every row is a ``dict`` with plain ``str`` keys. The tables are in :mod:`wal.db.order_schema`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wal.db.order_schema import audit_anchors, fills, order_events, orders
from wal.db.schema import valid_utc

__all__ = [
    "anchor_rows",
    "audit_content_rows",
    "audit_rows",
    "event_counts",
    "event_rows",
    "fill_owner",
    "fill_rows",
    "last_seq_by_order",
    "order_row",
    "order_rows",
]


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


def fill_owner(conn: Connection, execution_key: str) -> str | None:
    """The client id of the order whose fill row has ``execution_key``, or None."""
    q = sa.select(fills.c.client_order_id).where(fills.c.execution_key == execution_key)
    owner = conn.execute(q).scalar()
    return None if owner is None else str(owner)


def audit_rows(conn: Connection, *, after: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
    """Event rows in audit_seq order, from ``after + 1``, at most ``limit``."""
    q = (
        sa.select(order_events)
        .where(order_events.c.audit_seq > after)
        .order_by(order_events.c.audit_seq)
        .limit(limit)
    )
    return [_plain_row(r._mapping) for r in conn.execute(q)]


def anchor_rows(conn: Connection) -> list[dict[str, Any]]:
    q = sa.select(audit_anchors).order_by(audit_anchors.c.seq)
    return [_plain_row(r._mapping) for r in conn.execute(q)]


def last_seq_by_order(conn: Connection) -> dict[str, int]:
    """Every order's ``last_seq`` (its events must run 1..last_seq)."""
    q = sa.select(orders.c.client_order_id, orders.c.last_seq)
    return {str(r[0]): int(r[1]) for r in conn.execute(q)}


def event_counts(conn: Connection) -> dict[str, tuple[int, int]]:
    """Per order: (number of event rows, highest seq)."""
    q = sa.select(
        order_events.c.client_order_id, sa.func.count(), sa.func.max(order_events.c.seq)
    ).group_by(order_events.c.client_order_id)
    return {str(r[0]): (int(r[1]), int(r[2])) for r in conn.execute(q)}


def audit_content_rows(
    conn: Connection, *, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """The next batch of orders by client order id, after ``after`` (None: from the first):
    (``orders`` rows, their ``order_events`` rows in (client id, seq) order, their ``fills``
    rows, the last client id of the batch or None when it is the last). Events and fills
    are those of every client id in the batch's range, whether or not an order row holds
    it; the last batch's range is open, so together the batches cover every row."""
    cid = orders.c.client_order_id
    q = sa.select(orders).order_by(cid).limit(limit)
    if after is not None:
        q = q.where(cid > after)
    order_list = [_plain_row(r._mapping) for r in conn.execute(q)]
    hi = str(order_list[-1]["client_order_id"]) if len(order_list) == limit else None

    def in_range(col: Any) -> list[Any]:
        return [
            *([] if after is None else [col > after]),
            *([] if hi is None else [col <= hi]),
        ]

    eq = sa.select(order_events).where(*in_range(order_events.c.client_order_id))
    eq = eq.order_by(order_events.c.client_order_id, order_events.c.seq)
    fq = sa.select(fills).where(*in_range(fills.c.client_order_id))
    fq = fq.order_by(fills.c.client_order_id, fills.c.execution_key)
    event_list = [_plain_row(r._mapping) for r in conn.execute(eq)]
    fill_list = [_plain_row(r._mapping) for r in conn.execute(fq)]
    return order_list, event_list, fill_list, hi
