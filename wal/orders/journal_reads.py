"""Reading the order journal back: the database's rows with the log's pending order entries.

* ``apply_entry``: one pending order entry applied to order rows (and event and fill rows)
  the way the database applies it (the overlay's half of ``wal.db.orders``' effects).
* ``JournalReader``: ``OrderJournal``'s reads (``orders``, ``order``, ``events``, ``fills``).
  A fresh read is the database's rows plus the pending entries, under the manager's apply
  lock so every entry counts once; while the database is unreachable, the state kept from
  the last fresh read plus every entry written since (the write hook), as
  ``wal.sync.overlay`` does for balances.
* ``read_journal``: the journal as another process sees it (``atb orders``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from wal import DurableDatabaseManager, OperationType, WALDatabaseError, WALEntry
from wal.db.classify import is_transient
from wal.db.order_schema import INTENT_FIELDS, OPTIONAL_INTENT_FIELDS
from wal.orders.models import Order
from wal.orders.states import EventKind, OrderState

__all__ = ["ORDER_OPERATIONS", "JournalReader", "apply_entry", "read_journal"]

_T = TypeVar("_T")
_INTENT = OperationType.ORDER_INTENT.value
_EVENT = OperationType.ORDER_EVENT.value
_FILL = OperationType.ORDER_FILL.value
ORDER_OPERATIONS = frozenset({_INTENT, _EVENT, _FILL})
_AUDIT = ("audit_seq", "prev_hash", "hash", "content")  # the chain's fields (content: format 2)


def apply_entry(
    orders: dict[str, dict[str, Any]],
    entry: WALEntry,
    events: list[dict[str, Any]] | None = None,
    fills: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Apply one pending order entry to order rows (and event rows, fill rows by key) the way
    the database applies it: the overlay's half of ``wal.db_operations``' order effects."""
    kw = entry.kwargs
    cid = str(kw.get("client_order_id"))
    if entry.operation == _INTENT:
        row = {
            k: kw.get(k)
            # the orders row's
            for k in ("client_order_id", *INTENT_FIELDS, *OPTIONAL_INTENT_FIELDS, "created_at")
        }
        row.update(
            state=OrderState.PENDING.value,
            broker_order_id=None,
            filled_quantity=Decimal(0),
            avg_fill_price=None,
            reason=None,
            last_seq=1,
            updated_at=kw.get("created_at"),
        )
        orders.setdefault(cid, row)
        if events is not None:
            events.append(
                {
                    "client_order_id": cid,
                    "seq": 1,
                    "kind": EventKind.CREATED.value,
                    "state": OrderState.PENDING.value,
                    "at": kw.get("created_at"),
                    "broker_order_id": None,
                    "detail": None,
                }
                | {k: kw.get(k) for k in _AUDIT}
            )
        return
    row_ = orders.get(cid)
    if entry.operation == _EVENT:
        if row_ is not None:
            row_.update(state=kw["state"], last_seq=kw["seq"], updated_at=kw["at"])
            if kw.get("broker_order_id") is not None:
                row_["broker_order_id"] = kw["broker_order_id"]
            if kw.get("reason") is not None:
                row_["reason"] = kw["reason"]
        if events is not None:
            events.append(
                {
                    k: kw.get(k)
                    for k in ("client_order_id", "seq", "kind", "state", "at", "broker_order_id")
                }
                | {"detail": kw.get("reason")}
                | {k: kw.get(k) for k in _AUDIT}
            )
    elif entry.operation == _FILL:
        if row_ is not None:
            row_.update(
                state=kw["state"],
                last_seq=kw["seq"],
                updated_at=kw["executed_at"],
                filled_quantity=kw["filled_quantity"],
                avg_fill_price=kw["avg_fill_price"],
            )
            if kw.get("broker_order_id") is not None:
                row_["broker_order_id"] = kw["broker_order_id"]
        if events is not None:
            events.append(
                {
                    "client_order_id": cid,
                    "seq": kw["seq"],
                    "kind": kw["kind"],
                    "state": kw["state"],
                    "at": kw["executed_at"],
                    "broker_order_id": kw.get("broker_order_id"),
                    "detail": kw["execution_id"],
                }
                | {k: kw.get(k) for k in _AUDIT}
            )
        if fills is not None:
            fills[str(kw["execution_key"])] = {
                k: kw.get(k)
                for k in (
                    "execution_key",
                    "execution_id",
                    "client_order_id",
                    "broker_order_id",
                    "symbol",
                    "side",
                    "quantity",
                    "price",
                    "executed_at",
                    "trade_id",
                    "pnl",
                )
            }


class JournalReader:
    """The order journal's reads through a ``DurableDatabaseManager`` (module docstring)."""

    def __init__(self, ddb: DurableDatabaseManager) -> None:
        self.ddb = ddb
        self._lock = threading.Lock()
        self._kept: dict[str, dict[str, Any]] | None = None  # None: no fresh read yet
        self._kept_wm = 0
        if ddb.manager is not None:
            ddb.manager.add_write_hook(self._on_write)

    def orders(self, *, open_only: bool = False) -> list[Order]:
        """Every order (or those not final), oldest first, pending entries included."""
        rows = self._read(lambda: self._fresh_orders(None), lambda: self._kept_rows())
        out = [Order.from_row(r) for r in rows.values()]
        if open_only:
            out = [o for o in out if o.state.value not in _FINAL]
        return sorted(out, key=lambda o: (o.intent.created_at, o.client_order_id))

    def order(self, client_order_id: str) -> Order | None:
        """One order, pending entries included; None if the journal has no such order."""
        rows = self._read(lambda: self._fresh_orders(client_order_id), lambda: self._kept_rows())
        row = rows.get(client_order_id)
        return None if row is None else Order.from_row(row)

    def events(self, client_order_id: str) -> list[dict[str, Any]]:
        """The order's events in seq order (pending ones included)."""
        db = self.ddb.db

        def fresh() -> list[dict[str, Any]]:
            evs: list[dict[str, Any]] = list(db.get_order_events(client_order_id))
            orders: dict[str, dict[str, Any]] = {}
            for e in self._pending(lambda e: e.kwargs.get("client_order_id") == client_order_id):
                apply_entry(orders, e, events=evs)
            return sorted(evs, key=lambda r: int(r["seq"]))

        return self._read(fresh, lambda: None)

    def fills(
        self, *, client_order_id: str | None = None, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Fill rows (one per execution key; pending ones included), oldest first."""
        db = self.ddb.db

        def fresh() -> list[dict[str, Any]]:
            by_key = {
                str(r["execution_key"]): r
                for r in db.get_order_fills(client_order_id=client_order_id, since=since)
            }
            for e in self._pending(
                lambda e: (
                    e.operation == _FILL
                    and (
                        client_order_id is None
                        or e.kwargs.get("client_order_id") == client_order_id
                    )
                )
            ):
                apply_entry({}, e, fills=by_key)
            rows = [r for r in by_key.values() if since is None or r["executed_at"] >= since]
            return sorted(rows, key=lambda r: (r["executed_at"], r["execution_key"]))

        return self._read(fresh, lambda: None)

    # ------------------------------------------------------------------ internals

    def _pending(self, keep: Callable[[WALEntry], bool]) -> Iterable[WALEntry]:
        storage = self.ddb.storage
        if storage is None:
            return []
        return [
            e for e in storage.get_pending_entries() if e.operation in ORDER_OPERATIONS and keep(e)
        ]

    def _fresh_orders(self, only: str | None) -> dict[str, dict[str, Any]]:
        db = self.ddb.db
        storage = self.ddb.storage
        with self._lock:
            # the watermark under this lock: an entry the hook sees later is above it
            wm = storage.last_lsn if storage is not None else 0
            rows = [db.get_order_row(only)] if only is not None else list(db.get_order_rows())
            orders = {str(r["client_order_id"]): dict(r) for r in rows if r is not None}
            for e in self._pending(
                lambda e: only is None or e.kwargs.get("client_order_id") == only
            ):
                if e.lsn is not None and e.lsn <= wm:
                    apply_entry(orders, e)
            if only is None:
                self._kept, self._kept_wm = {k: dict(v) for k, v in orders.items()}, wm
            elif self._kept is not None and only in orders:
                self._kept[only] = dict(orders[only])
            return orders

    def _kept_rows(self) -> dict[str, dict[str, Any]] | None:
        with self._lock:
            return None if self._kept is None else {k: dict(v) for k, v in self._kept.items()}

    def _on_write(self, entry: WALEntry) -> None:
        if entry.operation not in ORDER_OPERATIONS:
            return
        with self._lock:
            if self._kept is not None and (entry.lsn or 0) > self._kept_wm:
                apply_entry(self._kept, entry)

    def _read(self, fresh: Callable[[], _T], kept: Callable[[], _T | None]) -> _T:
        """A fresh read under the apply lock; the kept state if the database is down."""
        m = self.ddb.manager
        try:
            if m is None:
                return fresh()
            with m.apply_lock:
                return fresh()
        except Exception as exc:
            if isinstance(exc, WALDatabaseError) and not exc.transient:
                raise
            if not _transient(exc):
                raise
            value = kept()
            if value is None:
                raise WALDatabaseError(
                    "the order journal cannot be read: the database is unreachable and no "
                    "earlier read of it is kept",
                    transient=True,
                ) from exc
            return value


_FINAL = frozenset(
    s.value
    for s in (
        OrderState.FILLED,
        OrderState.REJECTED,
        OrderState.CANCELLED,
        OrderState.SUBMIT_FAILED,
    )
)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, WALDatabaseError):
        return exc.transient
    return is_transient(exc)


def read_journal(
    db: Any, pending: Iterable[WALEntry], client_order_id: str | None = None
) -> tuple[list[Order], list[dict[str, Any]], list[dict[str, Any]]]:
    """The journal as another process sees it (``atb orders``): the database's rows with the
    log's pending order entries on top. Returns (orders, events, fills); events and fills
    only when ``client_order_id`` is given (that order's)."""
    mine = [
        e
        for e in pending
        if e.operation in ORDER_OPERATIONS
        and (client_order_id is None or e.kwargs.get("client_order_id") == client_order_id)
    ]
    if client_order_id is None:
        rows = {str(r["client_order_id"]): dict(r) for r in db.get_order_rows()}
        for e in mine:
            apply_entry(rows, e)
        orders = sorted(
            (Order.from_row(r) for r in rows.values()),
            key=lambda o: (o.intent.created_at, o.client_order_id),
        )
        return orders, [], []
    row = db.get_order_row(client_order_id)
    one = {} if row is None else {client_order_id: dict(row)}
    events = list(db.get_order_events(client_order_id))
    fills = {
        str(r["execution_key"]): r for r in db.get_order_fills(client_order_id=client_order_id)
    }
    for e in mine:
        apply_entry(one, e, events=events, fills=fills)
    return (
        [Order.from_row(r) for r in one.values()],
        sorted(events, key=lambda r: int(r["seq"])),
        sorted(fills.values(), key=lambda r: (r["executed_at"], r["execution_key"])),
    )
