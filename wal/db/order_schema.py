"""The order journal's tables in the reference database, append-only, and its audit chain.

Tables (created on first use, with the others)
----------------------------------------------
``orders``: one row per client order id, its intent and its current state, filled quantity
and average fill price, and ``last_seq``, the seq of its latest event. ``order_events``: the
order's history, primary key (client_order_id, seq): every state change, in order.
``fills``: one row per execution key (a correction replaces its row), with the trade it made.
``order_audit_anchors``: (seq, hash) of the audit chain.

The audit trail (issue 14)
--------------------------
``order_events`` is also a hash chain over every order's events: each row carries
``audit_seq`` (1, 2, ... across all orders), ``prev_hash`` and ``hash = SHA-256(canonical
JSON of the event || prev_hash)`` (``audit_hash``). Since chain format 2 (``CHAIN_FORMAT``,
revision 0005) the created event's ``content`` holds the order's intent (``intent_content``)
and a fill event's the fill and the order's totals after it (``fill_content``), and the hash
covers it: ``wal.orders.audit`` checks the ``orders`` and ``fills`` rows against it (since
revision 0006 the intent's ``oco_group`` too, a key only when the order has one). An event
without content (format 1: written before; or a state change) hashes exactly as before. The
order journal computes them once,
when it journals the event, and carries them in the log entry, so a replay writes the same
chain; an entry without them (a direct ``DatabaseManager`` call) gets them from the table's
head (``audit_head``) when it is applied. ``order_audit_anchors`` records (seq, hash) every
``ANCHOR_EVERY`` events and at session end, so rows cut off the end are detected. Triggers
(SQLite and PostgreSQL) refuse ``UPDATE`` and ``DELETE`` on both tables (and ``TRUNCATE``
on PostgreSQL).

The effects that write these tables are in :mod:`wal.db.orders`, the reads in
:mod:`wal.db.order_reads`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wal.db.schema import Money, UTCDateTime, metadata, valid_utc

__all__ = [
    "ANCHOR_EVERY",
    "CHAIN_FORMAT",
    "FILL_FIELDS",
    "FILL_ORDER_FIELDS",
    "GENESIS_HASH",
    "INTENT_FIELDS",
    "OPTIONAL_INTENT_FIELDS",
    "MAX_CONTENT_LEN",
    "MONEY_FIELDS",
    "audit_anchors",
    "audit_hash",
    "audit_head",
    "canonical_event",
    "fill_content",
    "fills",
    "intent_content",
    "money_text",
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
    # the order's one-cancels-other group at the broker (rev. 0006); NULL: none, and every
    # order journaled before
    sa.Column("oco_group", sa.String(_ID), nullable=True),
    # a trader's orders newest first, a page at a time (``wal.service.listing``; rev. 0004)
    sa.Index("ix_orders_account_created", "account", "created_at", "client_order_id"),
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
    # chain format 2 (rev. 0005): what the event is about, hashed with it: the order's intent
    # (the created event) or the fill (a fill event), canonical JSON; NULL for the other
    # events, and for every event written before format 2 (format 1: contents not covered)
    sa.Column("content", sa.Text(), nullable=True),
)

audit_anchors = sa.Table(
    "order_audit_anchors",
    metadata,
    sa.Column("seq", sa.Integer(), primary_key=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
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


ANCHOR_EVERY: Final = 1000  # an anchor after every this many events (and at session end)
GENESIS_HASH: Final = "0" * 64  # the prev_hash of the first event
CHAIN_FORMAT: Final = 2  # 2: created and fill events carry (and hash) their ``content``
MAX_CONTENT_LEN: Final = 4000  # an event's content: a few hundred characters in practice
INTENT_FIELDS: Final = (  # the ``orders`` columns a created event's content holds
    "symbol",
    "side",
    "quantity",
    "order_type",
    "limit_price",
    "stop_price",
    "time_in_force",
    "account",
)
# ``orders`` columns of the intent a created event's content holds only when set (rev. 0006):
# an intent without one hashes exactly as before, and an older content verifies as it did
OPTIONAL_INTENT_FIELDS: Final = ("oco_group",)
FILL_FIELDS: Final = (  # the ``fills`` columns a fill event's content holds
    "execution_key",
    "symbol",
    "side",
    "quantity",
    "price",
    "trade_id",
    "pnl",
)
FILL_ORDER_FIELDS: Final = ("filled_quantity", "avg_fill_price")  # the order's, after the fill
MONEY_FIELDS: Final = frozenset(
    {"quantity", "limit_price", "stop_price", "price", "pnl", *FILL_ORDER_FIELDS}
)


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
    content: str | None = None,
) -> bytes:
    """The event as canonical JSON (sorted keys, no spaces, UTF-8, time in UTC to the
    microsecond): what its hash covers. ``content`` (chain format 2) is a key only when
    there is one: an event without it (format 1, or a state change) hashes as before."""
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
    if content is not None:
        doc["content"] = content
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
        content=event.get("content"),
    )
    return hashlib.sha256(body + prev_hash.encode("ascii")).hexdigest()


def money_text(value: object) -> str | None:
    """A money value as content text: a ``Decimal``'s digits without trailing zeros
    (``Decimal("100.0000000000")`` -> ``"100"``), exact and independent of the decimal
    context; never raises (the value's own checks refuse a bad one)."""
    if value is None:
        return None
    if isinstance(value, Decimal) and value.is_finite():
        text = format(value, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def _content(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def intent_content(fields: Mapping[str, Any]) -> str:
    """A created event's content: the order's intent (``INTENT_FIELDS``, from the
    ``record_order_intent`` arguments), canonical JSON, money as ``money_text``; an
    ``OPTIONAL_INTENT_FIELDS`` field only when it is set."""
    doc = {
        k: money_text(fields.get(k)) if k in MONEY_FIELDS else fields.get(k) for k in INTENT_FIELDS
    }
    for k in OPTIONAL_INTENT_FIELDS:
        if fields.get(k) is not None:
            doc[k] = fields[k]  # hashed with the intent: a changed group breaks the chain
    return _content(doc)


def fill_content(fields: Mapping[str, Any]) -> str:
    """A fill event's content: the fill (``FILL_FIELDS``) and the order's filled quantity
    and average price after it (``FILL_ORDER_FIELDS``), from the ``record_order_fill``
    arguments; canonical JSON, money as ``money_text``."""
    return _content(
        {
            k: money_text(fields.get(k)) if k in MONEY_FIELDS else fields.get(k)
            for k in (*FILL_FIELDS, *FILL_ORDER_FIELDS)
        }
    )


def audit_head(conn: Connection) -> tuple[int, str]:
    """(audit_seq, hash) of the chain's last row; (0, GENESIS_HASH) when it is empty."""
    row = conn.execute(
        sa.select(order_events.c.audit_seq, order_events.c.hash)
        .order_by(order_events.c.audit_seq.desc())
        .limit(1)
    ).first()
    return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))
