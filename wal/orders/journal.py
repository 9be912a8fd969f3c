"""``OrderJournal``: the order journal on the write-ahead log, its audit chain, its reads.

Three critical operations carry it (``OperationType``), each fsynced in the log before
anything else happens (several at once as one group commit) and applied exactly once to the
reference database by the sync thread, never by the writer
(``DurableDatabaseManager.journal_orders``), so a submit waits for the log only:

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
hash as ``prev_hash`` and its own ``hash`` (over the event and, for the created and fill
events, its ``content``: the order's intent, the fill; ``event_content``, carried in the log
entry), computed here, once, under one lock per
``DurableDatabaseManager`` that also covers the append, so the log's order is the chain's
order and a replay writes the same chain. Every ``ANCHOR_EVERY`` events, and on ``anchor()``
(session end), an anchor (seq, hash) is journaled too. All order writes of a process must go
through ``OrderJournal`` for the chain to stay whole.

Reading (``orders``, ``order``, ``events``, ``fills``) is :mod:`wal.orders.journal_reads`'s
``JournalReader``: the database's rows with the log's pending order entries applied on top
(the same rules as the database, ``apply_entry``), read under the manager's apply lock so
every entry counts once; while the database is unreachable, the state kept from the last
fresh read plus every entry written since. ``apply_entry``, ``read_journal`` and
``ORDER_OPERATIONS`` are importable from here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import weakref
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from wal import DurableDatabaseManager, OperationType, WALEntry
from wal.binding import KeywordShape
from wal.db.orders import ANCHOR_EVERY, GENESIS_HASH, audit_hash, fill_content, intent_content
from wal.db.orders import ORDER_OPERATIONS as _EFFECTS
from wal.orders.audit import append_digest, digest_path
from wal.orders.errors import FillError
from wal.orders.journal_reads import ORDER_OPERATIONS, JournalReader, apply_entry, read_journal
from wal.orders.models import Fill, Order, OrderEvent, OrderIntent
from wal.orders.states import EventKind, OrderState

__all__ = [
    "ORDER_OPERATIONS",
    "FillCall",
    "OrderJournal",
    "apply_entry",
    "foreign_fill",
    "read_journal",
]

FillCall = tuple[str, dict[str, Any], str]  # a fill's journal call: operation, kwargs, key

log = logging.getLogger("wal.orders")

_INTENT = OperationType.ORDER_INTENT.value
_EVENT = OperationType.ORDER_EVENT.value
_FILL = OperationType.ORDER_FILL.value
_ANCHOR = OperationType.ORDER_ANCHOR.value


_RECENT_FILL_KEYS = 65_536  # execution keys of the fills written lately, kept in memory


class _Chain:
    """The audit chain's head for one ``DurableDatabaseManager`` (shared by its journals),
    and the execution keys of the fills written through it lately (key -> client id)."""

    def __init__(self, ddb: DurableDatabaseManager) -> None:
        self.lock = threading.RLock()  # held across computing the link and appending it
        self.seq: int | None = None  # None: not read yet
        self.hash = GENESIS_HASH
        # bounded: the log or the database names the owner of an older one (fill_owner);
        # this covers a fill written between another's check and its write
        self.fill_keys: OrderedDict[str, str] = OrderedDict()
        self.keys_lock = threading.Lock()  # a leaf lock: fill_keys only
        if ddb.manager is not None:
            ddb.manager.add_write_hook(self.on_write)

    def on_write(self, entry: WALEntry) -> None:
        seq = entry.kwargs.get("audit_seq")
        fresh = isinstance(seq, int) and (self.seq is None or seq > self.seq)
        if entry.operation in ORDER_OPERATIONS and fresh:
            self.seq, self.hash = int(str(seq)), str(entry.kwargs["hash"])
        if entry.operation == _FILL:
            self.remember_fill(entry.kwargs)

    def fill_key_owner(self, key: str) -> str | None:
        with self.keys_lock:
            return self.fill_keys.get(key)

    def remember_fill(self, kwargs: dict[str, Any]) -> None:
        key, cid = kwargs.get("execution_key"), kwargs.get("client_order_id")
        if isinstance(key, str) and isinstance(cid, str):
            with self.keys_lock:
                self.fill_keys[key] = cid
                self.fill_keys.move_to_end(key)
                while len(self.fill_keys) > _RECENT_FILL_KEYS:
                    self.fill_keys.popitem(last=False)

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


# each effect's parameters after ``conn``: a keyword call checked without Signature.bind
_SHAPES = {op: KeywordShape(inspect.signature(effect), skip=1) for op, effect in _EFFECTS.items()}


def _checked(
    calls: list[tuple[str, dict[str, Any], str]],
) -> list[tuple[str, dict[str, Any], str | None]]:
    """The calls, each checked against its database effect's parameters: a call the
    database would refuse for its arguments raises ``TypeError`` before anything is logged."""
    for op, kwargs, _ in calls:
        _SHAPES[op].bind_keywords(kwargs)  # bind's own TypeError for a bad argument
    return list(calls)


def _intent_call(d: OrderIntent) -> tuple[str, dict[str, Any], str]:
    """The ``record_order_intent`` call for an intent; its key is the client order id."""
    kwargs = {
        "client_order_id": d.client_order_id,
        "symbol": d.symbol,
        "side": d.side,
        "quantity": d.quantity,
        "order_type": d.order_type,
        "limit_price": d.limit_price,
        "stop_price": d.stop_price,
        "time_in_force": d.time_in_force,
        "account": d.account,
        "created_at": d.created_at,
    }
    if d.oco_group is not None:  # an entry without a group is what it was before the field
        kwargs["oco_group"] = d.oco_group  # journaled: a retry resends it, the chain covers it
    return _INTENT, kwargs, d.client_order_id


def _event_call(ev: OrderEvent, reason: str | None) -> tuple[str, dict[str, Any], str]:
    """The ``record_order_event`` call for an event; its key is ``<client id>:<seq>``."""
    kwargs = {
        "client_order_id": ev.client_order_id,
        "seq": ev.seq,
        "kind": ev.kind.value,
        "state": ev.state.value,
        "at": ev.at,
        "broker_order_id": ev.broker_order_id,
        "reason": reason,
    }
    return _EVENT, kwargs, f"{ev.client_order_id}:{ev.seq}"


def foreign_fill(kwargs: dict[str, Any], owner: object) -> FillError:
    """The error for a fill whose execution the journal holds for order ``owner``."""
    return FillError(
        f"execution {kwargs.get('execution_id')!r} (key {kwargs.get('execution_key')!r}) of "
        f"order {kwargs.get('client_order_id')} is journaled for order {owner} already: the "
        "broker reuses execution ids across orders; the fill was not journaled (the order "
        "stays as it was: reconcile it with the broker)"
    )


def _journaled(find: Any, call: tuple[str, dict[str, Any], str]) -> bool:
    """True when ``call``'s key is in the log already (a retry: left out). A fill's key is
    its execution id: the same id journaled for ANOTHER order is refused, never left out (the
    fill would be lost from the journal while the order books it): ``FillError``."""
    op, kwargs, key = call
    found: WALEntry | None = find(key)
    if found is None:
        return False
    if op == _FILL:
        cid, other = kwargs.get("client_order_id"), found.kwargs.get("client_order_id")
        if other != cid:
            raise foreign_fill(kwargs, other)
    return True


def _check_fill_keys(chain: _Chain, calls: list[tuple[str, dict[str, Any], str]]) -> None:
    """``FillError`` when a fill's execution key belongs to another order among the fills
    written lately (``_Chain.fill_keys``) or earlier in ``calls`` (the same write): the
    database would refuse it (a dead letter) while the order booked it in memory."""
    batch: dict[str, str] = {}
    for op, kwargs, _ in calls:
        if op != _FILL:
            continue
        key, cid = str(kwargs.get("execution_key")), str(kwargs.get("client_order_id"))
        owner = batch.get(key) or chain.fill_key_owner(key)
        if owner is not None and owner != cid:
            raise foreign_fill(kwargs, owner)
        batch[key] = cid


def _fill_call(fill: Fill, computed: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """The ``record_order_fill`` call for an execution; its key is ``fill:<execution id>``."""
    kwargs = {
        "execution_id": fill.execution_id,
        "client_order_id": fill.client_order_id,
        "broker_order_id": fill.broker_order_id,
        "symbol": fill.symbol,
        "side": fill.side,
        "quantity": fill.quantity,
        "price": fill.price,
        "executed_at": fill.executed_at,
        **computed,
    }
    return _FILL, kwargs, f"fill:{fill.execution_id}"


def event_content(op: str, kw: dict[str, Any]) -> str | None:
    """The content (chain format 2) of the event a journal call adds: the order's intent
    for ``record_order_intent``, the fill for ``record_order_fill``; None for a state
    change (its event row holds all of it). Carried in the log entry (``content``)."""
    if op == _INTENT:
        return intent_content(kw)
    if op == _FILL:
        return fill_content(kw)
    return None


def _audit_event(op: str, kw: dict[str, Any]) -> dict[str, Any]:
    """The event a journal call adds to the audit chain (what ``audit_hash`` covers, with
    its ``content``: ``event_content``)."""
    if op == _INTENT:
        return {
            "client_order_id": kw["client_order_id"],
            "seq": 1,
            "kind": EventKind.CREATED.value,
            "state": OrderState.PENDING.value,
            "at": kw["created_at"],
            "broker_order_id": None,
            "detail": None,
        }
    if op == _EVENT:
        return {
            "client_order_id": kw["client_order_id"],
            "seq": kw["seq"],
            "kind": kw["kind"],
            "state": kw["state"],
            "at": kw["at"],
            "broker_order_id": kw["broker_order_id"],
            "detail": kw["reason"],
        }
    return {  # a fill
        "client_order_id": kw["client_order_id"],
        "seq": kw["seq"],
        "kind": kw["kind"],
        "state": kw["state"],
        "at": kw["executed_at"],
        "broker_order_id": kw["broker_order_id"],
        "detail": kw["execution_id"],
    }


class OrderJournal:
    """Writes order entries through a ``DurableDatabaseManager``; reads them back (module
    docstring). The writes are blocking (an fsync); the ``a*`` methods run them in a worker
    thread so the event loop never waits on the disk."""

    def __init__(self, ddb: DurableDatabaseManager) -> None:
        self.ddb = ddb
        self._reader = JournalReader(ddb)  # the reads, with the state kept for an outage
        # the a* writes' batch (see arecord_submission): its loop, the queue, its writer task
        self._batch_loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[tuple[list[tuple[str, dict[str, Any], str]], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ writing

    # Every write is durable (fsynced in the log) on return and applied to the database by
    # the sync thread, not by the writer: a submit waits for the log, never for the database.

    def record_intent(self, intent: OrderIntent) -> None:
        """Journal the intent (fsynced on return): the order exists, PENDING, nothing sent."""
        self._write_chained([_intent_call(intent)])

    def record_submission(self, intent: OrderIntent, submitted: OrderEvent) -> None:
        """Journal the intent and its SUBMITTED event (seq 2) as one group commit: one fsync
        before the broker call. Both entries or neither are acknowledged; a torn group that
        kept only the intent leaves a PENDING order, which was never sent."""
        self._write_chained([_intent_call(intent), _event_call(submitted, None)])

    def record_event(self, ev: OrderEvent, reason: str | None = None) -> None:
        """Journal one state change (fsynced on return)."""
        self._write_chained([_event_call(ev, reason)])

    def record_fill(self, fill: Fill, **computed: Any) -> None:
        """Journal one execution and everything it changes, as one entry (fsynced)."""
        self._write_chained([_fill_call(fill, computed)])

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
        if self.ddb.manager is not None:  # a rewrite of both tables is caught by the digest
            append_digest(digest_path(self.ddb.config.directory), seq, h)

    def _write_chained(self, calls: list[tuple[str, dict[str, Any], str]]) -> None:
        """Journal ``calls`` as ONE group commit, each event the chain's next link.

        The chain lock covers computing the links and appending them, so the log's order is
        the chain's order. A call whose key is already in the log (a retry) is left out
        before the links are computed: a link is never made for an entry that is not
        written. The sync thread applies them (``DurableDatabaseManager.journal_orders``).
        Anchors every ``ANCHOR_EVERY`` events.
        """
        _checked(calls)  # a call the database would refuse: TypeError, nothing logged
        chain = _chain_of(self.ddb)
        with chain.lock:
            storage = self.ddb.storage
            if storage is not None:
                calls = [c for c in calls if not _journaled(storage.find_by_idempotency_key, c)]
            if not calls:
                return
            _check_fill_keys(chain, calls)
            seq, prev = chain.head(self.ddb)
            linked: list[tuple[str, dict[str, Any], str]] = []
            links: list[tuple[int, str]] = []
            for op, kwargs, key in calls:
                seq += 1
                content = event_content(op, kwargs)
                carried = {} if content is None else {"content": content}
                link = audit_hash(_audit_event(op, kwargs) | carried | {"audit_seq": seq}, prev)
                audit = {"audit_seq": seq, "prev_hash": prev, "hash": link}
                linked.append((op, {**kwargs, **carried, **audit}, key))
                links.append((seq, link))
                prev = link
            self.ddb.journal_orders(_checked(linked))
            if self.ddb.manager is None:  # no log, no write hook: the calls applied them
                chain.seq, chain.hash = seq, prev
                for op, kwargs, _ in linked:
                    if op == _FILL:
                        chain.remember_fill(kwargs)
            for s, h in links:
                if s % ANCHOR_EVERY == 0:
                    self._record_anchor(s, h, f"every_{ANCHOR_EVERY}")

    # The a* writes of one event loop are batched: every call made while a batch is being
    # written joins the next one, and a batch is ONE group commit (one fsync) in the order
    # the calls were made, so concurrent submits share an fsync instead of queueing on the
    # chain lock one fsync each. Each caller returns once its own entries are durable.

    async def arecord_intent(self, intent: OrderIntent) -> None:
        await self._awrite([_intent_call(intent)])

    async def arecord_submission(self, intent: OrderIntent, submitted: OrderEvent) -> None:
        await self._awrite([_intent_call(intent), _event_call(submitted, None)])

    async def arecord_event(self, ev: OrderEvent, reason: str | None = None) -> None:
        await self._awrite([_event_call(ev, reason)])

    async def arecord_fills(self, calls: list[FillCall]) -> None:
        """Several fills (``fill_call``) as one caller's calls: one group commit,
        acknowledged all or none."""
        await self._awrite(calls)

    def fill_call(self, fill: Fill, computed: dict[str, Any]) -> FillCall:
        """The journal call of a fill, checked: raises what writing it would raise before
        anything is written (a value the database would refuse)."""
        call = _fill_call(fill, computed)
        _checked([call])
        return call

    def event_call(self, ev: OrderEvent) -> FillCall:
        """The journal call of an event (no reason), checked, to be written with fills
        (``arecord_fills``): an acknowledgement and the fills it came with, one write."""
        call = _event_call(ev, None)
        _checked([call])
        return call

    async def _awrite(self, calls: list[tuple[str, dict[str, Any], str]]) -> None:
        """Queue ``calls`` for the loop's next batch; return once they are durable (or
        raise what writing them raised)."""
        _checked(calls)  # a call the database would refuse fails alone, before it is queued
        loop = asyncio.get_running_loop()
        if self._batch_loop is not loop:  # a journal used from a new loop: a new queue
            self._batch_loop, self._queued, self._writer = loop, [], None
        done: asyncio.Future[None] = loop.create_future()
        self._queued.append((calls, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_queued())
        await done

    async def _write_queued(self) -> None:
        """The loop's batch writer: one batch at a time, each one group commit."""
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                errors = await asyncio.to_thread(self._write_batch, [c for c, _ in batch])
            except BaseException as exc:  # cancelled (loop closing): nobody is left waiting
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                raise
            for (_, done), err in zip(batch, errors, strict=True):
                if done.done():
                    continue  # its caller was cancelled; the write happened all the same
                if err is None:
                    done.set_result(None)
                else:
                    done.set_exception(err)

    def _write_batch(
        self, batch: list[list[tuple[str, dict[str, Any], str]]]
    ) -> list[BaseException | None]:
        """Write the callers' calls as one group commit; each caller's error (None: durable).
        If the batch fails, each caller's calls are written alone so that a refused call
        fails only its own caller: safe, since a call whose key is already in the log is
        left out (``_write_chained``), and all or none of a group is acknowledged."""
        if len(batch) > 1:
            try:
                self._write_chained([c for calls in batch for c in calls])
                return [None] * len(batch)
            except Exception:
                pass  # written alone below: each caller gets its own answer
        errors: list[BaseException | None] = []
        for calls in batch:
            try:
                self._write_chained(calls)
                errors.append(None)
            except Exception as exc:
                errors.append(exc)
        return errors

    async def aanchor(self, reason: str = "session_end") -> tuple[int, str] | None:
        return await asyncio.to_thread(self.anchor, reason)

    def fill_owner_needs_database(self, *, shared_keys: bool = False) -> bool:
        """Whether ``fill_owner`` must ask the database: the log alone cannot say that no
        other order holds an execution key once it dropped entries (compaction, a repair:
        ``may_have_dropped``), nor when the broker's corrections make several execution ids
        share one key (``shared_keys``: a key is then not the entry's idempotency key)."""
        storage = self.ddb.storage
        return storage is not None and (shared_keys or storage.may_have_dropped())

    def fill_owner(
        self, execution_key: str, execution_id: str, *, shared_keys: bool = False
    ) -> str | None:
        """The client id of the order the journal holds this execution under, or None if
        none does (as far as can be told). The log first (the entry under ``fill:<execution
        id>``, the fills written lately); when the log cannot answer for the key
        (``fill_owner_needs_database``), the pending entries (shared keys only: the same id
        is found in the log) and the database's ``fills`` table, as the keyed writes ask the
        database's key ledger after compaction (``WALManager._applied_before``). A database
        that cannot be read is logged and decides nothing (None): the fill is written, and
        the database's own check refuses it at apply if it is another order's (a dead
        letter, ``atb wal failed``), as a keyed write written during an outage is skipped
        at apply. Blocking (a database read): call it in a worker thread."""
        storage = self.ddb.storage
        if storage is None:  # no log: every write applies at once, the database refuses it
            return None
        found = storage.find_by_idempotency_key(f"fill:{execution_id}")
        if found is not None:
            return str(found.kwargs.get("client_order_id"))
        recent = _chain_of(self.ddb).fill_key_owner(execution_key)
        if recent is not None or not self.fill_owner_needs_database(shared_keys=shared_keys):
            return recent
        lookup = getattr(self.ddb.db, "get_fill_owner", None)
        if lookup is None:  # a database manager of its own, without the lookup
            return None
        m = self.ddb.manager
        try:  # under the apply lock: an entry is pending or applied, never neither
            with m.apply_lock if m is not None else contextlib.nullcontext():
                if shared_keys:
                    for e in storage.get_pending_entries():
                        if e.operation == _FILL and e.kwargs.get("execution_key") == execution_key:
                            return str(e.kwargs.get("client_order_id"))
                owner: str | None = lookup(execution_key)
        except Exception as exc:
            log.warning(
                "execution key %r not checked against the database (%s): written; the "
                "database refuses it at apply if another order holds it",
                execution_key,
                exc,
            )
            return None
        return owner

    def knows(self, client_order_id: str) -> bool:
        """Whether the log holds an intent under this client id (pending or applied, until
        compaction drops it). Cheap: the log's key index, no database read, no lock."""
        storage = self.ddb.storage
        if storage is None:
            return False
        found = storage.find_by_idempotency_key(client_order_id)
        return found is not None and found.operation == _INTENT

    # ------------------------------------------------------------------ reading (journal_reads)

    def orders(self, *, open_only: bool = False) -> list[Order]:
        """Every order (or those not final), oldest first, pending entries included."""
        return self._reader.orders(open_only=open_only)

    def order(self, client_order_id: str) -> Order | None:
        """One order, pending entries included; None if the journal has no such order."""
        return self._reader.order(client_order_id)

    def events(self, client_order_id: str) -> list[dict[str, Any]]:
        """The order's events in seq order (pending ones included)."""
        return self._reader.events(client_order_id)

    def fills(
        self, *, client_order_id: str | None = None, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Fill rows (one per execution key; pending ones included), oldest first."""
        return self._reader.fills(client_order_id=client_order_id, since=since)
