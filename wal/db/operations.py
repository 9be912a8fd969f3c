"""The effects: one function per critical operation of the reference database.

Each takes an open connection inside a transaction. The public methods of
``DatabaseManager`` and its ``apply`` both call these, so a replay does exactly what a
direct call does. Each raises on bad input before touching the database.

``apply`` looks operations up in an explicit registry (``OPERATIONS``), never by ``getattr``
on a name read from the log. Operations whose effect is one INSERT (``INSERT_ONLY``) are
applied in runs, one multi-row insert each (``wal.db.apply``).
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

from wal.db.classify import RecordNotFoundError
from wal.db.schema import (
    balance_changes,
    balances,
    positions,
    trades,
    trading_sessions,
    valid_id,
    valid_money,
    valid_new_id,
    valid_opt_id,
    valid_opt_money,
    valid_opt_positive,
    valid_positive,
    valid_text,
    valid_when,
)
from wal.entry import OperationType, utc_now
from wal.money import exact


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


_INSERT_BALANCE_CHANGE = sa.insert(balance_changes)
_INSERT_TRADE = sa.insert(trades)
_INSERT_POSITION = sa.insert(positions)
_POSITION_STATUS = sa.select(positions.c.status).where(
    positions.c.position_id == sa.bindparam("b_pid")
)
_OPEN_POSITION = (
    positions.c.position_id == sa.bindparam("b_pid"),
    positions.c.status == "open",
)


def _given(name: str) -> Any:
    """``COALESCE(:b_<name>, <name>)``: the column keeps its value when the parameter is None."""
    col = positions.c[name]
    return sa.func.coalesce(sa.bindparam(f"b_{name}", type_=col.type), col)


_UPDATE_POSITION = (
    sa.update(positions)
    .where(*_OPEN_POSITION)
    .values(
        stop_loss=_given("stop_loss"),
        take_profit=_given("take_profit"),
        quantity=_given("quantity"),
        current_price=_given("current_price"),
        entry_price=_given("entry_price"),
        updated_at=sa.bindparam("b_updated_at"),
    )
)
_CLOSE_POSITION = (
    sa.update(positions)
    .where(*_OPEN_POSITION)
    .values(
        status="closed",
        exit_price=sa.bindparam("b_exit_price"),
        pnl=sa.bindparam("b_pnl"),
        closed_at=sa.bindparam("b_closed_at"),
        updated_at=sa.bindparam("b_updated_at"),
    )
)


def set_balance_statement() -> sa.Update:
    """``UPDATE balances SET balance=:bal, updated_at=:at WHERE account=:acct`` (built once:
    the batch apply of ``wal.db.apply`` uses it too)."""
    return _SET_BALANCE


def lock_balance(conn: Connection, account: str) -> Decimal:
    """The account's balance, row-locked until the transaction ends (created at 0 if absent)."""
    row = conn.execute(_GET_BALANCE_FOR_UPDATE, {"acct": account}).first()
    if row is None:
        # ON CONFLICT: two first updates of one account at once must not fail on the key.
        conn.execute(
            _insert_ignore(conn, balances).values(
                account=account, balance=Decimal(0), updated_at=utc_now()
            )
        )
        row = conn.execute(_GET_BALANCE_FOR_UPDATE, {"acct": account}).one()
    balance: Decimal = row[0]
    return balance


@exact
def op_balance_update(
    conn: Connection, delta: object, *, reason: str = "", account: str = "default"
) -> Decimal:
    if delta is None:
        raise TypeError("atomic_balance_update needs a delta")
    d = valid_money(delta, "delta")
    acct = valid_text(account, "account")
    why = valid_text(reason, "reason", 1000, empty=True)
    new = valid_money(lock_balance(conn, acct) + d, f"the new balance of {acct!r}")
    now = utc_now()
    # statements built once and given parameters: SQLAlchemy's cache skips re-compiling them
    conn.execute(_SET_BALANCE, {"acct": acct, "bal": new, "at": now})
    conn.execute(
        _INSERT_BALANCE_CHANGE,
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
        "trade_id": valid_new_id(trade_id, "trade_id"),
        "session_id": valid_opt_id(session_id, "session_id"),
        "symbol": valid_text(symbol, "symbol"),
        "side": valid_text(side, "side", 16),
        "quantity": valid_positive(quantity, "quantity"),
        "price": valid_positive(price, "price"),
        "pnl": valid_opt_money(pnl, "pnl"),
        "executed_at": valid_when(executed_at, "executed_at"),
    }
    return row


def op_log_trade(conn: Connection, **kwargs: Any) -> str:
    row = _trade_row(**kwargs)
    conn.execute(_INSERT_TRADE, row)
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
    opened = valid_when(opened_at, "opened_at")
    row = {
        "position_id": valid_new_id(position_id, "position_id"),
        "session_id": valid_opt_id(session_id, "session_id"),
        "symbol": valid_text(symbol, "symbol"),
        "side": valid_text(side, "side", 16),
        "quantity": valid_positive(quantity, "quantity"),
        "entry_price": valid_positive(entry_price, "entry_price"),
        "stop_loss": valid_opt_positive(stop_loss, "stop_loss"),
        "take_profit": valid_opt_positive(take_profit, "take_profit"),
        "status": "open",
        "opened_at": opened,
        "updated_at": opened,
    }
    return row


def op_log_position(conn: Connection, **kwargs: Any) -> str:
    row = _position_row(**kwargs)
    conn.execute(_INSERT_POSITION, row)
    return str(row["position_id"])


def _change_open_position(conn: Connection, stmt: sa.Update, pid: str, **values: Any) -> None:
    """Run ``stmt`` on the position only while it is open (one statement, which also locks
    its row); refuse an unknown or a closed one."""
    params = {f"b_{k}": v for k, v in values.items()}
    if conn.execute(stmt, params | {"b_pid": pid}).rowcount == 1:
        return
    row = conn.execute(_POSITION_STATUS, {"b_pid": pid}).first()
    if row is None:
        raise RecordNotFoundError(f"no position with position_id {pid!r}")
    raise ValueError(f"position {pid!r} is {row[0]}, not open")


def op_update_position(
    conn: Connection,
    position_id: str,
    *,
    stop_loss: Decimal | None = None,
    take_profit: Decimal | None = None,
    quantity: Decimal | None = None,
    current_price: Decimal | None = None,
    entry_price: Decimal | None = None,
) -> None:
    pid = valid_id(position_id, "position_id")
    _change_open_position(  # a field given as None keeps its value
        conn,
        _UPDATE_POSITION,
        pid,
        stop_loss=valid_opt_positive(stop_loss, "stop_loss"),
        take_profit=valid_opt_positive(take_profit, "take_profit"),
        quantity=valid_opt_positive(quantity, "quantity"),
        current_price=valid_opt_positive(current_price, "current_price"),
        entry_price=valid_opt_positive(entry_price, "entry_price"),  # averaged-in orders
        updated_at=utc_now(),
    )


def op_close_position(
    conn: Connection,
    position_id: str,
    *,
    exit_price: Decimal,
    pnl: Decimal | None = None,
    closed_at: datetime | None = None,
) -> None:
    pid = valid_id(position_id, "position_id")
    _change_open_position(
        conn,
        _CLOSE_POSITION,
        pid,
        exit_price=valid_positive(exit_price, "exit_price"),
        pnl=valid_opt_money(pnl, "pnl"),
        closed_at=valid_when(closed_at, "closed_at"),
        updated_at=utc_now(),
    )


def _session_row(
    *,
    strategy: str,
    session_id: str | None = None,
    mode: str = "paper",
    initial_balance: Decimal | None = None,
    started_at: datetime | None = None,
) -> dict[str, Any]:
    row = {
        "session_id": valid_new_id(session_id, "session_id"),
        "strategy": valid_text(strategy, "strategy", 200),
        "mode": valid_text(mode, "mode", 32),
        "initial_balance": valid_opt_money(initial_balance, "initial_balance"),
        "started_at": valid_when(started_at, "started_at"),
    }
    return row


def op_create_trading_session(conn: Connection, **kwargs: Any) -> str:
    row = _session_row(**kwargs)
    conn.execute(sa.insert(trading_sessions), row)
    return str(row["session_id"])


def op_end_trading_session(
    conn: Connection,
    session_id: str,
    *,
    final_balance: Decimal | None = None,
    ended_at: datetime | None = None,
) -> None:
    sid = valid_id(session_id, "session_id")
    values = {
        "final_balance": valid_opt_money(final_balance, "final_balance"),
        "ended_at": valid_when(ended_at, "ended_at"),
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


OPERATIONS: Final[dict[str, Callable[..., Any]]] = {
    OperationType.BALANCE_UPDATE.value: op_balance_update,
    OperationType.LOG_TRADE.value: op_log_trade,
    OperationType.LOG_POSITION.value: op_log_position,
    OperationType.UPDATE_POSITION.value: op_update_position,
    OperationType.CLOSE_POSITION.value: op_close_position,
    OperationType.CREATE_TRADING_SESSION.value: op_create_trading_session,
    OperationType.END_TRADING_SESSION.value: op_end_trading_session,
}
"""What ``apply`` may run: operation name (from the log) -> effect. Nothing else is callable."""

INSERT_ONLY: Final[dict[str, tuple[sa.Table, Callable[..., dict[str, Any]], str]]] = {
    OperationType.LOG_TRADE.value: (trades, _trade_row, "trade_id"),
    OperationType.LOG_POSITION.value: (positions, _position_row, "position_id"),
    OperationType.CREATE_TRADING_SESSION.value: (trading_sessions, _session_row, "session_id"),
}
"""Operations whose effect is one INSERT: (table, row builder, id column). ``apply`` inserts
consecutive ones with one multi-row insert."""
