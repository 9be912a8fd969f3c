"""``DurableDatabaseManager``: any DatabaseManager, with its critical calls made durable.

Composition, not modification: the wrapped manager is untouched. The critical operations
(``wal.entry.OperationType``: balance updates, trades, positions, sessions) go through the
log and the ``WALManager``; every other attribute is forwarded as it is (``__getattr__``).

* Ids (trade, position, session) are made here, before the entry is logged, when the caller
  did not give one: an operation logged during an outage can be referred to by the next one,
  and a replay reuses the same id.
* Positional arguments are bound to the wrapped method's parameter names before logging,
  so the log holds keyword arguments only (readable, and the read overlay can find
  ``account``, ``delta`` and ``position_id`` whatever the call style).
* ``get_balance()`` and ``get_open_positions()`` include pending entries (``wal.sync.overlay``).
* ``WAL_ENABLED=false`` (``WALConfig.enabled``) makes it a plain pass-through.

With the bundled ``wal.db.manager.DatabaseManager`` (it has ``apply`` and the ``wal_applied``
ledger) every operation reaches the database exactly once. A manager of your own without
``apply`` gets at-least-once; to opt in to exactly-once, give it an ``apply(entries)`` that
commits each entry's effect with a ledger row in one transaction (see docs/database.md).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from wal.config import WALConfig, mask_url
from wal.crashpoints import crash_point
from wal.db.engine import DEFAULT_URL
from wal.db.manager import DatabaseManager
from wal.entry import OperationType, WALEntry
from wal.errors import WALConfigError, WALDatabaseError, WALSerializationError
from wal.log.storage import WALStorage
from wal.sync.apply import transient_error
from wal.sync.breaker import BreakerState
from wal.sync.manager import Receipt, WALManager
from wal.sync.overlay import BalanceReader, Overlay, PositionsReader

__all__ = ["DurableBalanceTxn", "DurableDatabaseManager"]

_T = TypeVar("_T")

CRITICAL_OPERATIONS = frozenset(op.value for op in OperationType)
# The id parameter each creating operation gets filled in before it is logged.
_ID_PARAMS = {
    OperationType.LOG_TRADE.value: "trade_id",
    OperationType.LOG_POSITION.value: "position_id",
    OperationType.CREATE_TRADING_SESSION.value: "session_id",
}
# The time parameter filled in with "now" before logging, so that a replay hours later
# records when the operation happened, not when the database came back.
_TIME_PARAMS = {
    OperationType.LOG_TRADE.value: "executed_at",
    OperationType.LOG_POSITION.value: "opened_at",
    OperationType.CLOSE_POSITION.value: "closed_at",
    OperationType.CREATE_TRADING_SESSION.value: "started_at",
    OperationType.END_TRADING_SESSION.value: "ended_at",
}


def _reject_floats(op: str, params: dict[str, Any]) -> None:
    """Money is Decimal: a float would be logged and then refused by the database."""
    for name, value in params.items():
        if isinstance(value, float):
            raise WALSerializationError(
                f"{op}({name}=...)", f"{value!r} is a float; pass money as Decimal"
            )


class DurableBalanceTxn:
    """The context-manager form of ``atomic_balance_update``: read, decide, add.

    ``balance`` is the balance including pending entries, as of entering; ``add`` changes it.
    The net delta is logged as one balance update when the block exits without an exception.
    """

    def __init__(self, account: str, balance: Decimal) -> None:
        self.account = account
        self.balance = balance
        self.delta = Decimal(0)
        self.reasons: list[str] = []

    def add(self, delta: Decimal, reason: str = "") -> Decimal:
        if not isinstance(delta, Decimal):
            raise TypeError(f"delta must be a Decimal, got {type(delta).__name__}")
        self.delta += delta
        self.balance += delta
        if reason:
            self.reasons.append(reason)
        return self.balance


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
            _check_same_database(db, config)
        self.enabled = self.config.enabled
        self._owns_db = False  # from_config: stop() disposes the engine it made
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._overlay = Overlay()
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
        self._overlay = Overlay(open_lsn=self.storage.last_lsn)
        self._overlay.track_open(self.storage.get_pending_entries())
        self.manager.add_write_hook(self._overlay.on_write)
        self.manager.add_apply_observer(self._overlay)

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
        """Start replaying pending entries (the log was recovered when it was opened)."""
        if self.manager is not None:
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
        ask this before redoing an operation whose acknowledgement you did not see."""
        if self.storage is None:
            return None
        return self.storage.find_by_idempotency_key(key)

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
        bound = inspect.signature(method).bind(*args, **kwargs)
        params = dict(bound.arguments)
        for name, p in inspect.signature(method).parameters.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD and name in params:
                params.update(params.pop(name))
        accepted = inspect.signature(method).parameters
        id_param = _ID_PARAMS.get(op)
        if id_param is not None and id_param in accepted and params.get(id_param) is None:
            params[id_param] = str(uuid.uuid4())
        time_param = _TIME_PARAMS.get(op)
        if time_param is not None and time_param in accepted and params.get(time_param) is None:
            params[time_param] = datetime.now(UTC)
        _reject_floats(op, params)
        if self.manager is None:
            return params, None, method(**params)
        receipt = self.manager.write(op, idempotency_key=key, **params)
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
            raise WALSerializationError(
                "atomic_balance_update(delta=...)",
                f"{delta!r} is a {type(delta).__name__}; pass money as Decimal",
            )
        if self.manager is None:
            return self._db.atomic_balance_update(delta, reason=reason, account=account)
        receipt = self.manager.write(
            OperationType.BALANCE_UPDATE,
            idempotency_key=idempotency_key,
            delta=delta,
            reason=reason,
            account=account,
        )
        crash_point("durable.after_write_before_read")  # durable; the caller not yet answered
        if receipt.applied and receipt.result is not None and not receipt.duplicate:
            return receipt.result
        try:
            return self.get_balance(account)
        except WALDatabaseError:
            # the update is durable: raising now would invite a retry that doubles it
            return None

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
        """Journal an order intent durably (the ``orders`` row, PENDING, and event 1)."""
        return self._critical("record_order_intent", (), kwargs, idempotency_key)[2]

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
            if op not in CRITICAL_OPERATIONS:
                raise ValueError(f"{op!r} is not a critical operation")
            inspect.signature(getattr(self._db, op)).bind(**kwargs)  # refused before logging
            _reject_floats(op, kwargs)
        self.manager.write_deferred([(op, kwargs, key) for op, kwargs, key in calls])

    # ------------------------------------------------------------------ reads

    def get_balance(self, account: str = "default") -> Decimal:
        """The balance including every acknowledged operation exactly once, in every state
        (pending, being applied, applied but not yet marked in the log, after a crash). Does
        not wait for a drain. Raises ``WALDatabaseError`` only when the database has not been
        reachable since start (then the balance is unknown)."""
        if self.manager is None or self.storage is None:
            return Decimal(self._db.get_balance(account))
        return self._read_with_pending(
            lambda: self._overlay.fresh_balance(account, self._balance_reader(account)),
            lambda: self._overlay.kept_balance(account),
            f"the balance of account {account!r} is unknown: the database has not been "
            "reachable since this process started, so pending entries have no base",
        )

    def get_open_positions(self) -> list[dict[str, Any]]:
        """Open positions including pending opens, updates and closes (exactly once, as
        ``get_balance``)."""
        if self.manager is None or self.storage is None:
            rows: list[dict[str, Any]] = self._db.get_open_positions()
            return rows
        return self._read_with_pending(
            lambda: self._overlay.fresh_positions(self._positions_reader()),
            self._overlay.kept_positions,
            "open positions are unknown: the database has not been reachable since this "
            "process started",
        )

    def _snapshot_reads(self) -> bool:
        """The wrapped manager reads a figure and its ledger in one snapshot."""
        return callable(getattr(self._db, "get_balance_and_applied", None)) and callable(
            getattr(self._db, "get_open_positions_and_applied", None)
        )

    def _ledger(self, ids: list[str]) -> set[str]:
        applied_ids = getattr(self._db, "applied_ids", None)
        if not ids or not callable(applied_ids):
            return set()  # no ledger (at-least-once): pending entries count as pending
        return {str(x) for x in applied_ids(ids)}

    def _balance_reader(self, account: str) -> BalanceReader:
        if self._snapshot_reads():
            return lambda ids: self._db.get_balance_and_applied(account, ids)
        return lambda ids: (Decimal(self._db.get_balance(account)), self._ledger(ids))

    def _positions_reader(self) -> PositionsReader:
        if self._snapshot_reads():
            return lambda ids: self._db.get_open_positions_and_applied(ids)
        return lambda ids: (list(self._db.get_open_positions()), self._ledger(ids))

    def _read_with_pending(
        self, fresh: Callable[[], _T], kept: Callable[[], _T | None], unknown: str
    ) -> _T:
        """A fresh read (database + pending) unless the breaker is open and a kept state
        exists; the kept state when the database cannot be reached."""
        m = self.manager
        assert m is not None
        if kept() is None or m.breaker.state is not BreakerState.OPEN:
            try:
                if self._snapshot_reads():
                    return fresh()  # one snapshot: no need to wait for a batch
                with m.apply_lock:  # two separate reads: no batch may commit between them
                    return fresh()
            except Exception as exc:
                if not transient_error(exc):
                    raise
                m.breaker.failure()  # a read that cannot connect is evidence of an outage
        value = kept()
        if value is None:
            raise WALDatabaseError(unknown, transient=True)
        return value

    # ------------------------------------------------------------------ asyncio

    async def _in_thread(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a blocking call (fsync, database round trip) off the event loop."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(32, thread_name_prefix="wal-async")
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
        before it returns, exactly once), the fsync and the database off the event loop."""
        result: Decimal | None = await self._in_thread(
            self.atomic_balance_update,
            delta,
            reason=reason,
            account=account,
            idempotency_key=idempotency_key,
        )
        return result

    async def log_trade_async(self, *args: Any, **kwargs: Any) -> Any:
        """``log_trade`` for asyncio (see ``atomic_balance_update_async``)."""
        return await self._in_thread(self.log_trade, *args, **kwargs)

    async def log_position_async(self, *args: Any, **kwargs: Any) -> Any:
        """``log_position`` for asyncio."""
        return await self._in_thread(self.log_position, *args, **kwargs)

    async def update_position_async(self, *args: Any, **kwargs: Any) -> Any:
        """``update_position`` for asyncio."""
        return await self._in_thread(self.update_position, *args, **kwargs)

    async def close_position_async(self, *args: Any, **kwargs: Any) -> Any:
        """``close_position`` for asyncio."""
        return await self._in_thread(self.close_position, *args, **kwargs)

    async def create_trading_session_async(self, *args: Any, **kwargs: Any) -> Any:
        """``create_trading_session`` for asyncio."""
        return await self._in_thread(self.create_trading_session, *args, **kwargs)

    async def end_trading_session_async(self, *args: Any, **kwargs: Any) -> Any:
        """``end_trading_session`` for asyncio."""
        return await self._in_thread(self.end_trading_session, *args, **kwargs)

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


def _check_same_database(db: Any, config: WALConfig) -> None:
    """A wrapped manager on another database than ``config.database_url`` is an error: the
    URL is given once (``from_config``), never silently ignored."""
    url = getattr(db, "url", None)
    if not isinstance(url, str) or config.database_url == DEFAULT_URL:
        return  # a manager of the user's own without a URL, or a config that names none

    def norm(u: str) -> str:
        parsed = make_url(u)
        return parsed.set(drivername=parsed.get_backend_name()).render_as_string(
            hide_password=False
        )

    if norm(url) != norm(config.database_url):
        raise WALConfigError(
            "database_url",
            mask_url(config.database_url),
            f"the URL of the wrapped manager ({mask_url(url)}); or build both from the "
            "config with DurableDatabaseManager.from_config(config)",
        )

