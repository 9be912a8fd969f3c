"""The reference database's tables, their column types and the values they accept.

Tables (created on first use)
-----------------------------
``balances`` (account, balance, updated_at), ``balance_changes`` (one row per update, with
its reason), ``trades``, ``positions``, ``trading_sessions``, ``metrics`` (non-critical) and
``wal_applied``, the ledger of log entries already applied (entry_id primary key, lsn,
operation, applied_at), ``wal_applied_keys`` (the idempotency key of each applied entry given
one: unique, kept after the log compacts the entry away), and ``wal_database_id``, one row
holding a random id that names this database (the log records it, and refuses to drain into
a database with another id).

Money is exact: ``NUMERIC(28, 10)`` on PostgreSQL, the decimal's text on SQLite (which has
no decimal type and would round through float). Values come back as ``Decimal`` with 10
places on both. Money given as ``float`` is refused, and so is a value with more than 10
decimal places or 18 integer digits (it would be rounded or overflow). Times are stored in
UTC and come back aware. A caller's time must be aware (``valid_aware``: a naive
``datetime.now()`` on a host in another zone would be stored hours off); the effects, which
also replay entries logged before that rule, still take a naive one as UTC. Ids are strings
the caller may choose; when absent, a uuid4 is generated.

The validators (``valid_money``, ``valid_text``, ``valid_id``, ...) are the one definition
of those rules: the column types and the effects in :mod:`wal.db.operations` both use them,
and each raises naming the value that was wrong: an ``ArgumentTypeError`` or
``ArgumentValueError`` (a ``TypeError`` / ``ValueError``) whose ``argument`` is the name it
was given, so a caller turning it into ``WALArgumentError`` never has to parse the message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from wal.entry import utc_now
from wal.money import MONEY_CONTEXT

__all__ = [
    "TRADE_SIDES",
    "POSITION_SIDES",
    "ArgumentTypeError",
    "ArgumentValueError",
    "Money",
    "UTCDateTime",
    "balance_changes",
    "balances",
    "metadata",
    "metrics",
    "positions",
    "trades",
    "trading_sessions",
    "wal_applied",
    "wal_applied_keys",
    "wal_database_id",
]

_SCALE: Final = 10  # decimal places kept for money
_INT_DIGITS: Final = 18  # NUMERIC(28, 10): 28 digits in all, 10 after the point
_QUANTUM: Final = Decimal(1).scaleb(-_SCALE)
# the money context (wal.money), its own copy: the quantize below and the parse of a str are
# the same whatever the caller's decimal context (precision, traps)
_WIDE: Final = MONEY_CONTEXT.copy()
_MAX_ID_LEN: Final = 64
TRADE_SIDES: Final = ("buy", "sell")  # a trade's (and an order's, a fill's) side
POSITION_SIDES: Final = ("long", "short")  # a position's side


class ArgumentTypeError(TypeError):
    """A value of the wrong type; ``argument`` names it (the name the validator was given)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


class ArgumentValueError(ValueError):
    """A value out of its column's rules; ``argument`` names it."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


# --------------------------------------------------------------------------- column types


class Money(TypeDecorator[Decimal]):
    """An exact decimal: ``NUMERIC(28, 10)`` on PostgreSQL, its text on SQLite."""

    impl = sa.Numeric(28, _SCALE, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(40))
        return dialect.type_descriptor(sa.Numeric(28, _SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        d = valid_money(value, "value")
        return format(d, "f") if dialect.name == "sqlite" else d

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return valid_money(value, "stored value")  # a Decimal (PostgreSQL) or its text (SQLite)


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time: stored in UTC, always returned aware (UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        v = valid_utc(value, "value")
        return v.replace(tzinfo=None) if dialect.name == "sqlite" else v

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def bulk_binder(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """What the bind processing of ``type_`` makes of a non-None value, for multi-row inserts
    of rows the validators below built (a ``Money`` value is not validated a second time)."""
    if isinstance(type_, Money):
        return _money_text if dialect.name == "sqlite" else None  # Numeric: psycopg adapts it
    processor = type_.dialect_impl(dialect).bind_processor(dialect)
    if isinstance(type_, UTCDateTime) and dialect.name == "sqlite" and processor is not None:
        samples = (datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), datetime(999, 1, 1, 0, 0))
        if all(_sqlite_utc_text(v) == processor(v) for v in samples):
            return _sqlite_utc_text  # the same text without SQLAlchemy's per-value steps
    return processor


def _money_text(d: Decimal) -> str:
    return format(d, "f")


def _sqlite_utc_text(v: datetime) -> str:
    u = v if v.tzinfo is UTC else valid_utc(v, "value")
    return u.isoformat(" ", "microseconds")[:26]  # without its "+00:00"


# --------------------------------------------------------------------------- schema

metadata = sa.MetaData()
"""Every table of the reference database (``metadata.create_all`` runs on first use)."""

_Id = sa.String(_MAX_ID_LEN)
# SQLite autoincrements only an INTEGER PRIMARY KEY; elsewhere 64 bits.
_Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

balances = sa.Table(
    "balances",
    metadata,
    sa.Column("account", sa.String(_MAX_ID_LEN), primary_key=True),
    sa.Column("balance", Money(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

balance_changes = sa.Table(
    "balance_changes",
    metadata,
    sa.Column("id", _Serial, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(_MAX_ID_LEN), nullable=False, index=True),
    sa.Column("delta", Money(), nullable=False),
    sa.Column("balance_after", Money(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("changed_at", UTCDateTime(), nullable=False),
)

trading_sessions = sa.Table(
    "trading_sessions",
    metadata,
    sa.Column("session_id", _Id, primary_key=True),
    sa.Column("strategy", sa.String(200), nullable=False),
    sa.Column("mode", sa.String(32), nullable=False),
    sa.Column("initial_balance", Money(), nullable=True),
    sa.Column("final_balance", Money(), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
)

trades = sa.Table(
    "trades",
    metadata,
    sa.Column("trade_id", _Id, primary_key=True),
    sa.Column("session_id", _Id, nullable=True, index=True),
    sa.Column("symbol", sa.String(_MAX_ID_LEN), nullable=False),
    sa.Column("side", sa.String(16), nullable=False),
    sa.Column("quantity", Money(), nullable=False),
    sa.Column("price", Money(), nullable=False),
    sa.Column("pnl", Money(), nullable=True),
    sa.Column("executed_at", UTCDateTime(), nullable=False),
)

positions = sa.Table(
    "positions",
    metadata,
    sa.Column("position_id", _Id, primary_key=True),
    sa.Column("session_id", _Id, nullable=True, index=True),
    sa.Column("symbol", sa.String(_MAX_ID_LEN), nullable=False),
    sa.Column("side", sa.String(16), nullable=False),
    sa.Column("quantity", Money(), nullable=False),
    sa.Column("entry_price", Money(), nullable=False),
    sa.Column("current_price", Money(), nullable=True),
    sa.Column("stop_loss", Money(), nullable=True),
    sa.Column("take_profit", Money(), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),  # "open" or "closed"
    sa.Column("exit_price", Money(), nullable=True),
    sa.Column("pnl", Money(), nullable=True),
    sa.Column("opened_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("closed_at", UTCDateTime(), nullable=True),
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", _Serial, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, index=True),
    sa.Column("value", sa.Float(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
)

wal_applied = sa.Table(
    "wal_applied",
    metadata,
    sa.Column("entry_id", _Id, primary_key=True),
    sa.Column("lsn", sa.BigInteger(), nullable=True),
    sa.Column("operation", sa.String(_MAX_ID_LEN), nullable=False),
    sa.Column("applied_at", UTCDateTime(), nullable=False),
)

# The idempotency keys of the applied entries that were given one, beside the ledger: a key
# stays known here after the log compacts its entry away, so a re-sent key is never applied
# twice (unique: a second entry with a key already here is skipped as a duplicate).
MAX_KEY_LEN: Final = 255
wal_applied_keys = sa.Table(
    "wal_applied_keys",
    metadata,
    sa.Column("idempotency_key", sa.String(MAX_KEY_LEN), primary_key=True),
    sa.Column("entry_id", _Id, nullable=False),
    sa.Column("applied_at", UTCDateTime(), nullable=False),
)

# One row (key 1): a random id given to this database the first time the log applies to it.
# A backup carries it; another database has another id (or none), so the log can tell them apart.
wal_database_id = sa.Table(
    "wal_database_id",
    metadata,
    sa.Column("key", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("database_id", sa.String(_MAX_ID_LEN), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# --------------------------------------------------------------------------- validation


def valid_money(value: object, name: str) -> Decimal:
    """An exact money value with 10 places; raise naming ``name`` for anything else."""
    if type(value) is Decimal:  # the common case first: no conversion to try
        d = value
    else:
        if isinstance(value, bool | float) or not isinstance(value, Decimal | int | str):
            raise ArgumentTypeError(
                name,
                f"{name} must be a Decimal (or int or str), got {type(value).__name__} "
                f"{value!r}: money is never float",
            )
        try:
            d = value if isinstance(value, Decimal) else Decimal(value, _WIDE)
        except InvalidOperation:
            raise ArgumentValueError(name, f"{name}={value!r} is not a decimal number") from None
    if not d.is_finite():
        raise ArgumentValueError(name, f"{name} must be finite, got {d}")
    if d and d.adjusted() >= _INT_DIGITS:
        raise ArgumentValueError(
            name, f"{name}={d} is out of range: at most {_INT_DIGITS} integer digits"
        )
    q = d.quantize(_QUANTUM, context=_WIDE)
    if q != d:
        raise ArgumentValueError(
            name, f"{name}={d} has more than {_SCALE} decimal places; round it first"
        )
    return q if q else q.copy_abs()  # no negative zero


def valid_opt_money(value: object, name: str) -> Decimal | None:
    return None if value is None else valid_money(value, name)


def valid_positive(value: object, name: str) -> Decimal:
    d = valid_money(value, name)
    if d <= 0:
        raise ArgumentValueError(name, f"{name} must be positive, got {d}")
    return d


def valid_opt_positive(value: object, name: str) -> Decimal | None:
    return None if value is None else valid_positive(value, name)


def valid_text(value: object, name: str, max_len: int = _MAX_ID_LEN, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError(name, f"{name} must be a str, got {type(value).__name__} {value!r}")
    if not value and not empty:
        raise ArgumentValueError(name, f"{name} must not be empty")
    if len(value) > max_len:
        raise ArgumentValueError(name, f"{name} is {len(value)} characters long; at most {max_len}")
    if not value.isascii() or "\x00" in value:
        _storable_text(value, name)
    return value


def _storable_text(value: str, name: str) -> None:
    """Text both databases store as given: no NUL (PostgreSQL refuses it) and valid UTF-8
    (a lone surrogate cannot be encoded)."""
    if "\x00" in value:
        raise ArgumentValueError(
            name, f"{name} contains a NUL character, which the database cannot store"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentValueError(
            name, f"{name} is not valid Unicode text (a lone surrogate)"
        ) from None


def valid_id(value: object, name: str) -> str:
    """An id given by the caller: a non-empty str (or a UUID, stored as its text)."""
    return str(value) if isinstance(value, uuid.UUID) else valid_text(value, name)


def valid_new_id(value: object, name: str) -> str:
    return str(uuid.uuid4()) if value is None else valid_id(value, name)


def valid_opt_id(value: object, name: str) -> str | None:
    return None if value is None else valid_id(value, name)


def valid_utc(value: object, name: str) -> datetime:
    """A datetime in UTC; a naive one is taken as UTC (the effects: entries already logged)."""
    if not isinstance(value, datetime):
        raise ArgumentTypeError(
            name, f"{name} must be a datetime, got {type(value).__name__} {value!r}"
        )
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ArgumentValueError(
            name, f"{name}={value!r} has no UTC equivalent (out of range)"
        ) from None


def valid_when(value: object, name: str) -> datetime:
    return utc_now() if value is None else valid_utc(value, name)


def valid_aware(value: object, name: str) -> datetime:
    """A caller's time: an aware datetime (in any zone), as UTC. A naive one is refused: it
    says nothing of its zone (``datetime.now()`` is local time), so taking it as UTC would
    store it hours off on a host that is not on UTC."""
    if isinstance(value, datetime) and value.utcoffset() is None:
        raise ArgumentValueError(
            name,
            f"{name}={value.isoformat()} is naive (no tzinfo); pass an aware datetime, "
            "e.g. datetime.now(UTC)",
        )
    return valid_utc(value, name)


def valid_side(value: object, name: str, sides: tuple[str, ...]) -> str:
    """One of ``sides`` exactly (lower case)."""
    if not isinstance(value, str):
        raise ArgumentTypeError(name, f"{name} must be a str, got {type(value).__name__} {value!r}")
    if value not in sides:
        raise ArgumentValueError(
            name, f"{name}={value[:40]!r} is not {' or '.join(repr(s) for s in sides)}"
        )
    return value
