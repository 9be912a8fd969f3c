"""``DatabaseManager``: the reference trading database the log protects (SQLAlchemy 2 Core).

This is the "existing" database layer a trading engine already has; ``DurableDatabaseManager``
wraps it. It runs on SQLite (a file; WAL journal, ``synchronous=FULL``) and on PostgreSQL
(through psycopg 3).

>>> db = DatabaseManager("sqlite://")
>>> db.atomic_balance_update(Decimal("0.1"), reason="deposit")
Decimal('0.1000000000')
>>> db.atomic_balance_update(Decimal("0.2")) == Decimal("0.3")
True
>>> db.dispose()

Its tables, column types and value rules are in :mod:`wal.db.schema`, the effect of each
critical operation in :mod:`wal.db.operations`, the classification of database errors
(``is_transient``) in :mod:`wal.db.classify`, the batch replay of ``apply`` in
:mod:`wal.db.apply`; their public names are importable from here too. The engine, the
schema, the transactions, ``ping`` and ``dispose`` are ``DatabaseConnection``
(:mod:`wal.db.connection`), the order journal's methods ``OrderJournalMethods``
(:mod:`wal.db.order_methods`); ``DatabaseManager`` builds on both.

Exactly-once replay
-------------------
``apply(entries)`` runs a batch of log entries in ONE transaction. Each entry's ledger row
is inserted before its effect: they commit together or not at all, so an entry whose id is
already in the ledger is skipped as a ``"duplicate"``, even after an ambiguous commit
(connection lost between COMMIT and its reply). A permanent error (constraint, bad value,
unknown position, bad arguments) rolls back that entry only (each entry then runs in its own
SAVEPOINT). A transient error (see ``is_transient``) aborts the batch and raises
``WALDatabaseError(transient=True)``. Operations are looked up in an explicit registry, never
by ``getattr`` on a name read from the log; a direct call and a replay share one function per
effect, so they do exactly the same thing.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wal.db.apply import (
    ApplyResult,
    applied_in,
    apply_batch,
    balance_and_applied_row,
    balance_and_applied_sql,
)
from wal.db.checks import check_call, check_call_positional, check_caller_values, check_key
from wal.db.classify import RecordNotFoundError, describe_error, is_transient
from wal.db.engine import DEFAULT_URL
from wal.db.operations import (
    lock_balance,
    op_balance_update,
    op_close_position,
    op_create_trading_session,
    op_end_trading_session,
    op_log_position,
    op_log_trade,
    op_update_position,
)
from wal.db.order_methods import OrderJournalMethods
from wal.db.schema import (
    balances,
    metadata,
    metrics,
    positions,
    trades,
    trading_sessions,
    valid_id,
    valid_money,
    valid_text,
    valid_when,
    wal_applied,
    wal_applied_keys,
)
from wal.entry import WALEntry
from wal.errors import WALDatabaseError
from wal.money import exact

__all__ = [
    "DEFAULT_URL",
    "ApplyResult",
    "BalanceTxn",
    "DatabaseManager",
    "RecordNotFoundError",
    "is_transient",
    "metadata",
]


class BalanceTxn:
    """The open transaction of ``with db.atomic_balance_update(account=...) as t:``.

    ``t.balance`` was read with the row locked (``SELECT ... FOR UPDATE`` on PostgreSQL; the
    write lock on SQLite), so no one else changes it until the block ends. ``t.add(delta)``
    changes it; everything commits when the block ends and rolls back if it raises.

    The block holds a connection and the row lock: do not update the same account through
    another method of the manager inside it (that call would wait for this very lock; on
    PostgreSQL it fails after ``PG_LOCK_TIMEOUT_MS``, on SQLite after the busy timeout).
    """

    def __init__(self, conn: Connection, account: str, balance: Decimal, reason: str) -> None:
        self._conn = conn
        self._account = account
        self._balance = balance
        self._reason = reason
        self._changes: list[tuple[Decimal, str]] = []
        self._open = True

    @property
    def account(self) -> str:
        return self._account

    @property
    def balance(self) -> Decimal:
        """The balance as this transaction sees it (after its own ``add`` calls)."""
        return self._balance

    @property
    def changes(self) -> tuple[tuple[Decimal, str], ...]:
        """The ``(delta, reason)`` of every ``add`` so far, in order."""
        return tuple(self._changes)

    def add(self, delta: Decimal | int | str, *, reason: str = "") -> Decimal:
        """Add ``delta`` (may be negative) inside the transaction; return the new balance."""
        if not self._open:
            raise RuntimeError("the balance transaction has ended: call add() inside the block")
        why = reason or self._reason
        self._balance = op_balance_update(self._conn, delta, reason=why, account=self._account)
        self._changes.append((valid_money(delta, "delta"), why))
        return self._balance


class DatabaseManager(OrderJournalMethods):
    """The trading database: balances, trades, positions, sessions, metrics.

    ``url``: a SQLAlchemy URL; when None, the ``DATABASE_URL`` environment variable, else
    ``sqlite:///data/atb.db`` (its directory is created 0700, the file 0600).
    ``postgresql://`` URLs use psycopg 3. ``echo`` logs every SQL statement. An in-memory
    SQLite database (``sqlite://``) is a single connection, for one thread at a time.

    Each critical method runs in its own transaction and returns its result. They raise the
    database's own errors (use ``is_transient`` to classify them) and ``ValueError`` /
    ``TypeError`` / ``RecordNotFoundError`` for bad input.
    """

    def __repr__(self) -> str:
        return f"DatabaseManager({self.safe_url!r})"

    # ------------------------------------------------------------------ critical operations

    @overload
    def atomic_balance_update(
        self, delta: Decimal | int | str, *, reason: str = "", account: str = "default"
    ) -> Decimal: ...

    @overload
    def atomic_balance_update(
        self, delta: None = None, *, reason: str = "", account: str = "default"
    ) -> AbstractContextManager[BalanceTxn]: ...

    def atomic_balance_update(
        self,
        delta: Decimal | int | str | None = None,
        *,
        reason: str = "",
        account: str = "default",
    ) -> Decimal | AbstractContextManager[BalanceTxn]:
        """Add ``delta`` to ``account``'s balance and return the new balance.

        Without ``delta``, return a context manager holding the balance row locked::

            with db.atomic_balance_update(account="spot") as t:
                if t.balance >= cost:
                    t.add(-cost, reason="buy")

        It commits when the block ends and rolls back if it raises.
        """
        if delta is None:
            return self._balance_txn(
                valid_text(account, "account"), valid_text(reason, "reason", 1000, empty=True)
            )
        with self._write() as conn:
            return op_balance_update(conn, delta, reason=reason, account=account)

    @contextlib.contextmanager
    def _balance_txn(self, account: str, reason: str) -> Iterator[BalanceTxn]:
        with self._write() as conn:
            txn = BalanceTxn(conn, account, lock_balance(conn, account), reason)
            try:
                yield txn
            finally:
                txn._open = False

    def log_trade(
        self,
        *,
        symbol: str,
        side: str,
        quantity: Decimal,
        price: Decimal,
        trade_id: str | None = None,
        session_id: str | None = None,
        pnl: Decimal | None = None,
        executed_at: datetime | None = None,
    ) -> str:
        """Record an executed trade; return its ``trade_id`` (a new uuid4 when not given).
        ``side`` is ``buy`` or ``sell``; ``executed_at`` an aware datetime (``ValueError``
        naming the argument otherwise)."""
        check_caller_values("log_trade", {"side": side, "executed_at": executed_at})
        with self._write() as conn:
            return op_log_trade(
                conn,
                symbol=symbol,
                side=side,
                quantity=quantity,
                price=price,
                trade_id=trade_id,
                session_id=session_id,
                pnl=pnl,
                executed_at=executed_at,
            )

    def log_position(
        self,
        *,
        symbol: str,
        side: str,
        quantity: Decimal,
        entry_price: Decimal,
        position_id: str | None = None,
        stop_loss: Decimal | None = None,
        take_profit: Decimal | None = None,
        session_id: str | None = None,
        opened_at: datetime | None = None,
    ) -> str:
        """Open a position; return its ``position_id`` (a new uuid4 when not given).
        ``side`` is ``long`` or ``short``; ``opened_at`` an aware datetime."""
        check_caller_values("log_position", {"side": side, "opened_at": opened_at})
        with self._write() as conn:
            return op_log_position(
                conn,
                symbol=symbol,
                side=side,
                quantity=quantity,
                entry_price=entry_price,
                position_id=position_id,
                stop_loss=stop_loss,
                take_profit=take_profit,
                session_id=session_id,
                opened_at=opened_at,
            )

    def update_position(
        self,
        position_id: str,
        *,
        stop_loss: Decimal | None = None,
        take_profit: Decimal | None = None,
        quantity: Decimal | None = None,
        current_price: Decimal | None = None,
        entry_price: Decimal | None = None,
    ) -> None:
        """Change the given fields of an open position (None leaves a field as it is).

        Raises ``RecordNotFoundError`` for an unknown id, ``ValueError`` for a closed one.
        """
        with self._write() as conn:
            op_update_position(
                conn,
                position_id,
                stop_loss=stop_loss,
                take_profit=take_profit,
                quantity=quantity,
                current_price=current_price,
                entry_price=entry_price,
            )

    def close_position(
        self,
        position_id: str,
        *,
        exit_price: Decimal,
        pnl: Decimal | None = None,
        closed_at: datetime | None = None,
    ) -> None:
        """Close an open position. Raises ``RecordNotFoundError`` / ``ValueError`` as above."""
        check_caller_values("close_position", {"closed_at": closed_at})
        with self._write() as conn:
            op_close_position(
                conn, position_id, exit_price=exit_price, pnl=pnl, closed_at=closed_at
            )

    def create_trading_session(
        self,
        *,
        strategy: str,
        session_id: str | None = None,
        mode: str = "paper",
        initial_balance: Decimal | None = None,
        started_at: datetime | None = None,
    ) -> str:
        """Start a trading session; return its ``session_id`` (a new uuid4 when not given)."""
        check_caller_values("create_trading_session", {"started_at": started_at})
        with self._write() as conn:
            return op_create_trading_session(
                conn,
                strategy=strategy,
                session_id=session_id,
                mode=mode,
                initial_balance=initial_balance,
                started_at=started_at,
            )

    def end_trading_session(
        self,
        session_id: str,
        *,
        final_balance: Decimal | None = None,
        ended_at: datetime | None = None,
    ) -> None:
        """End a session. ``RecordNotFoundError`` if unknown, ``ValueError`` if already ended."""
        check_caller_values("end_trading_session", {"ended_at": ended_at})
        with self._write() as conn:
            op_end_trading_session(conn, session_id, final_balance=final_balance, ended_at=ended_at)

    # ------------------------------------------------------------------ reads

    def get_balance(self, account: str = "default") -> Decimal:
        """The account's balance; ``Decimal(0)`` when it has never been updated."""
        acct = valid_text(account, "account")
        with self._read() as conn:
            value = conn.execute(
                sa.select(balances.c.balance).where(balances.c.account == acct)
            ).scalar_one_or_none()
        return Decimal(0) if value is None else value

    def get_open_positions(self) -> list[dict[str, Any]]:
        """Every open position as a dict of its columns, oldest first."""
        query = (
            sa.select(positions)
            .where(positions.c.status == "open")
            .order_by(positions.c.opened_at, positions.c.position_id)
        )
        return self._rows(query)

    def get_balance_and_applied(
        self, account: str, entry_ids: Iterable[uuid.UUID | str]
    ) -> tuple[Decimal, set[str]]:
        """``get_balance(account)`` and ``applied_ids(entry_ids)`` read in ONE snapshot.

        The read overlay of ``DurableDatabaseManager`` needs both from the same instant: an
        entry committed between two separate reads would be counted twice or not at all.
        """
        acct = valid_text(account, "account")
        ids = [str(e) for e in entry_ids]
        one = balance_and_applied_sql(self._engine.dialect, acct, ids)
        if one is not None:
            with self._statement() as cur:
                cur.execute(*one)
                return balance_and_applied_row(cur.fetchone())
        with self._snapshot() as conn:
            value = conn.execute(
                sa.select(balances.c.balance).where(balances.c.account == acct)
            ).scalar_one_or_none()
            done = applied_in(conn, ids) if ids else set()
        return (Decimal(0) if value is None else value), done

    def get_open_positions_and_applied(
        self, entry_ids: Iterable[uuid.UUID | str]
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """``get_open_positions()`` and ``applied_ids(entry_ids)`` read in ONE snapshot."""
        query = (
            sa.select(positions)
            .where(positions.c.status == "open")
            .order_by(positions.c.opened_at, positions.c.position_id)
        )
        ids = [str(e) for e in entry_ids]
        with self._snapshot() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
            done = applied_in(conn, ids) if ids else set()
        return rows, done

    def get_trades(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Every trade (of one session when ``session_id`` is given), oldest first."""
        query = sa.select(trades).order_by(trades.c.executed_at, trades.c.trade_id)
        if session_id is not None:
            query = query.where(trades.c.session_id == valid_id(session_id, "session_id"))
        return self._rows(query)

    def get_sessions(self) -> list[dict[str, Any]]:
        """Every trading session, oldest first."""
        query = sa.select(trading_sessions).order_by(
            trading_sessions.c.started_at, trading_sessions.c.session_id
        )
        return self._rows(query)

    def _rows(self, query: sa.Select[Any]) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # ------------------------------------------------------------------ non-critical

    def record_metric(self, name: str, value: float, *, at: datetime | None = None) -> None:
        """Store a measurement. Non-critical: it goes straight to the database, never logged."""
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise TypeError(f"metric value must be a number, got {type(value).__name__}")
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"metric value must be finite, got {number}")
        row = {"name": valid_text(name, "name", 200), "value": number, "at": valid_when(at, "at")}
        with self._write() as conn:
            conn.execute(sa.insert(metrics).values(row))

    def get_metrics(self, name: str) -> list[dict[str, Any]]:
        """The measurements named ``name`` (``name``, ``value``, ``at``), oldest first."""
        query = (
            sa.select(metrics.c.name, metrics.c.value, metrics.c.at)
            .where(metrics.c.name == valid_text(name, "name", 200))
            .order_by(metrics.c.at, metrics.c.id)
        )
        return self._rows(query)

    # ------------------------------------------------------------------ checks before logging

    def check_arguments(
        self,
        operation: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        """Refuse a critical call whose arguments (or idempotency key) the columns would not
        take, with one ``WALArgumentError`` naming the argument (``wal.db.checks``). No
        database access: ``WALManager`` calls it before anything is logged."""
        if idempotency_key is not None:
            check_key(operation, idempotency_key)
        params = dict(kwargs or {})
        if args:
            params = check_call_positional(operation, args, params)
        check_call(operation, params)

    # ------------------------------------------------------------------ exactly-once replay

    @exact
    def apply(self, entries: Sequence[WALEntry]) -> list[ApplyResult]:
        """Apply log entries exactly once, in order, in one transaction; one result each.

        Raises ``WALDatabaseError(transient=True)`` when the database is unavailable: then
        nothing of the batch was committed or, if the connection was lost during COMMIT,
        maybe all of it; the ledger makes the retry skip what was. ``transient=False`` only
        if the batch itself could not run (e.g. the COMMIT was refused).
        """
        if not entries:
            return []
        try:
            self._ensure_schema()
            with self._engine.connect() as conn, conn.begin():
                results = apply_batch(conn, entries)
                # Leaving the block COMMITs effects and ledger rows together.
        except Exception as exc:
            transient = is_transient(exc)
            what = (
                "was rolled back"
                if not transient
                else "was rolled back (or, if the "
                "connection was lost during COMMIT, maybe committed: a retry skips what was)"
            )
            # the cause first: a log line or a status cut short still says what failed
            raise WALDatabaseError(
                f"{describe_error(exc, self.url)}: applying {len(entries)} entries to "
                f"{self.safe_url} failed and the batch {what}",
                transient=transient,
            ) from exc
        return results

    def applied_key(self, key: str) -> tuple[str, int | None, str, datetime | None] | None:
        """The applied entry that holds the idempotency ``key`` (``wal_applied_keys``):
        ``(entry_id, lsn, operation, applied_at)``, or None. Kept after the log compacts the
        entry away: ``DurableDatabaseManager.find_by_idempotency_key`` asks it then (the
        apply skips a re-sent key anyway, in its own transaction: ``wal.db.apply``)."""
        k, t = wal_applied_keys, wal_applied
        query = (
            sa.select(k.c.entry_id, t.c.lsn, t.c.operation, t.c.applied_at)
            .select_from(k.outerjoin(t, t.c.entry_id == k.c.entry_id))
            .where(k.c.idempotency_key == key)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        lsn = None if row[1] is None else int(row[1])
        return str(row[0]), lsn, str(row[2] or ""), row[3]

    def applied_ids(self, entry_ids: Iterable[uuid.UUID | str]) -> set[str]:
        """Which of ``entry_ids`` are in the ``wal_applied`` ledger (as strings)."""
        ids = [str(e) for e in entry_ids]
        if not ids:
            return set()
        with self._read() as conn:
            return applied_in(conn, ids)

    # ------------------------------------------------------------------ lifecycle
