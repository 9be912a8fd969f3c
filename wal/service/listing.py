"""``GET /api/v1/orders``: one page of a trader's orders, read from the database a page at a
time (keyset pagination), with the log's pending order entries on top.

Order: newest first by (``created_at``, ``client_order_id``); the cursor is the key of the
previous page's last order (opaque: base64 of JSON, ``views.decode_cursor``), so an order
placed between two page fetches is newer than the cursor and never shifts the pages: no gap,
no repeat. The query walks ``ix_orders_account_created`` (revision 0004) for the trader's
account, joined to ``service_orders`` on the client id for the owner (a trader sees only the
orders whose owner row is theirs).

Exact reads: under the manager's apply lock (no batch moves entries from the log to the
database meanwhile), the pending order entries of the trader's orders are read first; their
orders are left out of the database's page and read whole instead (their database row, if
any, with every pending entry applied, as ``wal.orders.journal_reads`` does), then merged in:
an order only in the log appears, once, and a pending state change counts for the ``state``
filter. The database query asks for ``limit + 1`` more rows than the orders it leaves out, so
the page is full whenever more orders match. While the database is unreachable the caller
falls back to the journal's kept state (``views.page_of_orders``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wal import DurableDatabaseManager, WALEntry
from wal.db.classify import is_transient
from wal.db.engine import READ_ONLY
from wal.db.order_schema import orders
from wal.db.service_schema import service_orders
from wal.errors import WALDatabaseError
from wal.orders import Order
from wal.orders.journal_reads import ORDER_OPERATIONS, apply_entry
from wal.service.owners import OwnerStore
from wal.service.views import OrderFilter, decode_cursor, encode_cursor, page_of_orders

__all__ = ["cursor_key", "list_orders", "list_page"]

Key = tuple[datetime, str]


def _key(o: Order) -> Key:
    return (o.intent.created_at, o.client_order_id)


def cursor_key(cursor: str | None) -> Key | None:
    """The cursor's (created_at, client id), or None; 422 naming ``cursor`` if it is not one
    this API gave (``views.decode_cursor``)."""
    return None if cursor is None else decode_cursor(cursor)


def list_orders(
    ddb: DurableDatabaseManager,
    kept_orders: Callable[[], list[Order]],
    owners: OwnerStore,
    trader: str,
    account: str,
    flt: OrderFilter,
    limit: int,
    cursor: str | None,
) -> tuple[list[Order], str | None]:
    """``list_page``; while the database cannot be reached, the same page from
    ``kept_orders()`` (``OrderJournal.orders``: the state kept from its last fresh read and
    every entry written since), paged in memory."""
    after = cursor_key(cursor)
    try:
        return list_page(ddb, owners, trader, account, flt, limit, after)
    except Exception as exc:
        transient = exc.transient if isinstance(exc, WALDatabaseError) else is_transient(exc)
        if not transient:
            raise
    mine = set(owners.orders_of(trader))
    orders = [o for o in kept_orders() if o.client_order_id in mine]
    return page_of_orders(orders, flt, limit, cursor)


def list_page(
    ddb: DurableDatabaseManager,
    owners: OwnerStore,
    trader: str,
    account: str,
    flt: OrderFilter,
    limit: int,
    after: Key | None,
) -> tuple[list[Order], str | None]:
    """The trader's orders matching ``flt``, newest first, older than ``after``, ``limit`` at
    most; (page, the next page's cursor or None). Raises the database's error as it is."""
    m = ddb.manager
    lock = m.apply_lock if m is not None else contextlib.nullcontext()
    with lock:  # the database and the pending entries seen at one instant: each entry once
        pending = _pending_of(ddb, owners, trader)
        with _read(ddb) as conn:
            touched = sorted(pending)
            rows = _page_rows(conn, trader, account, flt, limit + 1 + len(touched), after)
            whole = _rows_of(conn, touched) if touched else {}
    found = [Order.from_row(r) for r in rows if r["client_order_id"] not in pending]
    for entries in pending.values():
        for e in entries:  # in LSN order: the way the database will apply them
            apply_entry(whole, e)
    for cid in touched:
        row = whole.get(cid)
        if row is None or row.get("account") != account:
            continue
        o = Order.from_row(row)
        if flt.keeps(o) and (after is None or _key(o) < after):
            found.append(o)
    found.sort(key=_key, reverse=True)
    page = found[:limit]
    return page, (encode_cursor(page[-1]) if len(found) > limit else None)


def _pending_of(
    ddb: DurableDatabaseManager, owners: OwnerStore, trader: str
) -> dict[str, list[WALEntry]]:
    """The log's pending order entries of the trader's orders, by client id, in LSN order."""
    storage = ddb.storage
    out: dict[str, list[WALEntry]] = {}
    if storage is None:
        return out
    for e in storage.get_pending_entries():
        if e.operation not in ORDER_OPERATIONS:
            continue
        cid = str(e.kwargs.get("client_order_id"))
        if owners.trader_of(cid) == trader:  # the owner row is committed before the intent
            out.setdefault(cid, []).append(e)
    return out


@contextlib.contextmanager
def _read(ddb: DurableDatabaseManager) -> Iterator[Connection]:
    with ddb.db.engine.connect() as conn:
        conn.execution_options(**{READ_ONLY: True})  # a read: no SQLite write lock
        with conn.begin():
            yield conn


def _page_rows(
    conn: Connection,
    trader: str,
    account: str,
    flt: OrderFilter,
    n: int,
    after: Key | None,
) -> list[dict[str, Any]]:
    """At most ``n`` of the trader's order rows matching ``flt``, newest first, below ``after``."""
    q = (
        sa.select(orders)
        .join(service_orders, service_orders.c.client_order_id == orders.c.client_order_id)
        .where(orders.c.account == account, service_orders.c.trader_id == trader)
    )
    if flt.state is not None:
        q = q.where(orders.c.state == flt.state.value)
    if flt.symbol is not None:
        q = q.where(orders.c.symbol == flt.symbol)
    if flt.since is not None:
        q = q.where(orders.c.created_at >= flt.since)
    if flt.until is not None:
        q = q.where(orders.c.created_at < flt.until)
    if after is not None:
        at, cid = after
        q = q.where(
            sa.or_(
                orders.c.created_at < at,
                sa.and_(orders.c.created_at == at, orders.c.client_order_id < cid),
            )
        )
    q = q.order_by(orders.c.created_at.desc(), orders.c.client_order_id.desc()).limit(n)
    return [{str(k): v for k, v in r._mapping.items()} for r in conn.execute(q)]


def _rows_of(conn: Connection, cids: list[str]) -> dict[str, dict[str, Any]]:
    """The database's rows of these orders (those it has), by client id."""
    q = sa.select(orders).where(orders.c.client_order_id.in_(cids))
    return {
        str(r.client_order_id): {str(k): v for k, v in r._mapping.items()} for r in conn.execute(q)
    }
