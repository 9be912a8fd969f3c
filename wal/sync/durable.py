"""``DurableDatabaseManager``: any DatabaseManager, with its critical calls made durable.

Composition, not modification: the wrapped manager is untouched. The critical operations
(``wal.entry.OperationType``: balance updates, trades, positions, sessions) go through the
log and the ``WALManager``; every other attribute is forwarded as it is (``__getattr__``).

* Ids (trade, position, session) are made before the entry is logged, when the caller did
  not give one (``wal.sync.calls``): an operation logged during an outage can be referred to
  by the next one, and a replay reuses the same id.
* Positional arguments are bound to the wrapped method's parameter names before logging,
  so the log holds keyword arguments only (readable, and the read overlay can find
  ``account``, ``delta`` and ``position_id`` whatever the call style).
* ``get_balance()`` and ``get_open_positions()`` include pending entries (``wal.sync.reads``
  on ``wal.sync.overlay``).
* ``WAL_ENABLED=false`` (``WALConfig.enabled``) makes it a plain pass-through.

With the bundled ``wal.db.manager.DatabaseManager`` (it has ``apply`` and the ``wal_applied``
ledger) every operation reaches the database exactly once. A manager of your own without
``apply`` gets at-least-once; to opt in to exactly-once, give it an ``apply(entries)`` that
commits each entry's effect with a ledger row in one transaction (see docs/database.md).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from wal.config import WALConfig
from wal.crashpoints import crash_point
from wal.db.classify import describe_error
from wal.db.manager import DatabaseManager
from wal.db.schema import valid_money
from wal.entry import OperationType, WALEntry, WALEntryStatus, utc_now
from wal.errors import WALArgumentError, WALDatabaseError
from wal.log.storage import WALStorage
from wal.money import exact, in_money_context
from wal.sync.calls import (
    ID_PARAMS,
    DurableBalanceTxn,
    check_call,
    check_same_database,
    check_same_request,
    prepare_call,
)
from wal.sync.manager import Receipt, WALManager
from wal.sync.overlay import Overlay
from wal.sync.reads import PendingReads

__all__ = ["DurableBalanceTxn", "DurableDatabaseManager"]

_T = TypeVar("_T")


class DurableDatabaseManager:
    """Wrap ``db``; ``start()`` before trading, ``stop()`` after.

    >>> from wal.db.manager import DatabaseManager  # doctest: +SKIP
    >>> ddb = DurableDatabaseManager(DatabaseManager("sqlite:///data/atb.db"))  # doctest: +SKIP
    """

    def __init__(
        self,
        db: Any,
        *,
        config: WALConfig | None = None,
        storage: WALStorage | None = None,
        manager: WALManager | None = None,
    ) -> None:
        self._db = db
        self.config = config if config is not None else WALConfig.from_env()
        if config is not None:
            check_same_database(db, config)
        self.enabled = self.config.enabled
        self._owns_db = False  # from_config: stop() disposes the engine it made
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._reads: PendingReads | None = None
        self._account_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._owns_storage = storage is None and manager is None
        self.storage: WALStorage | None
        self.manager: WALManager | None
        if not self.enabled:
            self.storage = None
            self.manager = None
            return
        if manager is not None:
            self.manager = manager
            self.storage = manager.storage
        else:
            self.storage = storage or WALStorage(
                self.config.directory, self.config.storage_options()
            )
            self.manager = WALManager(self.storage, db, self.config)
        # Every entry pending in the log now may already be in the database (a crash between
        # its COMMIT and the COMPLETED mark, or a power loss of marks written with
        # durable=False): counted, and maybe applied until the ledger says otherwise.
        overlay = Overlay(open_lsn=self.storage.last_lsn)
        overlay.track_open(self.storage.get_pending_entries())
        self.manager.add_write_hook(overlay.on_write)
        self.manager.add_apply_observer(overlay)
        self.manager.add_step_aside(overlay.pause_for_reads)  # reads first (Overlay's doc)
        self._reads = PendingReads(db, self.manager, overlay)

    @classmethod
    def from_config(cls, config: WALConfig | None = None) -> DurableDatabaseManager:
        """The bundled ``DatabaseManager`` on ``config.database_url``, wrapped: the URL is
        given once. ``config`` defaults to ``WALConfig.from_env()`` (reads ``os.environ``).
        ``stop()`` disposes the engine made here."""
        cfg = config if config is not None else WALConfig.from_env()
        ddb = cls(DatabaseManager(cfg.database_url), config=cfg)
        ddb._owns_db = True
        return ddb

    @property
    def db(self) -> Any:
        """The wrapped DatabaseManager."""
        return self._db

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start replaying pending entries (the log was recovered when it was opened).

        Refuses (``WALSchemaError``, naming ``atb db upgrade``) a reachable database whose
        schema is not the code's: its entries would only wait in the log."""
        check = getattr(self._db, "check_schema", None)  # the bundled DatabaseManager's
        if check is not None:
            check()
        if self.manager is not None:
            # the database may have lost its last commits (a backup, a lagging replica): the
            # COMPLETED entries it lacks go back in before anything newer and before any read
            self.manager.reapply_lost()
            self.manager.start()

    def stop(self, timeout: float | None = 10.0, *, drain: bool = False) -> int:
        """Stop the sync thread and close the log; pending entries stay durable in it.

        ``drain=True`` first applies what is pending, for up to ``timeout`` seconds (see
        ``drain``). Returns how many entries are left pending. Then every pooled connection
        of the wrapped manager is closed (its ``dispose()``): a stopped engine holds no
        database connection (the manager stays usable: it reconnects on its next call).
        """
        left = 0
        if self.manager is not None:
            left = self.manager.stop(timeout, drain=drain)
        if self.storage is not None and self._owns_storage:
            self.storage.close()
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
        dispose = getattr(self._db, "dispose", None)
        if callable(dispose):
            dispose()  # the connections the sync thread and the reads opened
        return left

    def drain(self, timeout: float | None = None) -> int:
        """Apply every pending entry and wait: returns how many are left when ``timeout``
        seconds passed (0: all applied; ``timeout=0``: one pass; None: no limit). Retries
        with backoff while the database is unreachable; use it instead of polling
        ``get_wal_status()["pending"]``."""
        if self.manager is None:
            return 0
        return self.manager.drain(timeout)

    def find_by_idempotency_key(self, key: str) -> WALEntry | None:
        """The logged entry of the operation made with ``idempotency_key=key``, or None if
        it never reached the log (then it was never acknowledged: redo it). After a crash,
        ask this before redoing an operation whose acknowledgement you did not see.

        Once compaction (or a repair) removed entries, the log alone cannot say "never": a
        key it does not hold is looked up in the database's ledger (``wal_applied_keys``),
        and an applied one is returned as the ledger knows it (its id, operation and LSN,
        COMPLETED, no arguments: those went with the log's entry). If the database cannot be
        reached then, ``WALDatabaseError``: do not redo the operation, ask again later."""
        if self.storage is None:
            return None
        found = self.storage.find_by_idempotency_key(key)
        if found is not None or not self.storage.may_have_dropped():
            return found
        applied_key = getattr(self._db, "applied_key", None)
        if applied_key is None:  # a database manager without the ledger's lookup
            return None
        try:
            row = applied_key(key)
        except Exception as exc:
            raise WALDatabaseError(
                f"cannot tell whether idempotency key {key!r} was applied: the log no longer "
                "holds the entries compaction removed, and the database, whose ledger keeps "
                f"their keys, cannot be reached ({describe_error(exc)})",
                transient=True,
                hint="do not redo the operation yet: ask again once the database is back",
            ) from exc
        if row is None:
            return None
        entry_id, lsn, operation, applied_at = row
        at = applied_at if isinstance(applied_at, datetime) else utc_now()
        return WALEntry(
            entry_id=uuid.UUID(entry_id),
            operation=operation,
            args=(),
            kwargs={},
            idempotency_key=key,
            checksum="",
            created_at=at,
            lsn=lsn,
            synced_at=at,
            status=WALEntryStatus.COMPLETED,
        )

    def __enter__(self) -> DurableDatabaseManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def get_wal_status(self) -> dict[str, Any]:
        """The manager's stats plus the log's (for monitoring); ``{"enabled": False}`` if off."""
        if self.manager is None or self.storage is None:
            return {"enabled": False}
        return {
            "enabled": True,
            **self.manager.get_stats(),
            "storage": self.storage.get_stats().to_dict(),
        }

    def force_sync(self) -> dict[str, Any]:
        if self.manager is None:
            return {"enabled": False}
        return self.manager.force_sync().to_dict()

    # ------------------------------------------------------------------ critical calls

    def _critical(
        self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], key: str | None
    ) -> tuple[dict[str, Any], Receipt | None, Any]:
        """Bind, fill the id, log and apply. Returns (logged kwargs, receipt, direct result)."""
        method = getattr(self._db, op)
        filled: set[str] = set()
        params = prepare_call(method, op, args, kwargs, key, filled)
        if self.manager is None:
            return params, None, method(**params)
        receipt = self.manager.write(op, idempotency_key=key, **params)
        if receipt.duplicate and key is not None:
            # a retry answers the first call (its id), or is refused: never taken for it
            check_same_request(op, key, params, filled, receipt)
            id_param = ID_PARAMS.get(op)
            if id_param is not None and receipt.made_id is not None:
                params[id_param] = receipt.made_id
        return params, receipt, receipt.result

    def atomic_balance_update(
        self,
        delta: Decimal | None = None,
        *,
        reason: str = "",
        account: str = "default",
        idempotency_key: str | None = None,
    ) -> Any:
        """Add ``delta`` durably and return the new balance (pending entries included), or
        None when that balance is not known yet (the database has not been reachable since
        this process started); the update itself is durable either way.

        Without ``delta``: a context manager yielding a ``DurableBalanceTxn``::

            with ddb.atomic_balance_update(account="default") as t:
                t.add(-fee, reason="fee")
        """
        if delta is None:
            return self._balance_txn(account, reason, idempotency_key)
        if not isinstance(delta, Decimal):
            raise WALArgumentError(
                "atomic_balance_update",
                "delta",
                f"{delta!r} is a {type(delta).__name__}; pass money as Decimal",
            )
        if self.manager is None:
            return self._db.atomic_balance_update(delta, reason=reason, account=account)
        self._check_new_balance(account, delta)
        params: dict[str, Any] = {"delta": delta, "reason": reason, "account": account}
        receipt = self.manager.write(
            OperationType.BALANCE_UPDATE, idempotency_key=idempotency_key, **params
        )
        if receipt.duplicate and idempotency_key is not None:
            # a retry answers the first call, or is refused: never taken for it
            check_same_request(
                OperationType.BALANCE_UPDATE.value, idempotency_key, params, set(), receipt
            )
        crash_point("durable.after_write_before_read")  # durable; the caller not yet answered
        known = self._known_balance(receipt, account)
        return known if known is not None else self._read_new_balance(account)

    def _known_balance(self, receipt: Receipt, account: str) -> Decimal | None:
        """The new balance after ``receipt``'s update without a database round trip: the
        apply's result (inline), else the balance this process knows (its last read of the
        database plus every entry logged since, this one included: exact whatever the
        applier did meanwhile). None when no balance is known yet."""
        if receipt.applied and receipt.result is not None and not receipt.duplicate:
            result: Decimal = receipt.result
            return result
        assert self._reads is not None
        return self._reads.estimate(account)

    def _read_new_balance(self, account: str) -> Decimal | None:
        """The new balance read once from the database (then known), or None when it
        cannot be reached: the update is durable, and raising now would invite a retry that
        doubles it."""
        try:
            return self.get_balance(account)
        except WALDatabaseError:
            return None

    @exact
    def _check_new_balance(self, account: object, delta: Decimal) -> None:
        """Refuse, before logging, an update whose new balance the column could not hold (as
        this process knows the balance: no database read); the database would refuse it."""
        if self._reads is None or not isinstance(account, str):
            return  # a bad account is refused by the argument checks
        known = self._reads.estimate(account)
        if known is None or not delta.is_finite():
            return
        try:
            valid_money(known + delta, "the new balance")
        except ValueError as exc:
            raise WALArgumentError("atomic_balance_update", "delta", str(exc)) from None

    @contextmanager
    def _balance_txn(
        self, account: str, reason: str, key: str | None
    ) -> Iterator[DurableBalanceTxn]:
        with self._account_lock(account):
            txn = DurableBalanceTxn(account, self.get_balance(account))
            yield txn
            if txn.delta:
                why = "; ".join(txn.reasons) or reason
                self.atomic_balance_update(
                    txn.delta, reason=why, account=account, idempotency_key=key
                )

    def _account_lock(self, account: str) -> threading.Lock:
        with self._locks_guard:
            return self._account_locks.setdefault(account, threading.Lock())

    def log_trade(self, *args: Any, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        """Log a trade durably; returns its ``trade_id`` (made here if not given)."""
        params, _, result = self._critical("log_trade", args, kwargs, idempotency_key)
        return params.get("trade_id", result)

    def log_position(self, *args: Any, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        """Open a position durably; returns its ``position_id`` (made here if not given)."""
        params, _, result = self._critical("log_position", args, kwargs, idempotency_key)
        return params.get("position_id", result)

    def update_position(self, *args: Any, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        return self._critical("update_position", args, kwargs, idempotency_key)[2]

    def close_position(self, *args: Any, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        return self._critical("close_position", args, kwargs, idempotency_key)[2]

    def create_trading_session(
        self, *args: Any, idempotency_key: str | None = None, **kwargs: Any
    ) -> Any:
        """Start a session durably; returns its ``session_id`` (made here if not given)."""
        params, _, result = self._critical("create_trading_session", args, kwargs, idempotency_key)
        return params.get("session_id", result)

    def end_trading_session(
        self, *args: Any, idempotency_key: str | None = None, **kwargs: Any
    ) -> Any:
        return self._critical("end_trading_session", args, kwargs, idempotency_key)[2]

    # the order journal (wal.orders.OrderJournal writes these; keys are the client order id,
    # "<client order id>:<seq>" and "fill:<execution id>", so a retried write is one entry)

    def record_order_intent(self, *, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        """Journal an order intent durably (the ``orders`` row, PENDING, and event 1);
        returns its client order id."""
        params, _, result = self._critical("record_order_intent", (), kwargs, idempotency_key)
        return params.get("client_order_id", result)

    def record_order_event(self, *, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        """Journal an order's state change durably."""
        return self._critical("record_order_event", (), kwargs, idempotency_key)[2]

    def record_order_fill(self, *, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        """Journal an execution durably, with the trade and position change it makes."""
        return self._critical("record_order_fill", (), kwargs, idempotency_key)[2]

    def record_order_anchor(self, *, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        """Critical: an anchor (seq, hash) of the order audit chain (``wal.orders.audit``)."""
        return self._critical("record_order_anchor", (), kwargs, idempotency_key)[2]

    def journal_orders(self, calls: list[tuple[str, dict[str, Any], str | None]]) -> None:
        """Journal order operations ``(method name, kwargs, idempotency key)`` durably as ONE
        group commit (one fsync), in order, without applying them in this thread: the sync
        thread applies them; ``OrderJournal`` and ``get_open_positions`` read them from the
        log meanwhile. The order journal's write path: the caller waits for the log only."""
        if self.manager is None:
            for op, kwargs, key in calls:
                self._critical(op, (), kwargs, key)
            return
        for op, kwargs, _ in calls:
            check_call(self._db, op, kwargs)
        self.manager.write_deferred([(op, kwargs, key) for op, kwargs, key in calls])

    # ------------------------------------------------------------------ reads

    def get_balance(self, account: str = "default") -> Decimal:
        """The balance including every acknowledged operation exactly once, in every state
        (pending, being applied, applied but not yet marked in the log, after a crash). Does
        not wait for a drain. Raises ``WALDatabaseError`` only when the database has not been
        reachable since start (then the balance is unknown)."""
        if not isinstance(account, str) or not account or len(account) > 64:
            # refused here, not answered from the overlay's figures under another key
            raise WALArgumentError(
                "get_balance",
                "account",
                f"must be a non-empty str of at most 64 characters, "
                f"got {type(account).__name__} {account!r}",
            )
        if self._reads is None:
            return Decimal(self._db.get_balance(account))
        return self._reads.balance(account)

    def get_open_positions(self) -> list[dict[str, Any]]:
        """Open positions including pending opens, updates and closes (exactly once, as
        ``get_balance``)."""
        if self._reads is None:
            rows: list[dict[str, Any]] = self._db.get_open_positions()
            return rows
        return self._reads.open_positions()

    # ------------------------------------------------------------------ asyncio

    async def _in_thread(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a blocking call (fsync, database round trip) off the event loop."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    32, thread_name_prefix="wal-async", initializer=in_money_context
                )
            executor = self._executor
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    async def atomic_balance_update_async(
        self,
        delta: Decimal,
        *,
        reason: str = "",
        account: str = "default",
        idempotency_key: str | None = None,
    ) -> Decimal | None:
        """``atomic_balance_update(delta, ...)`` for asyncio: the same guarantees (durable
        before it returns, exactly once), the fsync and the database off the event loop.

        Applied behind, the entry joins the log's group commit on the loop
        (``WALManager.write_async``) and the new balance comes from what the process knows:
        no thread hop. A database read, when the balance is not known yet, runs in a thread."""
        if self.manager is None or not isinstance(delta, Decimal) or idempotency_key is not None:
            # the log off, a refusal, or a keyed write (its claim is held in a thread anyway)
            result: Decimal | None = await self._in_thread(
                self.atomic_balance_update,
                delta,
                reason=reason,
                account=account,
                idempotency_key=idempotency_key,
            )
            return result
        self._check_new_balance(account, delta)
        receipt = await self.manager.write_async(
            OperationType.BALANCE_UPDATE, delta=delta, reason=reason, account=account
        )
        crash_point("durable.after_write_before_read")  # durable; the caller not yet answered
        known = self._known_balance(receipt, account)
        if known is not None:
            return known
        return await self._in_thread(self._read_new_balance, account)

    async def _critical_async(
        self, op: str, id_param: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A critical call for asyncio: bound on the loop, logged through the log's group
        commit on the loop (``write_async``); a keyed call, or the log off, in a thread."""
        key = kwargs.pop("idempotency_key", None)
        if self.manager is None or key is not None:
            return await self._in_thread(getattr(self, op), *args, idempotency_key=key, **kwargs)
        params = prepare_call(getattr(self._db, op), op, args, kwargs)
        receipt = await self.manager.write_async(op, **params)
        return params.get(id_param, receipt.result) if id_param else receipt.result

    async def log_trade_async(self, *args: Any, **kwargs: Any) -> Any:
        """``log_trade`` for asyncio (see ``atomic_balance_update_async``)."""
        return await self._critical_async("log_trade", "trade_id", args, kwargs)

    async def log_position_async(self, *args: Any, **kwargs: Any) -> Any:
        """``log_position`` for asyncio."""
        return await self._critical_async("log_position", "position_id", args, kwargs)

    async def update_position_async(self, *args: Any, **kwargs: Any) -> Any:
        """``update_position`` for asyncio."""
        return await self._critical_async("update_position", None, args, kwargs)

    async def close_position_async(self, *args: Any, **kwargs: Any) -> Any:
        """``close_position`` for asyncio."""
        return await self._critical_async("close_position", None, args, kwargs)

    async def create_trading_session_async(self, *args: Any, **kwargs: Any) -> Any:
        """``create_trading_session`` for asyncio."""
        return await self._critical_async("create_trading_session", "session_id", args, kwargs)

    async def end_trading_session_async(self, *args: Any, **kwargs: Any) -> Any:
        """``end_trading_session`` for asyncio."""
        return await self._critical_async("end_trading_session", None, args, kwargs)

    async def get_balance_async(self, account: str = "default") -> Decimal:
        """``get_balance`` for asyncio (the same exactly-once read)."""
        return await self._in_thread(self.get_balance, account)

    async def get_open_positions_async(self) -> list[dict[str, Any]]:
        """``get_open_positions`` for asyncio."""
        return await self._in_thread(self.get_open_positions)

    async def drain_async(self, timeout: float | None = None) -> int:
        """``drain`` for asyncio."""
        return await self._in_thread(self.drain, timeout)

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found here: everything non-critical passes through
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._db, name)
