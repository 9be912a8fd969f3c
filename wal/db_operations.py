"""The effects: one function per critical operation of the reference database.

Each takes an open connection inside a transaction. The public methods of
``DatabaseManager`` and its ``apply`` both call these, so a replay does exactly what a
direct call does. Each raises on bad input before touching the database.

``apply`` looks operations up in an explicit registry (``_OPERATIONS``), never by ``getattr``
on a name read from the log. Operations whose effect is one INSERT (``_INSERT_ONLY``) are
applied in runs, one multi-row insert each (``wal.db_apply``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from wal.db_errors import RecordNotFoundError
from wal.db_schema import (
    _id,
    _money,
    _new_id,
    _now,
    _opt_id,
    _opt_money,
    _opt_positive,
    _positive,
    _text,
    _when,
    balance_changes,
    balances,
    positions,
    trades,
    trading_sessions,
)
from wal.entry import OperationType


def _insert_ignore(conn: Connection, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return pg_dialect.insert(table).on_conflict_do_nothing()
    return sqlite_dialect.insert(table).on_conflict_do_nothing()


_SET_BALANCE = (
    sa.update(balances)
    .where(balances.c.account == sa.bindparam("acct"))
    .values(balance=sa.bindparam("bal"), updated_at=sa.bindparam("at"))
)
_GET_BALANCE_FOR_UPDATE = (
    sa.select(balances.c.balance)
    .where(balances.c.account == sa.bindparam("acct"))
    .with_for_update()
)


def _lock_balance(conn: Connection, account: str) -> Decimal:
    """The account's balance, row-locked until the transaction ends (created at 0 if absent)."""
    row = conn.execute(_GET_BALANCE_FOR_UPDATE, {"acct": account}).first()
    if row is None:
        # ON CONFLICT: two first updates of one account at once must not fail on the key.
        conn.execute(
            _insert_ignore(conn, balances).values(
                account=account, balance=Decimal(0), updated_at=_now()
            )
        )
        row = conn.execute(_GET_BALANCE_FOR_UPDATE, {"acct": account}).one()
    balance: Decimal = row[0]
    return balance


def _op_balance_update(
    conn: Connection, delta: object, *, reason: str = "", account: str = "default"
) -> Decimal:
    if delta is None:
        raise TypeError("atomic_balance_update needs a delta")
    d = _money(delta, "delta")
    acct = _text(account, "account")
    why = _text(reason, "reason", 1000, empty=True)
    new = _money(_lock_balance(conn, acct) + d, f"the new balance of {acct!r}")
    now = _now()
    # statements built once and given parameters: SQLAlchemy's cache skips re-compiling them
    conn.execute(_SET_BALANCE, {"acct": acct, "bal": new, "at": now})
    conn.execute(
        sa.insert(balance_changes),
        {"account": acct, "delta": d, "balance_after": new, "reason": why, "changed_at": now},
    )
    return new


def _trade_row(
    *,
    symbol: str,
    side: str,
    quantity: Decimal,
    price: Decimal,
    trade_id: str | None = None,
    session_id: str | None = None,
    pnl: Decimal | None = None,
    executed_at: datetime | None = None,
) -> dict[str, Any]:
    row = {
        "trade_id": _new_id(trade_id, "trade_id"),
        "session_id": _opt_id(session_id, "session_id"),
        "symbol": _text(symbol, "symbol"),
        "side": _text(side, "side", 16),
        "quantity": _positive(quantity, "quantity"),
        "price": _positive(price, "price"),
        "pnl": _opt_money(pnl, "pnl"),
        "executed_at": _when(executed_at, "executed_at"),
    }
    return row


def _op_log_trade(conn: Connection, **kwargs: Any) -> str:
    row = _trade_row(**kwargs)
    conn.execute(sa.insert(trades), row)
    return str(row["trade_id"])


def _position_row(
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
) -> dict[str, Any]:
    opened = _when(opened_at, "opened_at")
    row = {
        "position_id": _new_id(position_id, "position_id"),
        "session_id": _opt_id(session_id, "session_id"),
        "symbol": _text(symbol, "symbol"),
        "side": _text(side, "side", 16),
        "quantity": _positive(quantity, "quantity"),
        "entry_price": _positive(entry_price, "entry_price"),
        "stop_loss": _opt_positive(stop_loss, "stop_loss"),
        "take_profit": _opt_positive(take_profit, "take_profit"),
        "status": "open",
        "opened_at": opened,
        "updated_at": opened,
    }
    return row


def _op_log_position(conn: Connection, **kwargs: Any) -> str:
    row = _position_row(**kwargs)
    conn.execute(sa.insert(positions), row)
    return str(row["position_id"])


def _lock_open_position(conn: Connection, position_id: object) -> str:
    pid = _id(position_id, "position_id")
    query = sa.select(positions.c.status).where(positions.c.position_id == pid).with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise RecordNotFoundError(f"no position with position_id {pid!r}")
    if row[0] != "open":
        raise ValueError(f"position {pid!r} is {row[0]}, not open")
    return pid


def _op_update_position(
    conn: Connection,
    position_id: str,
    *,
    stop_loss: Decimal | None = None,
    take_profit: Decimal | None = None,
    quantity: Decimal | None = None,
    current_price: Decimal | None = None,
) -> None:
    given = {
        "stop_loss": _opt_positive(stop_loss, "stop_loss"),
        "take_profit": _opt_positive(take_profit, "take_profit"),
        "quantity": _opt_positive(quantity, "quantity"),
        "current_price": _opt_positive(current_price, "current_price"),
    }
    values: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    pid = _lock_open_position(conn, position_id)
    values["updated_at"] = _now()
    conn.execute(sa.update(positions).where(positions.c.position_id == pid).values(values))


def _op_close_position(
    conn: Connection,
    position_id: str,
    *,
    exit_price: Decimal,
    pnl: Decimal | None = None,
    closed_at: datetime | None = None,
) -> None:
    values = {
        "status": "closed",
        "exit_price": _positive(exit_price, "exit_price"),
        "pnl": _opt_money(pnl, "pnl"),
        "closed_at": _when(closed_at, "closed_at"),
        "updated_at": _now(),
    }
    pid = _lock_open_position(conn, position_id)
    conn.execute(sa.update(positions).where(positions.c.position_id == pid).values(values))


def _session_row(
    *,
    strategy: str,
    session_id: str | None = None,
    mode: str = "paper",
    initial_balance: Decimal | None = None,
    started_at: datetime | None = None,
) -> dict[str, Any]:
    row = {
        "session_id": _new_id(session_id, "session_id"),
        "strategy": _text(strategy, "strategy", 200),
        "mode": _text(mode, "mode", 32),
        "initial_balance": _opt_money(initial_balance, "initial_balance"),
        "started_at": _when(started_at, "started_at"),
    }
    return row


def _op_create_trading_session(conn: Connection, **kwargs: Any) -> str:
    row = _session_row(**kwargs)
    conn.execute(sa.insert(trading_sessions), row)
    return str(row["session_id"])


def _op_end_trading_session(
    conn: Connection,
    session_id: str,
    *,
    final_balance: Decimal | None = None,
    ended_at: datetime | None = None,
) -> None:
    sid = _id(session_id, "session_id")
    values = {
        "final_balance": _opt_money(final_balance, "final_balance"),
        "ended_at": _when(ended_at, "ended_at"),
    }
    query = (
        sa.select(trading_sessions.c.ended_at)
        .where(trading_sessions.c.session_id == sid)
        .with_for_update()
    )
    row = conn.execute(query).first()
    if row is None:
        raise RecordNotFoundError(f"no trading session with session_id {sid!r}")
    if row[0] is not None:
        raise ValueError(f"trading session {sid!r} already ended at {row[0].isoformat()}")
    conn.execute(
        sa.update(trading_sessions).where(trading_sessions.c.session_id == sid).values(values)
    )


_OPERATIONS: Final[dict[str, Callable[..., Any]]] = {
    OperationType.BALANCE_UPDATE.value: _op_balance_update,
    OperationType.LOG_TRADE.value: _op_log_trade,
    OperationType.LOG_POSITION.value: _op_log_position,
    OperationType.UPDATE_POSITION.value: _op_update_position,
    OperationType.CLOSE_POSITION.value: _op_close_position,
    OperationType.CREATE_TRADING_SESSION.value: _op_create_trading_session,
    OperationType.END_TRADING_SESSION.value: _op_end_trading_session,
}
"""What ``apply`` may run: operation name (from the log) -> effect. Nothing else is callable."""

_INSERT_ONLY: Final[dict[str, tuple[sa.Table, Callable[..., dict[str, Any]], str]]] = {
    OperationType.LOG_TRADE.value: (trades, _trade_row, "trade_id"),
    OperationType.LOG_POSITION.value: (positions, _position_row, "position_id"),
    OperationType.CREATE_TRADING_SESSION.value: (trading_sessions, _session_row, "session_id"),
}
"""Operations whose effect is one INSERT: (table, row builder, id column). ``apply`` inserts
consecutive ones with one multi-row insert."""
