"""The order journal's effects in the reference database: one function per critical operation.

``DatabaseManager`` (:mod:`wal.db.order_methods`) and ``apply`` (``ORDER_OPERATIONS``, the
registry) share them; each runs in the caller's transaction.

* ``op_record_order_intent``: the ``orders`` row (PENDING) and event 1 (``created``).
* ``op_record_order_event``: the event row; the order's state (and broker id, reason).
* ``op_record_order_fill``: in the caller's ONE transaction: the fill row (inserted, or
  replaced for a correction), the event row, the order's filled quantity, average price and
  state, the ``trades`` row (``op_log_trade``; not for a correction), the position change
  (``position_ops``: the ``log_position`` / ``update_position`` / ``close_position`` effects,
  decided by the ``OrderManager`` before logging so a replay does exactly the same) and the
  cash the fill moves (``fill_cash``: on the order's ``account``, a buy ``-quantity x price -
  fee``, a sell ``+quantity x price - fee``, one ``balance_changes`` row with the reason
  ``fill <execution key>``; a correction moves the difference to what that key moved).
* ``op_record_order_anchor``: an anchor (seq, hash) of the audit chain.

The event's seq must be the order's ``last_seq + 1``: a gap or a repeat is refused (a
permanent error), so the history can never fork. Every event row gets its audit chain
fields: the journal's (carried in the log entry), or the table's head's next. The created and
fill events get their ``content`` (chain format 2) the same way: the journal's, or made here
from the call's values when the link is made here; an entry carrying a link but no content
(logged by the code before format 2) writes none, so its row matches the hash it carries.

The tables, the append-only triggers and the audit hash are in :mod:`wal.db.order_schema`
(its public names are importable from here too, where the order layer imports them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wal.db.classify import RecordNotFoundError
from wal.db.operations import (
    op_balance_update,
    op_close_position,
    op_log_position,
    op_log_trade,
    op_update_position,
)
from wal.db.order_schema import (
    ANCHOR_EVERY,
    CHAIN_FORMAT,
    GENESIS_HASH,
    MAX_CONTENT_LEN,
    audit_anchors,
    audit_hash,
    audit_head,
    canonical_event,
    fill_content,
    fills,
    intent_content,
    order_events,
    orders,
)
from wal.db.schema import (
    balance_changes,
    valid_money,
    valid_opt_id,
    valid_opt_positive,
    valid_positive,
    valid_text,
    valid_utc,
)
from wal.entry import OperationType, utc_now
from wal.money import exact

__all__ = [
    "ANCHOR_EVERY",
    "CHAIN_FORMAT",
    "GENESIS_HASH",
    "MAX_CONTENT_LEN",
    "ORDER_OPERATIONS",
    "audit_anchors",
    "audit_hash",
    "audit_head",
    "canonical_event",
    "fill_cash",
    "fill_content",
    "fill_reason",
    "fills",
    "intent_content",
    "op_record_order_anchor",
    "op_record_order_event",
    "op_record_order_fill",
    "op_record_order_intent",
    "order_events",
    "orders",
]


# Statements built once, executed with parameters: building one per call (and SQLAlchemy's
# cache key of it) cost more than executing it (an order event: ~200 us before, ~60 after).
_INSERT_ORDER: Final = sa.insert(orders)
_INSERT_EVENT: Final = sa.insert(order_events)
_INSERT_FILL: Final = sa.insert(fills)
_DELETE_FILL: Final = sa.delete(fills).where(fills.c.execution_key == sa.bindparam("b_key"))
_FILL_OWNER: Final = sa.select(fills.c.client_order_id).where(
    fills.c.execution_key == sa.bindparam("b_key")
)
_LAST_SEQ: Final = sa.select(orders.c.last_seq).where(
    orders.c.client_order_id == sa.bindparam("b_cid")
)
_ORDER_IS_AT: Final = (
    orders.c.client_order_id == sa.bindparam("b_cid"),
    orders.c.last_seq == sa.bindparam("b_prev"),
)
# what every event sets on its order row; a broker id given as None keeps the stored one
_EVENT_SETS: Final = {
    "state": sa.bindparam("b_state"),
    "last_seq": sa.bindparam("b_seq"),
    "updated_at": sa.bindparam("b_at"),
    "broker_order_id": sa.func.coalesce(
        sa.bindparam("b_bid", type_=orders.c.broker_order_id.type), orders.c.broker_order_id
    ),
}
_ADVANCE: Final = (
    sa.update(orders)
    .where(*_ORDER_IS_AT)
    .values(
        **_EVENT_SETS,
        reason=sa.func.coalesce(
            sa.bindparam("b_reason", type_=orders.c.reason.type), orders.c.reason
        ),
    )
)
_ADVANCE_FILLED: Final = (
    sa.update(orders)
    .where(*_ORDER_IS_AT)
    .values(
        **_EVENT_SETS,
        filled_quantity=sa.bindparam("b_filled"),
        avg_fill_price=sa.bindparam("b_avg"),
    )
)


def _event_row(
    cid: str, seq: int, kind: object, state: object, at: object, bid: object, detail: object
) -> dict[str, Any]:
    """An ``order_events`` row (kind and state checked), before its audit fields."""
    return {
        "client_order_id": cid,
        "seq": seq,
        "kind": valid_text(kind, "kind", 24),
        "state": valid_text(state, "state", 24),
        "at": at,
        "broker_order_id": bid,
        "detail": detail,
    }


def _content(given: object, audit: Mapping[str, Any], make: Callable[[], str]) -> str | None:
    """An event's content (chain format 2): the journal's, carried in the entry; made here
    (``make``) for an entry whose chain link is made here; None for an entry journaled
    with its link but without content (format 1: logged by the code before format 2)."""
    if given is not None:
        return valid_text(given, "content", MAX_CONTENT_LEN)
    return make() if audit.get("audit_seq") is None else None


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
    conn.execute(_INSERT_EVENT, row | chained)


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
    content: str | None = None,
    oco_group: str | None = None,
) -> str:
    cid = valid_text(client_order_id, "client_order_id")
    at = utc_now() if created_at is None else valid_utc(created_at, "created_at")
    row = {
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
        "oco_group": valid_opt_id(oco_group, "oco_group"),
    }
    conn.execute(_INSERT_ORDER, row)
    audit = {"audit_seq": audit_seq, "prev_hash": prev_hash, "hash": hash}
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
            "content": _content(content, audit, lambda: intent_content(row)),
        },
        audit,
    )
    return cid


def _advance(conn: Connection, stmt: sa.Update, cid: str, seq: object, **values: Any) -> int:
    """Move the order to event ``seq`` (its state and fields: ``values``) only if ``seq`` is
    its ``last_seq + 1``, in one statement that also locks its row; refuse any other seq
    (a gap or a repeat would fork the history) and an unknown order."""
    if type(seq) is int:
        params = {f"b_{k}": v for k, v in values.items()}
        done = conn.execute(stmt, params | {"b_cid": cid, "b_prev": seq - 1, "b_seq": seq})
        if done.rowcount == 1:
            return seq
    row = conn.execute(_LAST_SEQ, {"b_cid": cid}).first()
    if row is None:
        raise RecordNotFoundError(f"no order with client_order_id {cid!r}")
    raise ValueError(f"order {cid!r}: event seq {seq!r} does not follow {row[0]}")


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
    when = valid_utc(at, "at")
    bid = valid_opt_id(broker_order_id, "broker_order_id")
    row = _event_row(cid, 0, kind, state, when, bid, reason)
    # the order row first: it checks the seq (and locks the row) before the event is written
    row["seq"] = _advance(
        conn, _ADVANCE, cid, seq, state=row["state"], at=when, bid=bid, reason=reason
    )
    _insert_event(conn, row, {"audit_seq": audit_seq, "prev_hash": prev_hash, "hash": hash})


_CASH_QUANTUM: Final = Decimal("1E-10")


@exact
def fill_cash(side: object, quantity: Decimal, price: Decimal, fee: Decimal) -> Decimal:
    """The cash a fill moves on its account: a buy pays ``quantity x price + fee``, a sell
    receives ``quantity x price - fee``; rounded down to 10 places (never in the account's
    favour)."""
    gross = quantity * price
    if side == "buy":
        amount = -gross - fee
    elif side == "sell":
        amount = gross - fee
    else:
        raise ValueError(f"side must be buy or sell to move cash, got {side!r}")
    return amount.quantize(_CASH_QUANTUM, rounding=ROUND_FLOOR)


def fill_reason(execution_key: str) -> str:
    """The ``balance_changes`` reason of the cash a fill moved (one per execution key)."""
    return f"fill {execution_key}"


@exact
def _move_fill_cash(
    conn: Connection, account: str, key: str, cash: Decimal, replaced: bool
) -> None:
    """Make the cash moved for execution ``key`` on ``account`` equal ``cash`` (a correction
    moves the difference to what the key moved before)."""
    moved = Decimal(0)
    if replaced:
        rows = conn.execute(
            sa.select(balance_changes.c.delta).where(
                balance_changes.c.account == account,
                balance_changes.c.reason == fill_reason(key),
            )
        )
        moved = sum((Decimal(r[0]) for r in rows), Decimal(0))
    if cash != moved:
        op_balance_update(conn, cash - moved, reason=fill_reason(key), account=account)


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
    account: str | None = None,
    fee: Decimal | None = None,
    cash: Decimal | None = None,
    replaces_cash: Decimal | None = None,
    content: str | None = None,
) -> None:
    cid = valid_text(client_order_id, "client_order_id")
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
    event = _event_row(cid, 0, kind, state, when, row["broker_order_id"], row["execution_id"])
    totals = {
        "filled_quantity": valid_positive(filled_quantity, "filled_quantity"),
        "avg_fill_price": valid_positive(avg_fill_price, "avg_fill_price"),
    }
    audit = {"audit_seq": audit_seq, "prev_hash": prev_hash, "hash": hash}
    event["content"] = _content(content, audit, lambda: fill_content(row | totals))
    # the order row first: it checks the seq (and locks the row) before anything is written
    event["seq"] = _advance(
        conn,
        _ADVANCE_FILLED,
        cid,
        seq,
        state=event["state"],
        at=when,
        bid=row["broker_order_id"],
        filled=totals["filled_quantity"],
        avg=totals["avg_fill_price"],
    )
    # a correction (same key, new execution id) replaces the row: never a second one; the
    # same key journaled for another order is refused (never replaces that order's fill)
    owner = conn.execute(_FILL_OWNER, {"b_key": row["execution_key"]}).scalar()
    if owner is not None and owner != cid:
        raise ValueError(
            f"execution key {execution_key!r} is journaled for order {owner}, not {cid}: "
            "the broker reuses execution ids across orders"
        )
    replaced = conn.execute(_DELETE_FILL, {"b_key": row["execution_key"]}).rowcount
    if replaced and trade_id is not None:
        raise ValueError(
            f"execution key {execution_key!r} is journaled; a correction makes no second trade"
        )
    conn.execute(_INSERT_FILL, row)
    _insert_event(conn, event, audit)
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
    if cash is not None:  # fills journaled before fills moved cash carry none
        acct = valid_text(account, "account")
        qty, price_ = valid_positive(quantity, "quantity"), valid_positive(price, "price")
        due = fill_cash(side, qty, price_, valid_money(fee or 0, "fee"))
        if valid_money(cash, "cash") != due:
            raise ValueError(f"fill {row['execution_id']}: cash {cash} is not {due}")
        # in this transaction: the cash moves with the position, once (the ledger row)
        _move_fill_cash(conn, acct, str(row["execution_key"]), due, bool(replaced))


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
