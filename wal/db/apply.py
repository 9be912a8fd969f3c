"""Exactly-once replay of a batch of log entries (``DatabaseManager.apply`` runs it).

The caller holds one open transaction. ``apply_batch`` looks the batch's ids up in the
``wal_applied`` ledger with one query, then tries the whole batch in ONE savepoint: the ledger
rows of the new entries first (in LSN order, one statement), then their effects, consecutive
INSERT-only operations (``INSERT_ONLY``) as one multi-row insert. If any entry fails, that
savepoint is rolled back and the batch runs entry by entry, each in its own savepoint with its
ledger row, so that a permanent error undoes that entry only. A transient error propagates.

Multi-row inserts bypass SQLAlchemy's per-row parameter processing: one ``executemany`` of
tuples on SQLite, one ``INSERT ... SELECT * FROM unnest(<one array per column>)`` on
PostgreSQL. The values are converted as the column types would convert them
(``db_schema.bulk_binder``), from rows the validators in ``db_schema`` already checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect

from wal.db.classify import describe_error, is_transient
from wal.db.operations import INSERT_ONLY, lock_balance, set_balance_statement
from wal.db.operations import OPERATIONS as _BASE_OPERATIONS
from wal.db.orders import ORDER_OPERATIONS
from wal.db.schema import (
    balance_changes,
    balances,
    bulk_binder,
    valid_money,
    valid_text,
    wal_applied,
    wal_applied_keys,
)
from wal.entry import OperationType, WALEntry, utc_now
from wal.money import exact

__all__ = [
    "ApplyResult",
    "applied_in",
    "apply_batch",
    "balance_and_applied_row",
    "balance_and_applied_sql",
    "keys_in",
    "pg_ledger_probe",
]

# every effect ``apply`` may run: the trading operations and the order journal's
OPERATIONS = {**_BASE_OPERATIONS, **ORDER_OPERATIONS}


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply`` did with one entry.

    ``"applied"``: the effect and the ledger row were committed; ``value`` is what the
    operation returned (the new balance, the trade id, ...). ``"duplicate"``: the ledger
    already had the entry; nothing was done. ``"error"``: the database refused it for a
    permanent reason, given in ``error``; nothing of it was committed.
    """

    entry_id: str
    outcome: Literal["applied", "duplicate", "error"]
    value: Any = None
    error: str | None = None


def _key(entry: WALEntry) -> str | None:
    """The idempotency key the caller gave the entry (None: its own id, nothing to keep)."""
    return entry.idempotency_key if entry.has_explicit_key else None


def apply_batch(conn: Connection, entries: Sequence[WALEntry]) -> list[ApplyResult]:
    """Apply ``entries`` in order inside ``conn``'s open transaction; one result each.

    An entry whose idempotency key is already held by another applied entry (in
    ``wal_applied_keys``: a re-sent key after the log compacted the first entry away, or two
    entries of one key in the log) is a ``"duplicate"``: the key's effect exists once."""
    ids = [str(e.entry_id) for e in entries]
    done = applied_in(conn, ids)
    keys = keys_in(conn, [k for e in entries if (k := _key(e)) is not None])
    results = _apply_fast(conn, entries, ids, done, keys)
    if results is None:  # an entry failed: one savepoint per entry isolates it
        results = [
            _apply_one(conn, e, eid, done, keys) for e, eid in zip(entries, ids, strict=True)
        ]
    return results


def _held(entry: WALEntry, eid: str, keys: dict[str, str]) -> bool:
    """The entry's key belongs to another applied entry: its effect exists already."""
    k = _key(entry)
    return k is not None and keys.get(k, eid) != eid


def _apply_fast(
    conn: Connection,
    entries: Sequence[WALEntry],
    ids: list[str],
    done: set[str],
    keys: dict[str, str],
) -> list[ApplyResult] | None:
    """The whole batch in ONE savepoint; None if any entry fails (the savepoint is rolled
    back and the caller goes entry by entry)."""
    todo: list[tuple[WALEntry, str]] = []
    taken = dict(keys)  # the keys held, and those this batch takes (all or none commit)
    for e, eid in zip(entries, ids, strict=True):
        if eid in done or _held(e, eid, taken):
            continue
        k = _key(e)
        if k is not None:
            taken[k] = eid
        todo.append((e, eid))
    if any(e.operation not in OPERATIONS for e, _ in todo):
        return None
    values: dict[str, Any] = {}
    try:
        with conn.begin_nested():  # SAVEPOINT: a failure undoes the whole fast attempt
            if todo:
                # ledger rows first, as in _apply_one: a concurrent applier waits on them
                _insert_ledger(conn, todo)
                _insert_keys(conn, [(k, eid) for e, eid in todo if (k := _key(e)) is not None])
            run: list[tuple[str, dict[str, Any]]] = []  # consecutive INSERT-only entries
            run_op = ""
            # balance updates since the last other effect: INSERT-only effects touch other
            # tables, so the two runs commute; anything else (a position change, a fill that
            # moves cash) ends both first
            bal: list[tuple[str, dict[str, Any]]] = []
            for e, eid in todo:
                if e.operation in INSERT_ONLY and not e.args:
                    if run and e.operation != run_op:
                        _insert_run(conn, run_op, run, values)
                    run_op = e.operation
                    run.append((eid, INSERT_ONLY[e.operation][1](**e.kwargs)))
                    continue
                if e.operation == _BALANCE and not e.args and e.kwargs.keys() <= _BALANCE_KW:
                    bal.append((eid, e.kwargs))
                    continue
                if run:
                    _insert_run(conn, run_op, run, values)
                if bal:
                    _balance_run(conn, bal, values)
                values[eid] = OPERATIONS[e.operation](conn, *e.args, **e.kwargs)
            if run:
                _insert_run(conn, run_op, run, values)
            if bal:
                _balance_run(conn, bal, values)
    except Exception as exc:
        if is_transient(exc):
            raise
        return None
    results = [
        ApplyResult(eid, "applied", value=values[eid])
        if eid in values
        else ApplyResult(eid, "duplicate")
        for eid in ids
    ]
    done.update(values)
    keys.update(taken)
    return results


def _apply_one(
    conn: Connection, entry: WALEntry, eid: str, done: set[str], keys: dict[str, str]
) -> ApplyResult:
    if eid in done or _held(entry, eid, keys):
        return ApplyResult(eid, "duplicate")
    key = _key(entry)
    effect = OPERATIONS.get(entry.operation)
    if effect is None:
        known = ", ".join(sorted(OPERATIONS))
        return ApplyResult(
            eid, "error", error=f"unknown operation {entry.operation!r} (known: {known})"
        )
    try:
        with conn.begin_nested():  # SAVEPOINT: an error undoes this entry only
            # The ledger row first: a concurrent applier of the same entry waits here for
            # our COMMIT, then fails on the key instead of applying the effect twice.
            conn.execute(
                sa.insert(wal_applied).values(
                    entry_id=eid,
                    lsn=entry.lsn,
                    operation=entry.operation,
                    applied_at=utc_now(),
                )
            )
            if key is not None:  # unique: a second entry of this key waits here, then fails
                _insert_keys(conn, [(key, eid)])
            value = effect(conn, *entry.args, **entry.kwargs)
    except Exception as exc:
        if is_transient(exc):
            raise
        if isinstance(exc, sa_exc.IntegrityError):
            if applied_in(conn, [eid]):
                return ApplyResult(eid, "duplicate")  # another applier committed it meanwhile
            if key is not None and keys_in(conn, [key]).get(key, eid) != eid:
                return ApplyResult(eid, "duplicate")  # another entry of this key committed
        return ApplyResult(eid, "error", error=f"{entry.operation}: {describe_error(exc)}")
    done.add(eid)
    if key is not None:
        keys[key] = eid
    return ApplyResult(eid, "applied", value=value)


# --------------------------------------------------------------------------- the ledger

_LEDGER_CHUNK = 500  # ids per IN (...) on SQLite


def applied_in(conn: Connection, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` are in the ledger: one query (PostgreSQL) or one per 500 (SQLite).

    Each asked id is one primary-key probe, whatever the ledger's size: the overlay's reads ask
    about a whole batch in flight while the sync thread applies it, and the sync thread asks
    about each batch before applying it."""
    if not ids:
        return set()
    dialect = conn.dialect
    table = _name(dialect, wal_applied)
    col = _name(dialect, wal_applied.c.entry_id)
    if dialect.name == "postgresql":
        return {row[0] for row in conn.exec_driver_sql(pg_ledger_probe(dialect), (list(ids),))}
    found: set[str] = set()
    for i in range(0, len(ids), _LEDGER_CHUNK):
        chunk = tuple(ids[i : i + _LEDGER_CHUNK])
        marks = ", ".join("?" * len(chunk))
        if not _joinable(chunk):  # one row per id
            sql = f"SELECT {col} FROM {table} WHERE {col} IN ({marks})"
            found.update(row[0] for row in conn.exec_driver_sql(sql, chunk))
            continue
        joined = conn.exec_driver_sql(_sqlite_ledger_joined(dialect, marks), chunk).scalar()
        found.update(_split(joined))
    return found


def _joinable(ids: Sequence[str]) -> bool:
    """The ids can come back joined with commas (ours are uuids; another id may hold one)."""
    return not any("," in i for i in ids)


def _split(joined: object) -> set[str]:
    return set(str(joined).split(",")) if joined else set()


def _sqlite_ledger_joined(dialect: Dialect, marks: str) -> str:
    """SQLite: the ledger's ids among the ``marks`` parameters as ONE row (comma-joined): the
    sqlite3 module lets go of the interpreter lock for every row it steps, and the sync
    thread, busy in Python, keeps it for up to 5 ms each time."""
    table = _name(dialect, wal_applied)
    col = _name(dialect, wal_applied.c.entry_id)
    return f"SELECT group_concat({col}, ',') FROM {table} WHERE {col} IN ({marks})"


def pg_ledger_probe(dialect: Dialect) -> str:
    """PostgreSQL: the ledger's ids among the array parameter, one primary-key probe per id
    (``LIMIT 1`` in a ``LATERAL``): for a few hundred ids the planner runs ``= ANY(...)`` as a
    sequential scan of the whole ledger (10 ms at 100,000 rows, on every read during a drain)."""
    table = _name(dialect, wal_applied)
    col = _name(dialect, wal_applied.c.entry_id)
    return (
        f"SELECT w.{col} FROM unnest(%b::text[]) AS asked(id) CROSS JOIN LATERAL "
        f"(SELECT {col} FROM {table} WHERE {col} = asked.id LIMIT 1) AS w"
    )


def balance_and_applied_sql(
    dialect: Dialect, account: str, ids: Sequence[str]
) -> tuple[str, tuple[Any, ...]] | None:
    """ONE statement (so one snapshot at any isolation level, and one round trip) that reads
    ``account``'s balance and which of ``ids`` the ledger holds, with its parameters (the
    driver's own style); ``balance_and_applied_row`` reads its row. None when ``ids`` are more
    than one SQLite statement takes, or not all uuids (the ids are joined with commas): the
    caller reads them in a snapshot transaction instead."""
    if not _joinable(ids):
        return None
    if dialect.name != "postgresql" and len(ids) > _LEDGER_CHUNK:
        return None
    bal_t, bal_c, acct_c = (
        _name(dialect, balances),
        _name(dialect, balances.c.balance),
        _name(dialect, balances.c.account),
    )
    if dialect.name == "postgresql":
        col = _name(dialect, wal_applied.c.entry_id)
        sql = (
            f"SELECT (SELECT {bal_c} FROM {bal_t} WHERE {acct_c} = %s), "
            f"(SELECT string_agg(p.{col}, ',') FROM ({pg_ledger_probe(dialect)}) AS p)"
        )
        return sql, (account, list(ids))
    joined = _sqlite_ledger_joined(dialect, ", ".join("?" * len(ids)) or "NULL")
    sql = f"SELECT (SELECT {bal_c} FROM {bal_t} WHERE {acct_c} = ?), ({joined})"
    return sql, (account, *ids)


def balance_and_applied_row(row: Sequence[Any]) -> tuple[Decimal, set[str]]:
    """The balance and the applied ids from ``balance_and_applied_sql``'s one row."""
    raw, joined = row
    # the Money column's own conversion (a Decimal from psycopg, the decimal's text on SQLite)
    value = Decimal(0) if raw is None else valid_money(raw, "stored value")
    return value, _split(joined)


def keys_in(conn: Connection, keys: Sequence[str]) -> dict[str, str]:
    """Which of the idempotency ``keys`` are held, and by which entry id (one query per 500)."""
    if not keys:
        return {}
    t = wal_applied_keys
    found: dict[str, str] = {}
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), _LEDGER_CHUNK):
        chunk = unique[i : i + _LEDGER_CHUNK]
        rows = conn.execute(
            sa.select(t.c.idempotency_key, t.c.entry_id).where(t.c.idempotency_key.in_(chunk))
        )
        found.update({str(k): str(e) for k, e in rows})
    return found


def _insert_keys(conn: Connection, rows: list[tuple[str, str]]) -> None:
    """The key rows of newly applied entries (with their ledger rows, in one savepoint)."""
    if rows:
        at = utc_now()
        conn.execute(
            sa.insert(wal_applied_keys),
            [{"idempotency_key": k, "entry_id": eid, "applied_at": at} for k, eid in rows],
        )


def _insert_ledger(conn: Connection, todo: list[tuple[WALEntry, str]]) -> None:
    plan = _plan(conn.dialect, wal_applied, ("entry_id", "lsn", "operation", "applied_at"))
    bind_at = plan.binders[3]
    at = utc_now() if bind_at is None else bind_at(utc_now())  # one time for the batch: bound once
    ids = [eid for _, eid in todo]
    lsns = [e.lsn for e, _ in todo]
    ops = [e.operation for e, _ in todo]
    _execute(conn, plan, [ids, lsns, ops, [at] * len(todo)])


# --------------------------------------------------------------------------- multi-row inserts


def _insert_run(
    conn: Connection, op: str, run: list[tuple[str, dict[str, Any]]], values: dict[str, Any]
) -> None:
    """Insert a run of same-operation rows with one statement; record each entry's value."""
    table, _, id_key = INSERT_ONLY[op]
    cols = tuple(run[0][1])  # one builder made every row: the same keys in the same order
    plan = _plan(conn.dialect, table, cols)
    columns = []
    for c, bind in zip(cols, plan.binders, strict=True):
        if bind is None:
            columns.append([row[c] for _, row in run])
        else:
            columns.append([None if row[c] is None else bind(row[c]) for _, row in run])
    _execute(conn, plan, columns)
    for eid, row in run:
        values[eid] = str(row[id_key])
    run.clear()


_BALANCE = OperationType.BALANCE_UPDATE.value
_BALANCE_KW = frozenset({"delta", "reason", "account"})


@exact
def _balance_run(
    conn: Connection, run: list[tuple[str, dict[str, Any]]], values: dict[str, Any]
) -> None:
    """Balance updates, in order, with one locked read and one UPDATE per account and one
    multi-row INSERT of their ``balance_changes`` rows (``op_balance_update`` makes three
    statements per update). Each entry's value is its own new balance; a bad value raises
    (the caller's savepoint undoes the whole fast attempt, then goes entry by entry)."""
    now = utc_now()
    balances: dict[str, Decimal] = {}
    rows: list[tuple[str, Decimal, Decimal, str]] = []
    for eid, kw in run:
        if kw.get("delta") is None:
            raise TypeError("atomic_balance_update needs a delta")
        d = valid_money(kw["delta"], "delta")
        acct = valid_text(kw.get("account", "default"), "account")
        why = valid_text(kw.get("reason", ""), "reason", 1000, empty=True)
        if acct not in balances:
            balances[acct] = lock_balance(conn, acct)  # row-locked until the COMMIT
        new = valid_money(balances[acct] + d, f"the new balance of {acct!r}")
        balances[acct] = new
        rows.append((acct, d, new, why))
        values[eid] = new
    for acct, new in balances.items():
        conn.execute(set_balance_statement(), {"acct": acct, "bal": new, "at": now})
    cols = ("account", "delta", "balance_after", "reason", "changed_at")
    plan = _plan(conn.dialect, balance_changes, cols)
    columns: list[list[Any]] = [[], [], [], [], []]
    for i, col in enumerate((*zip(*rows, strict=True), [now] * len(rows))):
        bind = plan.binders[i]
        columns[i] = list(col) if bind is None else [bind(v) for v in col]
    _execute(conn, plan, columns)
    run.clear()


@dataclass(frozen=True)
class _Plan:
    sql: str
    binders: tuple[Callable[[Any], Any] | None, ...]


_PLANS: dict[tuple[str, str, tuple[str, ...]], _Plan] = {}


def _name(dialect: Dialect, what: sa.Table | sa.Column[Any]) -> str:
    prep = dialect.identifier_preparer
    return prep.format_table(what) if isinstance(what, sa.Table) else prep.quote(what.name)


def _plan(dialect: Dialect, table: sa.Table, cols: tuple[str, ...]) -> _Plan:
    key = (dialect.name, table.name, cols)
    plan = _PLANS.get(key)
    if plan is None:
        columns = [table.c[c] for c in cols]
        names = ", ".join(_name(dialect, c) for c in columns)
        if dialect.name == "postgresql":
            # binary arrays (psycopg dumps text ones in Python) of the unsized types: the
            # INSERT's assignment checks lengths and precision as a plain INSERT does
            arrays = ", ".join(
                "%b::" + re.sub(r"\(.*?\)", "", c.type.compile(dialect=dialect)) + "[]"
                for c in columns
            )
            sql = f"INSERT INTO {_name(dialect, table)} ({names}) SELECT * FROM unnest({arrays})"
        else:
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {_name(dialect, table)} ({names}) VALUES ({marks})"
        plan = _PLANS[key] = _Plan(sql, tuple(bulk_binder(c.type, dialect) for c in columns))
    return plan


def _execute(conn: Connection, plan: _Plan, columns: list[list[Any]]) -> None:
    """Insert rows given column by column (``columns[i]`` holds every row's i-th value)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(plan.sql, tuple(columns))
        return
    conn.exec_driver_sql(plan.sql, list(zip(*columns, strict=True)))  # one executemany
