"""What a critical call costs, end to end, beside the same work done directly (issue 22).

Every row times a public call as a trading engine makes it, with the entry's creation (the
arguments bound, the id made, the entry built) inside the timed path:

* ``DurableDatabaseManager.log_trade`` and ``atomic_balance_update`` with the database up, from
  1 and N threads (``bench_ddb_calls``), and ``log_trade_async`` from many coroutines
  (``bench_ddb_async``), on SQLite or PostgreSQL;
* the same work done directly: one INSERT + COMMIT per call into SQLite in WAL mode with
  ``synchronous=FULL`` (``bench_sqlite_direct``) and into PostgreSQL with
  ``synchronous_commit=on`` (``bench_pg_direct``);
* ``OrderManager.submit`` in process against the in-process ``PaperBroker``, and the journal
  part of it before the broker call (``bench_order_submit``).

The limit beside them is :func:`wal.tools.bench_disk.bench_raw` (write + fdatasync per
record). ``call_specs`` lists them all for :func:`wal.tools.bench.run_interleaved`;
``call_ratios`` gives each issue-22 target its measured ratio and ``calls_markdown`` the
table with p50/p90/p99/max.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from wal.config import WALConfig
from wal.db.manager import DatabaseManager
from wal.orders import OrderIntent, OrderManager, PaperBroker, RetryPolicy, RiskLimits
from wal.sync.durable import DurableDatabaseManager
from wal.tools.bench_results import Measurement, latency_row, percentile
from wal.tools.bench_workload import fresh_dir, gather_calls, run_calls

__all__ = [
    "APPLY_MODES",
    "DOWN_URL",
    "CallRatio",
    "bench_ddb_async",
    "bench_ddb_calls",
    "bench_order_submit",
    "bench_pg_direct",
    "bench_sqlite_direct",
    "call_ratios",
    "call_row_names",
    "call_specs",
    "calls_markdown",
    "drop_pg_database",
    "finish_call_row",
    "fresh_pg_database",
    "spread",
]


# ---------------------------------------------------------------------------- workload

WARMUP = 5  # untimed calls before each wrapper row
_LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "down": "database down"}


def trade_kwargs(i: int) -> dict[str, Any]:
    """A realistic trade's arguments, made inside the timed call (as an engine makes them)."""
    return {
        "symbol": "BTCUSDT" if i % 2 == 0 else "ETHUSDT",
        "side": "buy" if i % 3 else "sell",
        "quantity": Decimal("0.01250000") + Decimal(i % 97) / Decimal(10_000),
        "price": Decimal("67321.45") + Decimal(i % 1_000) / Decimal(100),
        "executed_at": datetime.now(UTC),
    }


def spread(m: Measurement) -> dict[str, float]:
    """p50, p90, p99 and max of a row's per-call latency, in µs (its samples must be kept)."""
    lat = sorted(m.samples_ns)
    if not lat:
        return {}
    return {
        "p50": percentile(lat, 0.50),
        "p90": percentile(lat, 0.90),
        "p99": percentile(lat, 0.99),
        "max": lat[-1] / 1000.0,
    }


def _row(name: str, label: str, n: int, secs: float, threads: int, lat: list[int]) -> Measurement:
    m = Measurement(name, "this project", label, n, secs, threads, 1, per_s=n / secs)
    return finish_call_row(latency_row(m, lat))


def finish_call_row(m: Measurement) -> Measurement:
    """Put p50/p90/p99/max in ``m.extra`` and, for a wrapper row, the log fsyncs per call
    (again after ``merge_rounds``, which pools samples and sums ``fsyncs``)."""
    m.extra.update({k: round(v, 1) for k, v in spread(m).items()})
    if "fsyncs" in m.extra and m.ops:
        per = int(m.extra["fsyncs"]) / m.ops
        m.note = f"{per:.2f} log fsyncs per call"
        if "drained_after_s" in m.extra:
            m.note += f"; backlog applied {m.extra['drained_after_s']:.2f} s after the last call"
        elif "pending_at_stop" in m.extra:
            m.note += f"; {m.extra['pending_at_stop']} left in the log (database down)"
    return m


# ---------------------------------------------------------------------------- the wrapper


# a database that cannot be reached: nothing listens on port 9 (discard) of the loopback, so
# every connection attempt is refused at once; the call's cost is then the log's alone
DOWN_URL = "postgresql://atb@127.0.0.1:9/atb"
APPLY_MODES = ("behind", "inline")


def _open_ddb(
    work: Path, url: str | None, apply: str = "behind"
) -> tuple[DurableDatabaseManager, DatabaseManager]:
    db_url = url if url is not None else f"sqlite:///{work / 'atb.db'}"
    cfg = WALConfig.from_env({}, directory=work / "wal", database_url=db_url, apply_mode=apply)
    db = DatabaseManager(db_url)
    if db_url != DOWN_URL:
        db.database_id(create=True)  # the tables made before timing, not by the first call
    ddb = DurableDatabaseManager(db, config=cfg)
    ddb.start()
    for i in range(WARMUP):  # the pool's connections and compiled statements, untimed
        ddb.log_trade(**trade_kwargs(i))
        ddb.atomic_balance_update(Decimal(0), reason="warm-up", account=f"acct-{i}")
    if db_url != DOWN_URL:
        ddb.drain(30.0)  # start timing with nothing pending
    return ddb, db


def _finish(ddb: DurableDatabaseManager, m: Measurement, fsyncs: int, down: bool) -> None:
    """Record the run's log fsyncs and how long the backlog took to reach the database
    after the last call returned (behind: the applier's lag; 0 when it kept up)."""
    m.extra["fsyncs"] = fsyncs
    if down:
        m.extra["pending_at_stop"] = ddb.stop(1.0)
        return
    t0 = time.perf_counter()
    left = ddb.drain(60.0)
    m.extra["drained_after_s"] = round(time.perf_counter() - t0, 3)
    m.extra["pending_at_stop"] = left + ddb.stop(10.0)


def _know_balances(ddb: DurableDatabaseManager, op: str, accounts: int, db_name: str) -> None:
    """Read each account's balance once, untimed: an engine knows its accounts' balances
    after its first read, and then ``atomic_balance_update`` needs no database read."""
    if op == "atomic_balance_update" and db_name != "down":
        for i in range(accounts):
            ddb.get_balance(f"acct-{i}")


def _db_name(url: str | None) -> str:
    return "sqlite" if url is None else ("down" if url == DOWN_URL else "postgresql")


def _suffix(apply: str) -> str:
    return "" if apply == "behind" else f"_{apply}"


def _label(call: str, db_name: str, apply: str) -> str:
    where = "database down" if db_name == "down" else f"{_LABEL[db_name]} up"
    return f"ddb.{call} ({where}, {apply})"


def _fsyncs(ddb: DurableDatabaseManager) -> int:
    return 0 if ddb.storage is None else ddb.storage.get_stats().fsync_count


def bench_ddb_calls(
    directory: Path,
    op: str,
    threads: int,
    total: int,
    url: str | None = None,
    apply: str = "behind",
) -> Measurement:
    """``ddb.log_trade(**trade)`` or ``ddb.atomic_balance_update(delta, account=...)`` from
    ``threads`` threads (SQLite in ``directory``, or ``url``; ``DOWN_URL``: unreachable).
    ``apply``: ``WAL_APPLY`` (behind: each call returns once durable in the log and the sync
    thread applies behind; inline: each call also waits for its own apply)."""
    if op not in ("log_trade", "atomic_balance_update"):
        raise ValueError(f"op={op!r}: expected log_trade or atomic_balance_update")
    if apply not in APPLY_MODES:
        raise ValueError(f"apply={apply!r}: expected one of {APPLY_MODES}")
    db_name = _db_name(url)
    d = fresh_dir(directory, f"ddb-{op}-{db_name}-{threads}-{apply}")
    ddb, db = _open_ddb(d, url, apply)
    per = max(1, total // threads)
    # thread i's calls; each thread its own account (no lock contention the engine would avoid)
    items = [[(i, i * per + j) for j in range(per)] for i in range(threads)]

    def call(item: tuple[int, int]) -> None:
        i, k = item
        if op == "log_trade":
            ddb.log_trade(**trade_kwargs(k))
        else:
            ddb.atomic_balance_update(Decimal("1.25"), reason="fill", account=f"acct-{i}")

    n = per * threads
    name = f"ddb_{'trade' if op == 'log_trade' else 'balance'}_{db_name}_{threads}{_suffix(apply)}"
    try:
        _know_balances(ddb, op, threads, db_name)
        f0 = _fsyncs(ddb)
        secs, lat = run_calls(threads, items, call)
        m = _row(name, _label(op, db_name, apply), n, secs, threads, lat)
        _finish(ddb, m, _fsyncs(ddb) - f0, db_name == "down")
    finally:
        db.dispose()
        shutil.rmtree(d, ignore_errors=True)
    return finish_call_row(m)


def bench_ddb_async(
    directory: Path,
    coroutines: int,
    total: int,
    url: str | None = None,
    op: str = "log_trade",
    apply: str = "behind",
) -> Measurement:
    """``await ddb.log_trade_async(**trade)`` (or ``atomic_balance_update_async``, one account
    per coroutine) from ``coroutines`` coroutines on one loop."""
    if op not in ("log_trade", "atomic_balance_update"):
        raise ValueError(f"op={op!r}: expected log_trade or atomic_balance_update")
    db_name = _db_name(url)
    d = fresh_dir(directory, f"ddb-async-{op}-{db_name}-{coroutines}-{apply}")
    ddb, db = _open_ddb(d, url, apply)
    per = max(1, total // coroutines)
    items = [[(i, i * per + j) for j in range(per)] for i in range(coroutines)]

    def call(item: tuple[int, int]) -> Awaitable[Any]:
        i, k = item
        if op == "log_trade":
            return ddb.log_trade_async(**trade_kwargs(k))
        return ddb.atomic_balance_update_async(Decimal("1.25"), reason="fill", account=f"acct-{i}")

    n = per * coroutines
    short = "trade" if op == "log_trade" else "balance"
    name = f"ddb_{short}_async_{db_name}_{coroutines}{_suffix(apply)}"
    try:
        _know_balances(ddb, op, coroutines, db_name)
        f0 = _fsyncs(ddb)
        secs, lat = gather_calls(coroutines, items, call)
        m = _row(name, _label(f"{op}_async", db_name, apply), n, secs, coroutines, lat)
        _finish(ddb, m, _fsyncs(ddb) - f0, db_name == "down")
    finally:
        db.dispose()
        shutil.rmtree(d, ignore_errors=True)
    return finish_call_row(m)


# ---------------------------------------------------------------------------- direct


def bench_sqlite_direct(directory: Path, threads: int, total: int) -> Measurement:
    """What the database alone costs: ``INSERT`` of one trade + ``COMMIT`` per call into
    SQLite (``journal_mode=WAL``, ``synchronous=FULL``), the row made inside the call.

    The threads share one connection behind a lock (SQLite has one writer; separate
    connections would add its busy-wait sleeps)."""
    d = fresh_dir(directory, f"sqlite-direct-{threads}")
    conn = sqlite3.connect(d / "direct.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # COMMIT waits for the fsync of the WAL file
    conn.execute(
        "CREATE TABLE trades (trade_id TEXT PRIMARY KEY, symbol TEXT, side TEXT, "
        "quantity TEXT, price TEXT, executed_at TEXT)"
    )
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    per = max(1, total // threads)
    items = [[i * per + j for j in range(per)] for i in range(threads)]
    lock = threading.Lock()

    def call(k: int) -> None:
        t = trade_kwargs(k)
        row = (
            str(uuid.uuid4()),
            t["symbol"],
            t["side"],
            str(t["quantity"]),
            str(t["price"]),
            t["executed_at"].isoformat(),
        )
        with lock:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?)", row)
            conn.execute("COMMIT")

    try:
        secs, lat = run_calls(threads, items, call)
    finally:
        conn.close()
        shutil.rmtree(d, ignore_errors=True)
    n = per * threads
    m = _row(
        f"sqlite_direct_{threads}", "SQLite alone: INSERT+COMMIT (WAL, FULL)", n, secs, threads, lat
    )
    m.group = "peer"
    m.note = f"WAL, PRAGMA synchronous={sync} (FULL); SQLite {sqlite3.sqlite_version}"
    return m


def bench_pg_direct(url: str, threads: int, total: int) -> Measurement:
    """``INSERT`` of one trade + ``COMMIT`` per call into PostgreSQL with
    ``synchronous_commit=on``, one connection per thread (PostgreSQL has many writers)."""
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    table = f"bench_direct_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            f"CREATE TABLE {table} (trade_id UUID PRIMARY KEY, symbol TEXT, side TEXT, "
            "quantity NUMERIC, price NUMERIC, executed_at TIMESTAMPTZ)"
        )
    per = max(1, total // threads)
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(threads)]
    for c in conns:
        c.execute("SET synchronous_commit = on")  # COMMIT waits for the server's WAL flush
    items = [[(i, i * per + j) for j in range(per)] for i in range(threads)]
    sql = f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s)"

    def call(item: tuple[int, int]) -> None:
        i, k = item
        t = trade_kwargs(k)
        conn = conns[i]
        with conn.transaction():
            conn.execute(
                sql,
                (uuid.uuid4(), t["symbol"], t["side"], t["quantity"], t["price"], t["executed_at"]),
                prepare=True,
            )

    try:
        secs, lat = run_calls(threads, items, call)
    finally:
        for c in conns:
            c.close()
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP TABLE IF EXISTS {table}")
    n = per * threads
    m = _row(f"pg_direct_{threads}", "PostgreSQL alone: INSERT+COMMIT", n, secs, threads, lat)
    m.group = "peer"
    m.note = "synchronous_commit=on; a connection per thread"
    return m


# ---------------------------------------------------------------------------- orders


def bench_order_submit(directory: Path, orders: int) -> tuple[Measurement, Measurement]:
    """``OrderManager.submit`` in process against ``PaperBroker`` (SQLite up): the whole
    submit, and the journal part before the broker call (intent + SUBMITTED, one group
    commit; timed from the submit's start to the broker's ``submit_order``)."""
    d = fresh_dir(directory, "orders-submit")
    ddb, db = _open_ddb(d, None)
    broker = PaperBroker(seed=1)
    marks: list[int] = []

    class Marked:
        """The paper broker, noting when the submit reaches it."""

        def __getattr__(self, name: str) -> Any:
            return getattr(broker, name)

        async def submit_order(self, intent: OrderIntent) -> Any:
            marks.append(time.perf_counter_ns())
            return await broker.submit_order(intent)

    om = OrderManager(
        ddb, Marked(), risk=RiskLimits(check_balance=False), retry=RetryPolicy(base_delay=0)
    )
    whole: list[int] = []
    before: list[int] = []

    async def run() -> float:
        await om.start()
        t_start = time.perf_counter()
        for i in range(orders):
            side = "buy" if i % 2 else "sell"
            s = time.perf_counter_ns()
            await om.submit(OrderIntent(symbol="AAPL", side=side, quantity=Decimal("1")))
            whole.append(time.perf_counter_ns() - s)
            before.append(marks[-1] - s)
        return time.perf_counter() - t_start

    try:
        secs = asyncio.run(run())
        stats = ddb.storage.get_stats() if ddb.storage is not None else None
        ddb.stop(10.0)
    finally:
        db.dispose()
        shutil.rmtree(d, ignore_errors=True)
    submit = _row("order_submit", "OrderManager.submit (PaperBroker)", orders, secs, 1, whole)
    journal = _row(
        "order_journal_before_call",
        "submit: journal before the broker call",
        orders,
        secs,
        1,
        before,
    )
    journal.per_s = submit.per_s  # a part of each submit: the submits' rate
    if stats is not None:
        journal.extra["log_fsync_p50"] = float(stats.fsync_p50_us or 0)
        journal.extra["log_fsync_p99"] = float(stats.fsync_p99_us or 0)
        journal.note = (
            f"the log's fdatasync over the run: p50 {stats.fsync_p50_us or 0:,.0f} µs, "
            f"p99 {stats.fsync_p99_us or 0:,.0f} µs"
        )
    return submit, journal


# ---------------------------------------------------------------------------- the run

# (calls from 1 thread, calls from THREADS threads, calls from COROUTINES coroutines)
CALLS = {"quick": (20, 128, 256), "medium": (300, 1_280, 1_280), "full": (1_000, 3_200, 3_200)}
THREADS = 64
COROUTINES = 256

Spec = tuple[str, Callable[[], Measurement]]


def call_specs(
    directory: Path, size: str, rounds: int = 1, pg_url: str | None = None
) -> list[Spec]:
    """Every row of the calls table as ``(name, measure one round)`` for
    ``wal.tools.bench.run_interleaved``; each round does 1/rounds of the work. The
    PostgreSQL rows only with ``pg_url`` (a database of their own: see ``fresh_pg_database``).
    The ``OrderManager.submit`` rows are measured once, apart (``bench_order_submit``: its
    journal row is read against the log's fsync percentiles of the same run)."""
    if size not in CALLS:
        raise ValueError(f"unknown size preset {size!r}: expected one of {sorted(CALLS)}")
    one, many, coros = (max(1, x // rounds) for x in CALLS[size])
    many, coros = max(THREADS, many), max(COROUTINES, coros)
    d = directory
    specs: list[Spec] = []
    for t, n in ((1, one), (THREADS, many)):
        specs.append((f"sqlite_direct_{t}", partial(bench_sqlite_direct, d, t, n)))
        for apply in APPLY_MODES:
            x = _suffix(apply)
            specs += [
                (
                    f"ddb_trade_sqlite_{t}{x}",
                    partial(bench_ddb_calls, d, "log_trade", t, n, None, apply),
                ),
                (
                    f"ddb_balance_sqlite_{t}{x}",
                    partial(bench_ddb_calls, d, "atomic_balance_update", t, n, None, apply),
                ),
            ]
        specs.append(
            (f"ddb_trade_down_{t}", partial(bench_ddb_calls, d, "log_trade", t, n, DOWN_URL))
        )
    for op, short in (("log_trade", "trade"), ("atomic_balance_update", "balance")):
        specs.append(
            (
                f"ddb_{short}_async_sqlite_{COROUTINES}",
                partial(bench_ddb_async, d, COROUTINES, coros, None, op),
            )
        )
    if pg_url is not None:
        for t, n in ((1, one), (THREADS, many)):
            specs.append((f"pg_direct_{t}", partial(bench_pg_direct, pg_url, t, n)))
            for apply in APPLY_MODES:
                x = _suffix(apply)
                specs += [
                    (
                        f"ddb_trade_postgresql_{t}{x}",
                        partial(bench_ddb_calls, d, "log_trade", t, n, pg_url, apply),
                    ),
                    (
                        f"ddb_balance_postgresql_{t}{x}",
                        partial(bench_ddb_calls, d, "atomic_balance_update", t, n, pg_url, apply),
                    ),
                ]
    return specs


def call_row_names(pg: bool = True) -> list[str]:
    """The names of the rows ``call_specs`` makes (with ``pg``: the PostgreSQL ones too),
    in order, then the two ``OrderManager.submit`` rows; for run_all.py and the tests."""
    names = []
    for t in (1, THREADS):
        names.append(f"sqlite_direct_{t}")
        for apply in APPLY_MODES:
            x = _suffix(apply)
            names += [f"ddb_trade_sqlite_{t}{x}", f"ddb_balance_sqlite_{t}{x}"]
        names.append(f"ddb_trade_down_{t}")
    names += [f"ddb_trade_async_sqlite_{COROUTINES}", f"ddb_balance_async_sqlite_{COROUTINES}"]
    if pg:
        for t in (1, THREADS):
            names.append(f"pg_direct_{t}")
            for apply in APPLY_MODES:
                x = _suffix(apply)
                names += [f"ddb_trade_postgresql_{t}{x}", f"ddb_balance_postgresql_{t}{x}"]
    return [*names, "order_submit", "order_journal_before_call"]


def fresh_pg_database(url: str) -> str:
    """A new, empty database on ``url``'s server (the user may CREATE DATABASE): the wrapper's
    rows then never touch another benchmark's tables. Its SQLAlchemy URL."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    u = make_url(url)
    name = f"atb_bench_{uuid.uuid4().hex[:10]}"
    dsn = u.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return u.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    """Drop the database ``fresh_pg_database`` made (connected to the server's ``postgres``)."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin_dsn = u.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin_dsn.render_as_string(hide_password=False), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(str(u.database))))


# ---------------------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class CallRatio:
    """One issue-22 target: the rows compared, the measured ratio, the target, met or not."""

    target: str
    measured: float | None  # None: a row it needs was not measured
    required: float
    met: bool | None
    detail: str


def call_ratios(rows: dict[str, Measurement], threads: int, coroutines: int) -> list[CallRatio]:
    """Each issue-22 call target against rows measured in the same run."""
    out: list[CallRatio] = []

    def rate(name: str) -> float | None:
        m = rows.get(name)
        return None if m is None else m.per_s

    def ratio(target: str, num: str, den: str, need: float) -> None:
        a, b = rate(num), rate(den)
        if a is None or b is None or not b:
            out.append(CallRatio(target, None, need, None, f"{num} / {den}: not measured"))
            return
        v = a / b
        out.append(CallRatio(target, v, need, v >= need, f"{num} / {den}: {a:,.0f} / {b:,.0f}/s"))

    for op in ("trade", "balance"):
        call = "log_trade" if op == "trade" else "atomic_balance_update"
        ratio(
            f"{call}, SQLite, 1 thread ≥ 1.3x SQLite direct",
            f"ddb_{op}_sqlite_1",
            "sqlite_direct_1",
            1.3,
        )
        ratio(
            f"{call}, SQLite, {threads} threads ≥ 5x SQLite direct",
            f"ddb_{op}_sqlite_{threads}",
            f"sqlite_direct_{threads}",
            5.0,
        )
    for op in ("trade", "balance"):
        call = "log_trade" if op == "trade" else "atomic_balance_update"
        ratio(
            f"{call}_async, SQLite, {coroutines} coroutines ≥ 5x SQLite direct ({threads} threads)",
            f"ddb_{op}_async_sqlite_{coroutines}",
            f"sqlite_direct_{threads}",
            5.0,
        )
    for op in ("trade", "balance"):
        call = "log_trade" if op == "trade" else "atomic_balance_update"
        for t in (1, threads):
            ratio(
                f"{call}, PostgreSQL, {t} thread(s) ≥ 1.3x PostgreSQL direct",
                f"ddb_{op}_postgresql_{t}",
                f"pg_direct_{t}",
                1.3,
            )
    one, raw = rows.get("ddb_trade_sqlite_1"), rows.get("raw_per_record")
    if one is None or raw is None or one.p50_us is None or raw.p50_us is None:
        out.append(
            CallRatio(
                "log_trade p50 ≤ raw write+fdatasync p50 + 50 µs", None, 50, None, "not measured"
            )
        )
    else:
        over = one.p50_us - raw.p50_us
        out.append(
            CallRatio(
                "log_trade p50 ≤ raw write+fdatasync p50 + 50 µs",
                over,
                50,
                over <= 50,
                f"{one.p50_us:,.0f} - {raw.p50_us:,.0f} µs",
            )
        )
    j = rows.get("order_journal_before_call")
    if j is None or j.p99_us is None or "log_fsync_p99" not in j.extra:
        out.append(
            CallRatio(
                "submit journal p99 ≤ log fdatasync p99 + 1 ms", None, 1000, None, "not measured"
            )
        )
    else:
        over = j.p99_us - float(j.extra["log_fsync_p99"])
        out.append(
            CallRatio(
                "submit journal p99 ≤ log fdatasync p99 + 1 ms",
                over,
                1000,
                over <= 1000,
                f"{j.p99_us:,.0f} - {float(j.extra['log_fsync_p99']):,.0f} µs",
            )
        )
    return out


def calls_markdown(rows: list[Measurement], ratios: list[CallRatio]) -> str:
    """The calls table (p50/p90/p99/max, calls/s) and the issue-22 targets, as markdown."""
    lines = [
        "| what | threads | calls/s | p50 µs | p90 µs | p99 µs | max µs | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in rows:
        s = spread(m)
        cells = " | ".join(_f(s.get(k, m.extra.get(k))) for k in ("p50", "p90", "p99", "max"))
        lines.append(f"| {m.label} | {m.threads} | {_f(m.per_s)} | {cells} | {m.describe()} |")
    lines += ["", "| target | measured | required | met | rows |", "|---|---:|---:|---|---|"]
    for r in ratios:
        unit = "x" if r.required < 10 else " µs over"
        got = "not measured" if r.measured is None else _unit(r.measured, unit)
        met = "n/a" if r.met is None else ("met" if r.met else "**not met**")
        lines.append(f"| {r.target} | {got} | {_unit(r.required, unit)} | {met} | {r.detail} |")
    return "\n".join(lines)


def _f(v: Any) -> str:
    return "—" if v is None else f"{float(v):,.0f}"


def _unit(v: float, unit: str) -> str:
    return f"{v:.2f}x" if unit == "x" else f"{v:,.0f}{unit}"
