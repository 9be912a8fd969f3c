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

The audit trail (issue 14)
--------------------------
``order_events`` is also a hash chain over every order's events: each row carries
``audit_seq`` (1, 2, ... across all orders), ``prev_hash`` and ``hash = SHA-256(canonical
JSON of the event || prev_hash)`` (``audit_hash``). The order journal computes them once,
when it journals the event, and carries them in the log entry, so a replay writes the same
chain; an entry without them (a direct ``DatabaseManager`` call) gets them from the table's
head when it is applied. ``order_audit_anchors`` records (seq, hash) every
``ANCHOR_EVERY`` events and at session end, so rows cut off the end are detected. Triggers
(SQLite and PostgreSQL) refuse ``UPDATE`` and ``DELETE`` on both tables (and ``TRUNCATE``
on PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
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
    "ANCHOR_EVERY",
    "GENESIS_HASH",
    "ORDER_OPERATIONS",
    "audit_anchors",
    "audit_hash",
    "audit_head",
    "canonical_event",
    "fills",
    "op_record_order_anchor",
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
    # the audit chain: position across all orders, the previous row's hash, this row's hash
    sa.Column("audit_seq", sa.Integer(), nullable=False, unique=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_anchors = sa.Table(
    "order_audit_anchors",
    metadata,
    sa.Column("seq", sa.Integer(), primary_key=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
)

ANCHOR_EVERY: Final = 1000  # an anchor after every this many events (and at session end)
GENESIS_HASH: Final = "0" * 64  # the prev_hash of the first event


def _sqlite_append_only(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is an append-only audit trail: {op} refused'); "
        "END"
        for op in ("UPDATE", "DELETE")
    ]


_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION atb_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '%% is an append-only audit trail: %% refused', TG_TABLE_NAME, TG_OP;
END $$
"""


def _pg_append_only(table: str) -> list[str]:
    return [
        _PG_FUNCTION,
        f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION atb_audit_append_only()",
        f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION atb_audit_append_only()",
    ]


def _install_append_only(table: sa.Table) -> None:
    for dialect, stmts in (
        ("sqlite", _sqlite_append_only(table.name)),
        ("postgresql", _pg_append_only(table.name)),
    ):
        for stmt in stmts:
            ddl = sa.DDL(stmt)  # type: ignore[no-untyped-call]
            sa.event.listen(table, "after_create", ddl.execute_if(dialect=dialect))


_install_append_only(order_events)
_install_append_only(audit_anchors)


def _iso(at: datetime) -> str:
    return valid_utc(at, "at").astimezone(UTC).isoformat(timespec="microseconds")


def canonical_event(
    *,
    audit_seq: int,
    client_order_id: str,
    seq: int,
    kind: str,
    state: str,
    at: datetime,
    broker_order_id: str | None,
    detail: str | None,
) -> bytes:
    """The event as canonical JSON (sorted keys, no spaces, UTF-8, time in UTC to the
    microsecond): what its hash covers."""
    doc = {
        "audit_seq": audit_seq,
        "client_order_id": client_order_id,
        "seq": seq,
        "kind": kind,
        "state": state,
        "at": _iso(at),
        "broker_order_id": broker_order_id,
        "detail": detail,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def audit_hash(event: Mapping[str, Any], prev_hash: str) -> str:
    """``SHA-256(canonical JSON of the event || prev_hash)`` as hex; ``event`` has the keys of
    ``canonical_event`` (an ``order_events`` row does)."""
    body = canonical_event(
        audit_seq=int(event["audit_seq"]),
        client_order_id=str(event["client_order_id"]),
        seq=int(event["seq"]),
        kind=str(event["kind"]),
        state=str(event["state"]),
        at=event["at"],
        broker_order_id=event.get("broker_order_id"),
        detail=event.get("detail"),
    )
    return hashlib.sha256(body + prev_hash.encode("ascii")).hexdigest()


def audit_head(conn: Connection) -> tuple[int, str]:
    """(audit_seq, hash) of the chain's last row; (0, GENESIS_HASH) when it is empty."""
    row = conn.execute(
        sa.select(order_events.c.audit_seq, order_events.c.hash)
        .order_by(order_events.c.audit_seq.desc())
        .limit(1)
    ).first()
    return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))


def _insert_event(conn: Connection, row: dict[str, Any], audit: Mapping[str, Any]) -> None:
    """Insert an event row with its chain fields: the journal's, or the head's next."""
    seq = audit.get("audit_seq")
    if seq is None:
        head_seq, head_hash = audit_head(conn)
        chained = {"audit_seq": head_seq + 1, "prev_hash": head_hash}
        chained["hash"] = audit_hash(row | chained, head_hash)
    else:
        chained = {
            "audit_seq": seq,
            "prev_hash": valid_text(audit.get("prev_hash"), "prev_hash"),
            "hash": valid_text(audit.get("hash"), "hash"),
        }
    conn.execute(sa.insert(order_events), row | chained)


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
    audit_seq: int | None = None,
    prev_hash: str | None = None,
    hash: str | None = None,
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
    _insert_event(
        conn,
        {
            "client_order_id": cid,
            "seq": 1,
            "kind": "created",
            "state": "pending",
            "at": at,
            "broker_order_id": None,
            "detail": None,
        },
        {"audit_seq": audit_seq, "prev_hash": prev_hash, "hash": hash},
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
    audit_seq: int | None = None,
    prev_hash: str | None = None,
    hash: str | None = None,
) -> None:
    cid = valid_text(client_order_id, "client_order_id")
    n = _next_seq(conn, cid, seq)
    when = valid_utc(at, "at")
    bid = valid_opt_id(broker_order_id, "broker_order_id")
    _insert_event(
        conn,
        {
            "client_order_id": cid,
            "seq": n,
            "kind": valid_text(kind, "kind", 24),
            "state": valid_text(state, "state", 24),
            "at": when,
            "broker_order_id": bid,
            "detail": reason,
        },
        {"audit_seq": audit_seq, "prev_hash": prev_hash, "hash": hash},
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
    audit_seq: int | None = None,
    prev_hash: str | None = None,
    hash: str | None = None,
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
    _insert_event(
        conn,
        {
            "client_order_id": cid,
            "seq": n,
            "kind": valid_text(kind, "kind", 24),
            "state": valid_text(state, "state", 24),
            "at": when,
            "broker_order_id": row["broker_order_id"],
            "detail": row["execution_id"],
        },
        {"audit_seq": audit_seq, "prev_hash": prev_hash, "hash": hash},
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


def op_record_order_anchor(
    conn: Connection, *, seq: int, hash: str, at: datetime, reason: str
) -> None:
    """Record an anchor (seq, hash) of the audit chain. The same anchor again is a no-op (a
    replay after the ledger lost it); a different hash at a known seq is refused."""
    if not isinstance(seq, int) or seq < 0:
        raise ValueError(f"anchor seq must be an int >= 0, got {seq!r}")
    h = valid_text(hash, "hash")
    known = conn.execute(sa.select(audit_anchors.c.hash).where(audit_anchors.c.seq == seq)).first()
    if known is not None:
        if known[0] != h:
            raise ValueError(f"audit anchor at seq {seq} is {known[0]}; refusing {h}")
        return
    conn.execute(
        sa.insert(audit_anchors),
        {
            "seq": seq,
            "hash": h,
            "at": valid_utc(at, "at"),
            "reason": valid_text(reason, "reason", 32),
        },
    )


ORDER_OPERATIONS: Final[dict[str, Callable[..., Any]]] = {
    OperationType.ORDER_INTENT.value: op_record_order_intent,
    OperationType.ORDER_EVENT.value: op_record_order_event,
    OperationType.ORDER_FILL.value: op_record_order_fill,
    OperationType.ORDER_ANCHOR.value: op_record_order_anchor,
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
