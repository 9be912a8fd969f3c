"""Bad input never becomes durable (issue 20, item 5).

Every critical call of ``DurableDatabaseManager`` (blocking, asyncio, and the order journal's
group path ``journal_orders``) is driven by Hypothesis with hostile values in each argument:
floats, NaN and infinite decimals, too many digits or places, bools, wrong types, text too
long, empty, with NUL or a lone surrogate, datetimes with no UTC equivalent, integers out of
their column's range, unknown and missing arguments. After each call either

* it was refused with ONE ``WALArgumentError`` naming the argument, and the log and the
  database are exactly as before (no entry, no row), or
* the value was a valid one after all, and the database applied it (no entry is left pending
  with an error or dead-lettered for its values).

Real parts: a log directory and a SQLite file, or the PostgreSQL fixture.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from trading_child import fast_config, make_outage

from wal import DurableDatabaseManager, WALEntryStatus, WALStorage
from wal.db import DatabaseManager
from wal.db.checks import CHECKS
from wal.db.schema import metadata
from wal.entry import OperationType
from wal.errors import WALArgumentError

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
STRESS = os.environ.get("WAL_STRESS") == "1"

HOSTILE: list[Any] = [
    1.5,
    float("nan"),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    Decimal("1E+30"),
    Decimal("1e18"),
    Decimal("0.00000000001"),
    Decimal("-1"),
    Decimal(0),
    Decimal("-0"),
    True,
    False,
    0,
    -1,
    2**31,
    2**63,
    10**40,
    "",
    "x" * 65,
    "x" * 129,
    "x" * 1001,
    "a\x00b",
    "\ud800",
    "nan",
    "1e400",
    b"bytes",
    [1],
    {"a": 1},
    None,
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
    datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
    "2026-01-01",
    uuid.uuid4(),
    object(),
]


def valid_calls(ctx: dict[str, str]) -> dict[str, dict[str, Any]]:
    """One valid call of each critical operation (ids from ``ctx``: rows that exist)."""
    cid = ctx["order"]
    return {
        "atomic_balance_update": {"delta": Decimal("5"), "reason": "r", "account": "acct"},
        "log_trade": {
            "symbol": "AAPL",
            "side": "buy",
            "quantity": Decimal("1"),
            "price": Decimal("10"),
            "session_id": ctx["session"],
            "pnl": Decimal("0.5"),
            "executed_at": NOW,
        },
        "log_position": {
            "symbol": "AAPL",
            "side": "long",
            "quantity": Decimal("1"),
            "entry_price": Decimal("10"),
            "stop_loss": Decimal("9"),
            "take_profit": Decimal("11"),
            "opened_at": NOW,
        },
        "update_position": {
            "position_id": ctx["position"],
            "stop_loss": Decimal("8"),
            "take_profit": Decimal("12"),
            "quantity": Decimal("2"),
            "current_price": Decimal("10"),
            "entry_price": Decimal("10"),
        },
        "close_position": {
            "position_id": ctx["position"],
            "exit_price": Decimal("11"),
            "pnl": Decimal("1"),
            "closed_at": NOW,
        },
        "create_trading_session": {
            "strategy": "s",
            "mode": "paper",
            "initial_balance": Decimal("100"),
            "started_at": NOW,
        },
        "end_trading_session": {
            "session_id": ctx["session"],
            "final_balance": Decimal("100"),
            "ended_at": NOW,
        },
        "record_order_intent": {
            "client_order_id": f"c{uuid.uuid4().hex[:20]}",
            "symbol": "AAPL",
            "side": "buy",
            "quantity": Decimal("3"),
            "order_type": "limit",
            "limit_price": Decimal("10"),
            "time_in_force": "day",
            "account": "acct",
            "created_at": NOW,
        },
        "record_order_event": {
            "client_order_id": cid,
            "seq": 2,
            "kind": "submitted",
            "state": "submitting",
            "at": NOW,
            "broker_order_id": "b1",
            "reason": "why",
        },
        "record_order_fill": {
            "execution_id": f"x{uuid.uuid4().hex[:20]}",
            "execution_key": f"x{uuid.uuid4().hex[:20]}",
            "client_order_id": cid,
            "symbol": "AAPL",
            "side": "buy",
            "quantity": Decimal("1"),
            "price": Decimal("10"),
            "executed_at": NOW,
            "seq": 2,
            "kind": "fill",
            "state": "partially_filled",
            "filled_quantity": Decimal("1"),
            "avg_fill_price": Decimal("10"),
            "trade_id": uuid.uuid4().hex,
            "pnl": None,
            "position_ops": [
                {
                    "op": "log_position",
                    "kwargs": {
                        "position_id": f"ord-{uuid.uuid4().hex}",
                        "symbol": "AAPL",
                        "side": "long",
                        "quantity": Decimal("1"),
                        "entry_price": Decimal("10"),
                    },
                }
            ],
            "account": "acct",
            "fee": Decimal("0.1"),
            "cash": Decimal("-10.1"),
        },
        "record_order_anchor": {"seq": 10**6, "hash": "h" * 64, "at": NOW, "reason": "test"},
    }


# arguments naming rows that must exist: a valid but different value fails on the state
REFERENCES = {"position_id", "session_id", "client_order_id", "seq", "kind", "state", "cash"}
# the position operation of a fill, hostile values put inside it
FILL_POS_ARGS = ("symbol", "side", "quantity", "entry_price", "position_id")


class Stack:
    def __init__(self, root: Path, url: str) -> None:
        config = fast_config(root / "wal", url, max_retries=1)  # a refusal dead-letters at once
        self.db = DatabaseManager(url)
        self.storage = WALStorage(config.directory, config.storage_options())
        self.ddb = DurableDatabaseManager(self.db, config=config, storage=self.storage)

    def fresh_context(self) -> dict[str, str]:
        """A session, an open position and an order at seq 1: the rows the calls refer to."""
        ddb = self.ddb
        session = ddb.create_trading_session(strategy="s")
        position = ddb.log_position(
            symbol="AAPL", side="long", quantity=Decimal(1), entry_price=Decimal(10)
        )
        cid = f"c{uuid.uuid4().hex[:20]}"
        ddb.record_order_intent(
            idempotency_key=cid,
            client_order_id=cid,
            symbol="AAPL",
            side="buy",
            quantity=Decimal("3"),
            order_type="limit",
            limit_price=Decimal("10"),
            account="acct",
        )
        return {"session": str(session), "position": str(position), "order": cid}

    def snapshot(self) -> tuple[int, int, dict[str, list[tuple[Any, ...]]]]:
        tables: dict[str, list[tuple[Any, ...]]] = {}
        with self.db.engine.connect() as conn:
            for t in metadata.sorted_tables:
                tables[t.name] = sorted(
                    (tuple(map(repr, r)) for r in conn.execute(sa.select(t))), key=repr
                )
        pending = self.storage.count(WALEntryStatus.PENDING) + self.storage.count(
            WALEntryStatus.SYNCING
        )
        return self.storage.last_lsn, pending, tables

    def close(self) -> None:
        self.ddb.stop()
        self.storage.close()
        self.db.dispose()


@pytest.fixture
def stack(db_url: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, db_url)
    s.ddb.start()
    yield s
    s.close()


def _call(stack: Stack, op: str, kwargs: dict[str, Any], how: str) -> Any:
    ddb = stack.ddb
    if how == "journal" and op.startswith("record_order"):
        return ddb.journal_orders([(op, kwargs, None)])
    if how == "async" and not op.startswith("record_order"):
        fn = getattr(ddb, f"{op}_async")

        async def go() -> Any:
            return await fn(**kwargs)

        return asyncio.run(go())
    return getattr(ddb, op)(**kwargs)


OPS = sorted(valid_calls({"order": "c", "session": "s", "position": "p"}))


def test_every_critical_operation_has_a_check_and_a_case_here() -> None:
    critical = {op.value for op in OperationType}
    assert set(CHECKS) == critical
    assert len(OPS) == len(critical)


@settings(
    max_examples=1000 if STRESS else 150,
    derandomize=not STRESS,  # deterministic in CI; WAL_STRESS=1 soaks with random seeds
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    op=st.sampled_from(OPS),
    which=st.integers(0, 40),
    value=st.sampled_from(HOSTILE),
    how=st.sampled_from(["sync", "async", "journal"]),
    inside=st.booleans(),
)
@example(op="atomic_balance_update", which=2, value=1, how="sync", inside=False)  # the issue's
@example(op="record_order_fill", which=0, value="a\x00b", how="journal", inside=True)
@example(op="record_order_event", which=1, value=True, how="journal", inside=False)
@example(op="record_order_anchor", which=0, value=2**31, how="sync", inside=False)
def test_hostile_values_are_refused_before_the_log(
    stack: Stack, op: str, which: int, value: Any, how: str, inside: bool
) -> None:
    ctx = stack.fresh_context()
    call = valid_calls(ctx)[op]
    names = [*sorted(call), "unexpected_argument", "<missing>"]
    name = names[which % len(names)]
    target = call
    if op == "record_order_fill" and inside:
        target = call["position_ops"][0]["kwargs"]
        name = FILL_POS_ARGS[which % len(FILL_POS_ARGS)]
    if name == "<missing>":
        required = [n for n in sorted(target) if n not in ("reason", "pnl")]
        name = required[which % len(required)]
        del target[name]
    else:
        target[name] = value
    stack.ddb.force_sync()
    failed_before = stack.storage.count(WALEntryStatus.FAILED)
    before = stack.snapshot()
    try:
        _call(stack, op, call, how)
    except WALArgumentError as exc:
        assert exc.operation in (op, "get_balance")
        assert exc.argument != ""
        assert stack.snapshot() == before, "a refused call changed the log or the database"
        return
    except TypeError as exc:  # Python's own refusal of the wrapper's signature
        assert name in str(exc) and ("unexpected" in str(exc) or "missing" in str(exc)), exc
        assert stack.snapshot() == before, "a refused call changed the log or the database"
        return
    # accepted: a valid value after all; the database must take it (for its values)
    stack.ddb.force_sync()
    failed = stack.storage.count(WALEntryStatus.FAILED) - failed_before
    if name not in REFERENCES and not inside:
        assert failed == 0, f"{op}({name}={value!r}) was logged but the database refused it"


def test_an_update_whose_new_balance_overflows_the_column_is_refused(stack: Stack) -> None:
    ddb = stack.ddb
    big = Decimal("900000000000000000")  # 9e17: fits, twice does not (at most 18 digits)
    ddb.atomic_balance_update(big, account="big")
    assert ddb.get_balance("big") == big
    assert ddb.drain(timeout=30) == 0  # applied behind: nothing moves between the snapshots
    before = stack.snapshot()
    with pytest.raises(WALArgumentError, match="delta"):
        ddb.atomic_balance_update(big, account="big")
    assert stack.snapshot() == before
    assert ddb.get_balance("big") == big


# --------------------------------------------------------------------------- which argument

NAIVE = datetime(2026, 1, 2, 3, 4, 5)  # no tzinfo: datetime.now() on a host is local time


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        # a value that looks like a name is not the argument's name
        (
            lambda d: d.log_trade(symbol="X", side="buy", quantity="abc", price=Decimal(1)),
            "quantity",
        ),
        (
            lambda d: d.log_trade(symbol="X", side="buy", quantity=Decimal(1), price="price"),
            "price",
        ),
        (
            lambda d: d.create_trading_session(strategy="s", initial_balance="mode"),
            "initial_balance",
        ),
        (
            lambda d: asyncio.run(
                d.log_position_async(
                    symbol="X", side="long", quantity="size", entry_price=Decimal(1)
                )
            ),
            "quantity",
        ),
        # calls that do not bind: the parameter Python's message names, or *args
        (
            lambda d: d.log_trade("X", "buy", Decimal(1), Decimal(1), None, None, None, None),
            "*args",
        ),
        (lambda d: d.close_position(exit_price=Decimal(1)), "position_id"),
        (
            lambda d: d.log_trade(
                symbol="X", side="buy", quantity=Decimal(1), price=Decimal(1), too=1
            ),
            "too",
        ),
        (lambda d: d.update_position("p", position_id="p"), "position_id"),
        # the order journal's group path
        (
            lambda d: d.journal_orders(
                [
                    (
                        "record_order_event",
                        {
                            "client_order_id": "c",
                            "seq": "kind",
                            "kind": "k",
                            "state": "s",
                            "at": NOW,
                        },
                        None,
                    )
                ]
            ),
            "seq",
        ),
    ],
)
def test_the_refusal_names_the_argument_not_a_word_of_its_message(
    stack: Stack, call: Any, argument: str
) -> None:
    stack.fresh_context()  # the schema (the snapshot reads every table)
    stack.ddb.force_sync()
    before = stack.snapshot()
    with pytest.raises(WALArgumentError) as e:
        call(stack.ddb)
    assert e.value.argument == argument, str(e.value)
    assert f"({argument}=...)" in str(e.value)
    assert stack.snapshot() == before


# --------------------------------------------------------------------------- sides and times

ODD_VALUES = [
    ("log_trade", "side", "hodl", "side='hodl' is not 'buy' or 'sell'"),
    ("log_trade", "side", "long", "is not 'buy' or 'sell'"),
    ("log_trade", "side", "BUY", "is not 'buy' or 'sell'"),
    ("log_trade", "executed_at", NAIVE, "is naive"),
    ("log_position", "side", "up", "side='up' is not 'long' or 'short'"),
    ("log_position", "side", "buy", "is not 'long' or 'short'"),
    ("log_position", "opened_at", NAIVE, "is naive"),
    ("close_position", "closed_at", NAIVE, "is naive"),
    ("create_trading_session", "started_at", NAIVE, "is naive"),
    ("end_trading_session", "ended_at", NAIVE, "is naive"),
    ("record_order_intent", "created_at", NAIVE, "is naive"),
]


@pytest.mark.parametrize(("op", "name", "value", "problem"), ODD_VALUES)
@pytest.mark.parametrize("how", ["sync", "async", "journal"])
def test_a_side_the_column_does_not_mean_or_a_naive_time_is_refused_before_the_log(
    stack: Stack, op: str, name: str, value: Any, problem: str, how: str
) -> None:
    """``side="hodl"`` and a naive ``datetime`` were logged and applied (a naive time taken
    as UTC: hours off on a host in another zone). Refused, naming the argument; nothing is
    written (the *_async variants and the journal's group path too)."""
    ctx = stack.fresh_context()
    call = valid_calls(ctx)[op]
    call[name] = value
    stack.ddb.force_sync()
    before = stack.snapshot()
    with pytest.raises(WALArgumentError) as e:
        _call(stack, op, call, how)
    assert (e.value.operation, e.value.argument) == (op, name)
    assert problem in str(e.value)
    assert stack.snapshot() == before


def test_an_aware_time_in_another_zone_is_the_same_instant(stack: Stack) -> None:
    plus5 = timezone(timedelta(hours=5))
    tid = stack.ddb.log_trade(
        symbol="X",
        side="sell",
        quantity=Decimal(1),
        price=Decimal(1),
        executed_at=NOW.astimezone(plus5),
    )
    assert stack.ddb.drain(timeout=30) == 0
    (trade,) = [t for t in stack.db.get_trades() if t["trade_id"] == tid]
    assert trade["executed_at"] == NOW


def test_refused_while_the_database_is_down(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With the database unreachable the log takes every call (it applies them later): a
    bad one must still be refused before it is logged, not dead-lettered when it comes back."""
    outage = make_outage(db_url, request)
    s = Stack(tmp_path, db_url)
    outage.attach(s.db)
    s.ddb.start()
    try:
        ctx = s.fresh_context()
        assert s.ddb.drain(timeout=30) == 0
        before = s.snapshot()
        outage.begin()
        for op, name, value, problem in ODD_VALUES:
            call = valid_calls(ctx)[op]
            call[name] = value
            for how in ("sync", "async"):
                with pytest.raises(WALArgumentError) as e:
                    _call(s, op, dict(call), how)
                assert e.value.argument == name and problem in str(e.value)
        assert s.storage.last_lsn == before[0]
        outage.end()
        assert s.ddb.drain(timeout=30) == 0
        assert s.snapshot() == before
        assert s.storage.count(WALEntryStatus.FAILED) == 0
    finally:
        outage.close()
        s.close()
