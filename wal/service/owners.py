"""Which trader owns which order, and the ``Idempotency-Key`` each was placed under.

The client order id of a service order is made from the trader and the key
(``client_order_id_for``: the first 32 hex chars of SHA-256(trader NUL key)), so the same key
is the same order on every retry, after any restart, with no lookup needed to name it; the
``service_orders`` row (its owner, key, request hash, bracket levels) is committed before the
order is journaled, so a journaled service order always has its owner. ``claim`` refuses a
key already used with another request body.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from wal.db.classify import is_transient
from wal.db.engine import READ_ONLY
from wal.db.service_schema import service_orders
from wal.entry import utc_now

__all__ = ["CHILD_KEY_PREFIX", "OwnerRow", "OwnerStore", "client_order_id_for"]

# the key of a bracket child's row (``wal.service.brackets``): "bracket/<parent>/<kind>/<gen>";
# "/" is not allowed in an Idempotency-Key, so a trader's key can never take a child's
CHILD_KEY_PREFIX = "bracket/"


def client_order_id_for(trader_id: str, idempotency_key: str) -> str:
    """The order's client id: a pure function of (trader, key); 32 chars of [0-9a-f]."""
    raw = f"{trader_id}\x00{idempotency_key}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True)
class OwnerRow:
    client_order_id: str
    trader_id: str
    idempotency_key: str
    request_sha256: str
    stop_loss: Decimal | None
    take_profit: Decimal | None

    @property
    def parent(self) -> str | None:
        """The parent's client id of a bracket child's row; None for a trader's own order."""
        if not self.idempotency_key.startswith(CHILD_KEY_PREFIX):
            return None
        return self.idempotency_key.split("/")[1]


class OwnerStore:
    """``service_orders`` with an in-memory copy (loaded once; every claim adds to it)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # the owner rows' inserts, one batch at a time
        self._queued: list[_Claim] = []  # claims waiting for the writer (``claim``)
        self._rows: dict[str, OwnerRow] = {}
        self._by_trader: dict[str, list[str]] = {}
        self._children: dict[str, list[str]] = {}  # parent client id -> its bracket children

    def load(self) -> None:
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})  # a read: no SQLite write lock
            rows = conn.execute(sa.select(service_orders).order_by(service_orders.c.created_at))
            for r in rows:
                self._remember(_row(r._mapping))

    def _remember(self, row: OwnerRow) -> None:
        with self._lock:
            if row.client_order_id not in self._rows:
                self._by_trader.setdefault(row.trader_id, []).append(row.client_order_id)
                parent = row.parent
                if parent is not None:
                    self._children.setdefault(parent, []).append(row.client_order_id)
            self._rows[row.client_order_id] = row

    def get(self, client_order_id: str) -> OwnerRow | None:
        with self._lock:
            return self._rows.get(client_order_id)

    def children_of(self, parent: str) -> list[OwnerRow]:
        """The bracket children claimed for ``parent`` (``wal.service.brackets``), oldest first."""
        with self._lock:
            return [self._rows[c] for c in self._children.get(parent, ())]

    def parents(self) -> list[OwnerRow]:
        """Every order placed with a stop_loss or take_profit (not the children)."""
        with self._lock:
            return [
                r
                for r in self._rows.values()
                if r.parent is None and (r.stop_loss is not None or r.take_profit is not None)
            ]

    def trader_of(self, client_order_id: str) -> str | None:
        row = self.get(client_order_id)
        return None if row is None else row.trader_id

    def orders_of(self, trader_id: str) -> list[str]:
        """The trader's client order ids, oldest first."""
        with self._lock:
            return list(self._by_trader.get(trader_id, ()))

    def claim(self, row: OwnerRow) -> OwnerRow:
        """Commit ``row`` (durable before the order is journaled) unless its client id has a
        row already; the row that holds the id either way.

        Group commit: the claims of concurrent orders wait for the one writer of this store,
        and the writer commits every claim queued by then in ONE transaction (one fsync), so
        a hundred traders placing orders at once do not queue one commit each. A batch that
        fails on a row made by an earlier run (or on anything else) is written again a row
        per transaction, each caller getting its own answer."""
        found = self.get(row.client_order_id)
        if found is not None:
            return found
        mine = _Claim(row)
        with self._lock:
            self._queued.append(mine)
        # one writer of this process at a time: concurrent claims queue here, not in
        # SQLite's busy wait (which gives up after the busy timeout: "database is locked")
        with self._write_lock:
            if mine.result is None and mine.error is None:  # no writer took it yet: take all
                with self._lock:
                    batch, self._queued = self._queued, []
                if mine not in batch:  # taken by a writer that was interrupted: mine alone
                    batch.append(mine)
                self._write(batch)
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result

    def _write(self, batch: list[_Claim]) -> None:
        """Commit the batch's rows: all in one transaction, else one by one (write lock held)."""
        if len(batch) > 1:
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(service_orders), [_values(c.row) for c in batch])
            except Exception as exc:
                if is_transient(exc):  # the database is unreachable: no row alone would do
                    for c in batch:
                        c.error = exc
                    return
                # a row an earlier run made, or another refusal: each row alone below, so
                # that each caller gets its own answer
            else:
                for c in batch:
                    self._remember(c.row)
                    c.result = c.row
                return
        for c in batch:
            try:
                c.result = self._write_one(c.row)
            except Exception as exc:
                c.error = exc  # raised to that claim's caller

    def _write_one(self, row: OwnerRow) -> OwnerRow:
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(service_orders).values(_values(row)))
        except sa_exc.IntegrityError:  # made by a run that died before we loaded: read it
            with self.engine.connect() as conn:
                conn.execution_options(**{READ_ONLY: True})  # a read: no SQLite write lock
                r = conn.execute(
                    sa.select(service_orders).where(
                        service_orders.c.client_order_id == row.client_order_id
                    )
                ).first()
            if r is None:
                raise
            row = _row(r._mapping)
        self._remember(row)
        return row

    def release(self, client_order_id: str) -> None:
        """Forget a claim whose order was refused before anything was journaled."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(service_orders).where(service_orders.c.client_order_id == client_order_id)
            )
        with self._lock:
            row = self._rows.pop(client_order_id, None)
            if row is not None:
                self._by_trader[row.trader_id].remove(client_order_id)
                if row.parent is not None:
                    self._children[row.parent].remove(client_order_id)


class _Claim:
    """One caller's row in the queue of claims, and its answer once a writer committed it."""

    __slots__ = ("error", "result", "row")

    def __init__(self, row: OwnerRow) -> None:
        self.row = row
        self.result: OwnerRow | None = None
        self.error: BaseException | None = None


def _values(row: OwnerRow) -> dict[str, Any]:
    return {
        "client_order_id": row.client_order_id,
        "trader_id": row.trader_id,
        "idempotency_key": row.idempotency_key,
        "request_sha256": row.request_sha256,
        "stop_loss": row.stop_loss,
        "take_profit": row.take_profit,
        "created_at": utc_now(),
    }


def _row(m: Any) -> OwnerRow:
    return OwnerRow(
        str(m["client_order_id"]),
        str(m["trader_id"]),
        str(m["idempotency_key"]),
        str(m["request_sha256"]),
        m["stop_loss"],
        m["take_profit"],
    )
