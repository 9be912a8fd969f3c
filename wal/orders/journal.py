"""``OrderJournal``: the order journal on the write-ahead log, and how to read it back.

Three critical operations carry it (``OperationType``), each fsynced in the log before
anything else happens and replayed exactly once into the reference database:

* ``record_order_intent``: the ``orders`` row (state PENDING) and its first event
  (``CREATED``, seq 1). Idempotency key: the client order id, so a second submit of the same
  intent is the same entry.
* ``record_order_event``: one ``order_events`` row and the order's new state.
  Key: ``<client id>:<seq>``.
* ``record_order_fill``: the ``fills`` row (keyed by execution key: a correction replaces
  it), the event, the order's filled quantity and average price, the ``trades`` row and the
  position change, in ONE database transaction. Key: ``fill:<execution id>``.

The audit chain (``wal.db.orders``): every event the journal writes (the intent's
``created``, each state change, each fill) gets the next ``audit_seq``, the previous event's
hash as ``prev_hash`` and its own ``hash``, computed here, once, under one lock per
``DurableDatabaseManager`` that also covers the append, so the log's order is the chain's
order and a replay writes the same chain. Every ``ANCHOR_EVERY`` events, and on ``anchor()``
(session end), an anchor (seq, hash) is journaled too. All order writes of a process must go
through ``OrderJournal`` for the chain to stay whole.

Reading: the database's rows with the log's pending order entries applied on top (the same
rules as the database, ``apply_entry``), read under the manager's apply lock so every entry
counts once; while the database is unreachable, the state kept from the last fresh read plus
every entry written since (the write hook), as ``wal.overlay`` does for balances.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from wal import DurableDatabaseManager, OperationType, WALDatabaseError, WALEntry
from wal.db.classify import is_transient
from wal.db.orders import ANCHOR_EVERY, GENESIS_HASH, audit_hash
from wal.orders.models import Fill, Order, OrderEvent, OrderIntent
from wal.orders.states import EventKind, OrderState

__all__ = ["ORDER_OPERATIONS", "OrderJournal", "apply_entry", "read_journal"]

_T = TypeVar("_T")
_INTENT = OperationType.ORDER_INTENT.value
_EVENT = OperationType.ORDER_EVENT.value
_FILL = OperationType.ORDER_FILL.value
_ANCHOR = OperationType.ORDER_ANCHOR.value
ORDER_OPERATIONS = frozenset({_INTENT, _EVENT, _FILL})
_AUDIT = ("audit_seq", "prev_hash", "hash")


class _Chain:
    """The audit chain's head for one ``DurableDatabaseManager`` (shared by its journals)."""

    def __init__(self, ddb: DurableDatabaseManager) -> None:
        self.lock = threading.RLock()  # held across computing the link and appending it
        self.seq: int | None = None  # None: not read yet
        self.hash = GENESIS_HASH
        if ddb.manager is not None:
            ddb.manager.add_write_hook(self.on_write)

    def on_write(self, entry: WALEntry) -> None:
        seq = entry.kwargs.get("audit_seq")
        fresh = isinstance(seq, int) and (self.seq is None or seq > self.seq)
        if entry.operation in ORDER_OPERATIONS and fresh:
            self.seq, self.hash = int(str(seq)), str(entry.kwargs["hash"])

    def head(self, ddb: DurableDatabaseManager) -> tuple[int, str]:
        """(seq, hash) of the last event: the database's head, or a pending entry's above it."""
        if self.seq is None:
            m = ddb.manager
            if m is None:
                seq, h = ddb.db.get_audit_head()
            else:
                with m.apply_lock:
                    seq, h = ddb.db.get_audit_head()
                    storage = ddb.storage
                    for e in storage.get_pending_entries() if storage is not None else []:
                        s = e.kwargs.get("audit_seq")
                        if e.operation in ORDER_OPERATIONS and isinstance(s, int) and s > seq:
                            seq, h = s, str(e.kwargs["hash"])
            if self.seq is None:
                self.seq, self.hash = seq, h
        return self.seq, self.hash


_CHAINS: weakref.WeakKeyDictionary[DurableDatabaseManager, _Chain] = weakref.WeakKeyDictionary()
_CHAINS_LOCK = threading.Lock()


def _chain_of(ddb: DurableDatabaseManager) -> _Chain:
    with _CHAINS_LOCK:
        chain = _CHAINS.get(ddb)
        if chain is None:
            chain = _CHAINS[ddb] = _Chain(ddb)
        return chain


def _dec(v: Any) -> Decimal | None:
    return None if v is None else v if isinstance(v, Decimal) else Decimal(str(v))


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
            for k in (
                "client_order_id",
                "symbol",
                "side",
                "quantity",
                "order_type",
                "limit_price",
                "stop_price",
                "time_in_force",
                "account",
                "created_at",
            )
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


class OrderJournal:
    """Writes order entries through a ``DurableDatabaseManager``; reads them back (module
    docstring). The writes are blocking (an fsync); the ``a*`` methods run them in a worker
    thread so the event loop never waits on the disk."""

    def __init__(self, ddb: DurableDatabaseManager) -> None:
        self.ddb = ddb
        self._lock = threading.Lock()
        self._kept: dict[str, dict[str, Any]] | None = None  # None: no fresh read yet
        self._kept_wm = 0
        if ddb.manager is not None:
            ddb.manager.add_write_hook(self._on_write)

    # ------------------------------------------------------------------ writing

    def record_intent(self, intent: OrderIntent) -> None:
        """Journal the intent (fsynced on return): the order exists, PENDING, nothing sent."""
        d = intent
        event = {
            "client_order_id": d.client_order_id,
            "seq": 1,
            "kind": EventKind.CREATED.value,
            "state": OrderState.PENDING.value,
            "at": d.created_at,
            "broker_order_id": None,
            "detail": None,
        }
        self._chained(
            event,
            lambda audit: self.ddb.record_order_intent(
                client_order_id=d.client_order_id,
                symbol=d.symbol,
                side=d.side,
                quantity=d.quantity,
                order_type=d.order_type,
                limit_price=d.limit_price,
                stop_price=d.stop_price,
                time_in_force=d.time_in_force,
                account=d.account,
                created_at=d.created_at,
                idempotency_key=d.client_order_id,
                **audit,
            ),
        )

    def record_event(self, ev: OrderEvent, reason: str | None = None) -> None:
        """Journal one state change (fsynced on return)."""
        event = {
            "client_order_id": ev.client_order_id,
            "seq": ev.seq,
            "kind": ev.kind.value,
            "state": ev.state.value,
            "at": ev.at,
            "broker_order_id": ev.broker_order_id,
            "detail": reason,
        }
        self._chained(
            event,
            lambda audit: self.ddb.record_order_event(
                client_order_id=ev.client_order_id,
                seq=ev.seq,
                kind=ev.kind.value,
                state=ev.state.value,
                at=ev.at,
                broker_order_id=ev.broker_order_id,
                reason=reason,
                idempotency_key=f"{ev.client_order_id}:{ev.seq}",
                **audit,
            ),
        )

    def record_fill(self, fill: Fill, **computed: Any) -> None:
        """Journal one execution and everything it changes, as one entry (fsynced)."""
        event = {
            "client_order_id": fill.client_order_id,
            "seq": computed["seq"],
            "kind": computed["kind"],
            "state": computed["state"],
            "at": fill.executed_at,
            "broker_order_id": fill.broker_order_id,
            "detail": fill.execution_id,
        }
        self._chained(
            event,
            lambda audit: self.ddb.record_order_fill(
                execution_id=fill.execution_id,
                client_order_id=fill.client_order_id,
                broker_order_id=fill.broker_order_id,
                symbol=fill.symbol,
                side=fill.side,
                quantity=fill.quantity,
                price=fill.price,
                executed_at=fill.executed_at,
                idempotency_key=f"fill:{fill.execution_id}",
                **computed,
                **audit,
            ),
        )

    def anchor(self, reason: str = "session_end") -> tuple[int, str] | None:
        """Journal an anchor (seq, hash) at the chain's head (session end: a cut-off tail is
        then detected); the anchor, or None if the chain is empty."""
        chain = _chain_of(self.ddb)
        with chain.lock:
            seq, h = chain.head(self.ddb)
            if seq == 0:
                return None
            self._record_anchor(seq, h, reason)
            return seq, h

    def _record_anchor(self, seq: int, h: str, reason: str) -> None:
        self.ddb.record_order_anchor(
            seq=seq, hash=h, at=datetime.now(UTC), reason=reason, idempotency_key=f"anchor:{seq}"
        )

    def _chained(self, event: dict[str, Any], write: Callable[[dict[str, Any]], Any]) -> None:
        """Write ``event`` as the chain's next link (the lock covers the append: the log's
        order is the chain's order); anchor every ``ANCHOR_EVERY`` events."""
        chain = _chain_of(self.ddb)
        with chain.lock:
            seq, prev = chain.head(self.ddb)
            link = audit_hash(event | {"audit_seq": seq + 1}, prev)
            write({"audit_seq": seq + 1, "prev_hash": prev, "hash": link})
            if self.ddb.manager is None:  # no log, no write hook: the call applied it
                chain.seq, chain.hash = seq + 1, link
            new_seq, new_hash = chain.head(self.ddb)
            if new_seq == seq + 1 and new_seq % ANCHOR_EVERY == 0:
                self._record_anchor(new_seq, new_hash, f"every_{ANCHOR_EVERY}")

    async def arecord_intent(self, intent: OrderIntent) -> None:
        await asyncio.to_thread(self.record_intent, intent)

    async def arecord_event(self, ev: OrderEvent, reason: str | None = None) -> None:
        await asyncio.to_thread(self.record_event, ev, reason)

    async def arecord_fill(self, fill: Fill, **computed: Any) -> None:
        await asyncio.to_thread(lambda: self.record_fill(fill, **computed))

    async def aanchor(self, reason: str = "session_end") -> tuple[int, str] | None:
        return await asyncio.to_thread(self.anchor, reason)

    # ------------------------------------------------------------------ reading

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
