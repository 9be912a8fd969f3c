"""Database errors: which ones mean "unavailable, retry later" and how they are reported.

``is_transient`` decides whether an entry that failed may succeed later (the database is down,
locked or overloaded) or would fail the same way again (the entry itself is bad): a transient
error aborts the whole batch, which is retried with backoff; a permanent one fails that entry
only (FAILED after ``WAL_MAX_RETRIES`` attempts). ``describe_error`` turns an error into one line.
``RecordNotFoundError`` is the permanent error of an effect that names an unknown id.
"""

from __future__ import annotations

import sqlite3
from typing import Final

import psycopg
from sqlalchemy import exc as sa_exc

from wal.errors import WALDatabaseError
from wal.masking import mask_text

__all__ = ["RecordNotFoundError", "describe_error", "is_transient"]

_MAX_ERROR_LEN: Final = 500


class RecordNotFoundError(LookupError):
    """``update_position``, ``close_position`` or ``end_trading_session`` named an unknown id.

    A permanent error: in ``apply`` it becomes an ``"error"`` outcome, never a silent no-op.
    """


# PostgreSQL SQLSTATEs that say "the database is unavailable right now", not "the entry is bad".
_TRANSIENT_SQLSTATE_CLASSES: Final = frozenset({"08", "53"})  # connection; insufficient resources
_TRANSIENT_SQLSTATES: Final = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, recovering)
        "57P05",  # idle_session_timeout
        "57014",  # query_canceled (statement_timeout)
        "55P03",  # lock_not_available (lock_timeout)
        "25P03",  # idle_in_transaction_session_timeout
        "58030",  # io_error on the server
    }
)
_SQLITE_TRANSIENT: Final = (
    "database is locked",
    "database table is locked",
    "disk i/o error",
    "database or disk is full",
    "unable to open database file",
    "locking protocol",
)


def _transient_here(e: BaseException) -> bool:
    if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
        return True
    if isinstance(e, sa_exc.DisconnectionError | sa_exc.TimeoutError | sa_exc.PendingRollbackError):
        return True  # pool timeout; a connection invalidated earlier in this transaction
    if isinstance(e, ConnectionError | TimeoutError):
        return True  # refused, reset, broken pipe; socket timeouts
    if isinstance(e, psycopg.Error):
        state = e.sqlstate
        if state is None:  # no answer from a server: refused, reset, closed, timed out
            return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError)
        return state in _TRANSIENT_SQLSTATES or state[:2] in _TRANSIENT_SQLSTATE_CLASSES
    if isinstance(e, sqlite3.OperationalError):
        text = str(e).lower()
        return any(m in text for m in _SQLITE_TRANSIENT)
    return False


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unavailable, so the same entry may succeed later.

    Transient: connection refused, reset or closed; server shutdown (57P01) and other 08xxx,
    53xxx and 57Pxx states; serialization failure (40001), deadlock (40P01), statement and
    lock timeouts; SQLite "database is locked" and I/O errors; pool and socket timeouts. The
    exception, its DBAPI original and its causes are all looked at. Anything else (an
    integrity or data error, a missing position, bad arguments) is permanent: retrying the
    same entry would fail the same way. A ``WALDatabaseError`` keeps its own ``transient``.

    >>> is_transient(ConnectionRefusedError())
    True
    >>> is_transient(ValueError("quantity must be positive"))
    False
    """
    if isinstance(exc, WALDatabaseError):
        return exc.transient
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if _transient_here(e):
            return True
        for nxt in (getattr(e, "orig", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return False


def describe_error(exc: BaseException, url: str | None = None) -> str:
    """One line: the error's type and message, without SQLAlchemy's SQL dump and links, and
    without a password: every URL in it masked, and the secret values of ``url`` (and of any
    database this process connected to) replaced by ``***`` wherever they appear (a driver
    quotes pieces of a password it mis-parsed, ``u:h@nter2@host``, as the host ``nter2@host``)."""
    inner = exc.orig if isinstance(exc, sa_exc.StatementError) and exc.orig is not None else exc
    kind = type(exc).__name__
    if inner is not exc and type(inner).__name__ != kind:
        kind = f"{kind} ({type(inner).__name__})"  # e.g. IntegrityError (UniqueViolation)
    text = mask_text(" ".join(str(inner).split()), url)  # masked before it is cut short
    line = f"{kind}: {text}" if text else kind
    return line if len(line) <= _MAX_ERROR_LEN else line[: _MAX_ERROR_LEN - 3] + "..."
