"""``EventHub``: every journal event of a trader's orders, pushed to their WebSocket clients.

The source is the log's write hook: it sees each order entry once it is durable, in the
log's order, which is the audit chain's order (the journal appends under the chain lock), so
an event's ``seq`` is its ``audit_seq``: increasing, never reused, the same after a restart.
The hook runs on the writer's thread and only hands the event to the event loop
(``call_soon_threadsafe``): publishing never waits for a client.

Each client has a bounded queue (``Client``). ``publish`` puts without waiting; a full
queue disconnects that client with a reason (``CLOSE_OVERFLOW``) and the seq it got to, and
it resumes with ``?since=SEQ``. ``backlog(trader, since)`` reads what a client missed: the
recent events kept in memory, or the journal (database rows and pending log entries) when
they are older.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from wal import DurableDatabaseManager, OperationType, WALEntry
from wal.money import exact

__all__ = ["CLOSE_OVERFLOW", "Client", "EventHub", "event_from_entry", "event_from_row"]

log = logging.getLogger("wal.service")

CLOSE_OVERFLOW: Final = 4008  # the WebSocket close code of a client that fell behind
TOKEN_CHECK_S: Final = 1.0  # how often the open streams' tokens are read again (revocation)
_KEEP: Final = 10_000  # recent events kept for resumes without a database read
_INTENT = OperationType.ORDER_INTENT.value
_EVENT = OperationType.ORDER_EVENT.value
_FILL = OperationType.ORDER_FILL.value


@exact
def _j(v: Any) -> Any:
    if isinstance(v, Decimal):
        return format(v.normalize(), "f")
    if isinstance(v, datetime):
        return v.isoformat()
    return v


def event_from_entry(entry: WALEntry) -> dict[str, Any] | None:
    """The event a journal entry carries (None: not an order event, or no chain link)."""
    kw = entry.kwargs
    seq = kw.get("audit_seq")
    if not isinstance(seq, int):
        return None
    if entry.operation == _INTENT:
        ev = {"order_seq": 1, "kind": "created", "state": "pending", "at": kw["created_at"]}
        ev.update(broker_order_id=None, detail=None)
    elif entry.operation == _EVENT:
        ev = {"order_seq": kw["seq"], "kind": kw["kind"], "state": kw["state"], "at": kw["at"]}
        ev.update(broker_order_id=kw.get("broker_order_id"), detail=kw.get("reason"))
    elif entry.operation == _FILL:
        ev = {
            "order_seq": kw["seq"],
            "kind": kw["kind"],
            "state": kw["state"],
            "at": kw["executed_at"],
            "broker_order_id": kw.get("broker_order_id"),
            "detail": kw.get("execution_id"),
            "fill": {
                "execution_id": kw.get("execution_id"),
                "quantity": _j(kw.get("quantity")),
                "price": _j(kw.get("price")),
                "filled_quantity": _j(kw.get("filled_quantity")),
                "avg_fill_price": _j(kw.get("avg_fill_price")),
            },
        }
    else:
        return None
    return {"seq": seq, "client_order_id": kw["client_order_id"]} | {
        k: _j(v) for k, v in ev.items()
    }


def event_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """The event of an ``order_events`` row (the journal's read of it)."""
    return {
        "seq": int(row["audit_seq"]),
        "client_order_id": row["client_order_id"],
        "order_seq": int(row["seq"]),
        "kind": row["kind"],
        "state": row["state"],
        "at": _j(row["at"]),
        "broker_order_id": row.get("broker_order_id"),
        "detail": row.get("detail"),
    }


@dataclass(eq=False)
class Client:
    """One WebSocket subscriber: its trader, its bounded queue (``pending``, at most the
    hub's ``queue_size``) and one ``wake`` event its handler waits on: set when an event is
    queued, when the queue overflows, and when the client has gone (``leave``). The handler
    drains the queue on each wake: no task or wait is made per event."""

    trader_id: str
    token: str = ""  # the bearer token it connected with (the runtime's token watch)
    pending: deque[dict[str, Any]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False  # fell behind: its handler closes it with the seq to resume from
    gone: bool = False  # disconnected: its handler stops
    revoked: bool = False  # its token no longer verifies: its handler closes it, sending nothing
    last_seq: int = 0  # the last seq queued for it

    def leave(self) -> None:
        """The client disconnected: wake its handler to stop."""
        self.gone = True
        self.wake.set()

    def revoke(self) -> None:
        """Its token was revoked: wake its handler to close it before sending anything more."""
        self.revoked = True
        self.wake.set()


class EventHub:
    """Fans journal events out to clients (module docstring). ``owner_of(cid)`` names the
    trader of an order (None: not a service order: nobody is sent its events)."""

    def __init__(self, owner_of: Callable[[str], str | None], queue_size: int) -> None:
        self.owner_of = owner_of
        self.queue_size = queue_size
        self._clients: dict[str, set[Client]] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=_KEEP)
        self._recent_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ddb: DurableDatabaseManager | None = None
        self.published = 0
        self.overflows = 0
        self.head = 0  # the seq of the last event the log made durable

    def attach(self, ddb: DurableDatabaseManager, loop: asyncio.AbstractEventLoop) -> None:
        """Listen to ``ddb``'s log (its write hook) and publish on ``loop``."""
        self._ddb, self._loop = ddb, loop
        if ddb.manager is not None:
            ddb.manager.add_write_hook(self._on_write)

    def load_head(self) -> None:
        """Start ``head`` at the journal's last event (blocking: run in a thread)."""
        ddb = self._ddb
        if ddb is None:
            return
        seq, _ = ddb.db.get_audit_head()
        storage = ddb.storage
        for e in storage.get_pending_entries() if storage is not None else []:
            s = e.kwargs.get("audit_seq")
            if isinstance(s, int) and s > seq:
                seq = s
        with self._recent_lock:
            self.head = max(self.head, seq)

    def _on_write(self, entry: WALEntry) -> None:
        ev = event_from_entry(entry)  # on the writer's thread: build it, hand it over, return
        if ev is None or self._loop is None:
            return
        with self._recent_lock:
            self._recent.append(ev)
            self.head = max(self.head, int(ev["seq"]))
        with contextlib.suppress(RuntimeError):  # a closed loop: the service is stopping
            self._loop.call_soon_threadsafe(self.publish, ev)

    @property
    def clients(self) -> int:
        return sum(len(c) for c in self._clients.values())

    def subscribe(self, trader_id: str, token: str = "") -> Client:
        client = Client(trader_id, token)
        self._clients.setdefault(trader_id, set()).add(client)
        return client

    def all_clients(self) -> list[Client]:
        return [c for cs in self._clients.values() for c in cs]

    async def watch_tokens(self, live: Callable[[list[str]], set[str]]) -> None:
        """Every ``TOKEN_CHECK_S``, the open streams' tokens are read again (``live``: one
        read for all, in a thread): a stream whose token was revoked is closed before it is
        sent anything more. Runs until cancelled."""
        while True:
            await asyncio.sleep(TOKEN_CHECK_S)
            clients = self.all_clients()
            if not clients:
                continue
            try:
                alive = await asyncio.to_thread(live, [c.token for c in clients])
            except Exception as exc:  # the database is down: the streams stay as they are
                log.warning("event streams' tokens not checked: %s: %s", type(exc).__name__, exc)
                continue
            for c in clients:
                if c.token not in alive:
                    c.revoke()

    def unsubscribe(self, client: Client) -> None:
        self._clients.get(client.trader_id, set()).discard(client)

    def publish(self, ev: dict[str, Any]) -> None:
        """Queue ``ev`` for its trader's clients, never waiting; overflow disconnects."""
        self.published += 1
        trader = self.owner_of(str(ev["client_order_id"]))
        if trader is None:
            return
        for client in list(self._clients.get(trader, ())):
            self.offer(client, ev)

    def offer(self, client: Client, ev: dict[str, Any]) -> None:
        if client.overflowed or int(ev["seq"]) <= client.last_seq:
            return
        if len(client.pending) >= self.queue_size:
            self.overflows += 1
            client.overflowed = True  # its handler closes it with the seq to resume from
        else:
            client.pending.append(ev)
            client.last_seq = int(ev["seq"])
        client.wake.set()

    def backlog(self, trader_id: str, since: int) -> list[dict[str, Any]]:
        """The trader's events after ``since``, in seq order (blocking: run in a thread)."""
        with self._recent_lock:
            recent = list(self._recent)
        if recent and int(recent[0]["seq"]) <= since + 1:
            evs: Iterable[dict[str, Any]] = (e for e in recent if int(e["seq"]) > since)
        else:
            evs = self._from_journal(since)
        return [e for e in evs if self.owner_of(str(e["client_order_id"])) == trader_id]

    def _from_journal(self, since: int) -> list[dict[str, Any]]:
        """Every event after ``since``: the database's rows, then the log's pending entries.
        The rows are read without the apply lock (a resume from 0 reads the whole journal,
        and must not stop the sync thread meanwhile); under the lock, only the rows applied
        since then and the pending entries, from one instant: each entry once. The sync
        thread applies in the log's order, which is seq order: what it applied meanwhile
        comes after the last row read."""
        ddb = self._ddb
        if ddb is None:
            return []
        found: dict[int, dict[str, Any]] = {}

        def rows_after(after: int) -> int:
            while True:
                rows = ddb.db.get_audit_rows(after=after, limit=5000)
                if not rows:
                    return after
                for r in rows:
                    found[int(r["audit_seq"])] = event_from_row(r)
                after = int(rows[-1]["audit_seq"])

        after = rows_after(since)
        m = ddb.manager
        lock = m.apply_lock if m is not None else threading.Lock()
        with lock:  # the rows applied meanwhile and the pending entries, from one instant
            rows_after(after)
            storage = ddb.storage
            for e in storage.get_pending_entries() if storage is not None else []:
                ev = event_from_entry(e)
                if ev is not None and int(ev["seq"]) > since:
                    found.setdefault(int(ev["seq"]), ev)
        return [found[k] for k in sorted(found)]
