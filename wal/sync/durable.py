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

import inspect
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from wal.config import WALConfig
from wal.entry import OperationType, WALEntry
from wal.errors import WALDatabaseError, WALSerializationError
from wal.log.storage import WALStorage
from wal.sync.breaker import BreakerState
from wal.sync.manager import Receipt, WALManager
from wal.sync.overlay import Overlay

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
        self.enabled = self.config.enabled
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
        self.manager.add_write_hook(self._overlay.on_write)

    @property
    def db(self) -> Any:
        """The wrapped DatabaseManager."""
        return self._db

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start replaying pending entries (the log was recovered when it was opened)."""
        if self.manager is not None:
            self.manager.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the sync thread and close the log; pending entries stay durable in it."""
        if self.manager is not None:
            self.manager.stop(timeout)
        if self.storage is not None and self._owns_storage:
            self.storage.close()

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

    # ------------------------------------------------------------------ reads

    def get_balance(self, account: str = "default") -> Decimal:
        """The balance including pending entries. Raises ``WALDatabaseError`` only when the
        database has not been reachable since start (then the balance is unknown)."""
        if self.manager is None or self.storage is None:
            return Decimal(self._db.get_balance(account))
        storage = self.storage
        return self._read_with_pending(
            lambda: self._overlay.fresh_balance(
                account,
                Decimal(self._db.get_balance(account)),
                storage.get_pending_entries(),
                lambda: storage.last_lsn,
                self._already_applied,
            ),
            lambda: self._overlay.kept_balance(account),
            f"the balance of account {account!r} is unknown: the database has not been "
            "reachable since this process started, so pending entries have no base",
        )

    def get_open_positions(self) -> list[dict[str, Any]]:
        """Open positions including pending opens, updates and closes."""
        if self.manager is None or self.storage is None:
            rows: list[dict[str, Any]] = self._db.get_open_positions()
            return rows
        storage = self.storage
        return self._read_with_pending(
            lambda: self._overlay.fresh_positions(
                list(self._db.get_open_positions()),
                storage.get_pending_entries(),
                lambda: storage.last_lsn,
                self._already_applied,
            ),
            self._overlay.kept_positions,
            "open positions are unknown: the database has not been reachable since this "
            "process started",
        )

    def _read_with_pending(
        self, fresh: Callable[[], _T], kept: Callable[[], _T | None], unknown: str
    ) -> _T:
        """A fresh read (database + pending, under the apply lock) unless the breaker is open
        and a kept state exists; the kept state when the database cannot be reached."""
        m = self.manager
        assert m is not None
        if kept() is None or m.breaker.state is not BreakerState.OPEN:
            try:
                with m.apply_lock:
                    return fresh()
            except Exception as exc:
                if not _transient(exc):
                    raise
                m.breaker.failure()  # a read that cannot connect is evidence of an outage
        value = kept()
        if value is None:
            raise WALDatabaseError(unknown, transient=True)
        return value

    def _already_applied(self, entries: list[WALEntry]) -> set[str]:
        """Which of these pending entries the database already has (ambiguous commits)."""
        m = self.manager
        if m is None or not m.maybe_applied:
            return set()
        unsure = [e.entry_id for e in entries if e.entry_id in m.maybe_applied]
        if not unsure or not callable(getattr(self._db, "applied_ids", None)):
            return set()
        return {str(x) for x in self._db.applied_ids(unsure)}

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found here: everything non-critical passes through
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._db, name)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, WALDatabaseError):
        return exc.transient
    from wal.db.classify import is_transient

    return is_transient(exc)
