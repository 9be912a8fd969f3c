"""``atb demo``: a trading session that survives a real database outage, then checks itself.

The session runs through ``DurableDatabaseManager`` on the embedded SQLite default (or the
PostgreSQL given by ``database_url``). In the middle the database is made unreachable for
real, not by a flag in our code:

* SQLite: another process takes an exclusive lock on the database file (as a stuck
  migration or backup would); every write fails with "database is locked".
* PostgreSQL: the connection goes through a local TCP proxy (``wal.tools.netproxy``) that drops
  every connection and refuses new ones.

Trading goes on; the balance it reads stays correct; the database comes back, the log
drains, and a closing check compares the database with a model of what was traded.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from wal.config import WALConfig, mask_url
from wal.db import DatabaseManager
from wal.db.schema import metadata as schema_metadata
from wal.errors import WALError
from wal.sync.durable import DurableDatabaseManager
from wal.sync.identity import read_target
from wal.tools.netproxy import TcpProxy

__all__ = ["DEMO_MARKER", "DemoRefusedError", "DemoResult", "claim_workdir", "run_demo"]

_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()          # hold the lock until the demo closes our stdin
conn.execute("ROLLBACK")
"""


class _Outage(Protocol):
    description: str

    def begin(self) -> None: ...
    def end(self) -> None: ...


class _SQLiteLock:
    """Another process holds ``BEGIN EXCLUSIVE`` on the database file."""

    description = "another process holds an exclusive lock on the SQLite file; writes fail"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._proc: subprocess.Popen[str] | None = None

    def begin(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "locked":
            raise RuntimeError("the demo could not lock the database")

    def end(self) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
            self._proc = None


class _ProxyCut:
    """The database's TCP connection is cut and new connections are refused."""

    description = "the network path to PostgreSQL is cut; connections are refused"

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy

    def begin(self) -> None:
        self.proxy.cut()

    def end(self) -> None:
        self.proxy.heal()


@dataclass
class DemoResult:
    """What the closing check found; ``ok`` is True when the database equals the model."""

    database: str
    log_dir: str
    operations: int = 0
    operations_during_outage: int = 0
    entries_logged: int = 0
    entries_applied: int = 0
    trades_expected: int = 0
    trades_in_db: int = 0
    balance_expected: Decimal = Decimal(0)
    balance_in_db: Decimal = Decimal(0)
    balance_read_during_outage: Decimal | None = None
    open_positions_in_db: int = 0
    drain_seconds: float = 0.0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Model:
    def __init__(self) -> None:
        self.balance = Decimal(0)
        self.trades = 0
        self.open_positions: set[str] = set()


def _round_trip(ddb: DurableDatabaseManager, model: _Model, rng: random.Random, sid: str) -> int:
    """Open a position, trade, move the stop, close, book P&L and fee: 6 critical calls."""
    price = Decimal(rng.randrange(4_900_000, 5_100_000)) / 100
    qty = Decimal(rng.randrange(1, 20)) / 100
    pid = ddb.log_position(
        symbol="BTCUSDT", side="long", quantity=qty, entry_price=price, session_id=sid
    )
    model.open_positions.add(pid)
    ddb.log_trade(symbol="BTCUSDT", side="buy", quantity=qty, price=price, session_id=sid)
    ddb.update_position(pid, stop_loss=(price * Decimal("0.98")).quantize(Decimal("0.01")))
    exit_price = price + Decimal(rng.randrange(-20_000, 30_000)) / 100
    pnl = ((exit_price - price) * qty).quantize(Decimal("0.01"))
    ddb.close_position(pid, exit_price=exit_price, pnl=pnl)
    model.open_positions.discard(pid)
    ddb.log_trade(
        symbol="BTCUSDT", side="sell", quantity=qty, price=exit_price, session_id=sid, pnl=pnl
    )
    fee = (exit_price * qty * Decimal("0.001")).quantize(Decimal("0.01"))
    ddb.atomic_balance_update(pnl - fee, reason="realized pnl minus fee")
    model.trades += 2
    model.balance += pnl - fee
    return 6


DEMO_MARKER = "DEMO"
"""The file that marks a directory ``atb demo --dir`` made (and the database id it used)."""

# what a demo directory may hold: the marker, the log, the SQLite database and its companions
_DEMO_NAMES = frozenset(
    {DEMO_MARKER, "wal", "atb.db", "atb.db-wal", "atb.db-shm", "atb.db-journal"}
)
_REFUSED_HINT = (
    "pass a new or empty directory to --dir, or leave --dir out (a temporary one); "
    "nothing was written"
)


class DemoRefusedError(WALError):
    """The demo would write its fake trades where real ones may be: nothing was written."""

    hint = _REFUSED_HINT


def claim_workdir(workdir: Path) -> None:
    """Make ``workdir`` the demo's, or refuse (``DemoRefusedError``) before writing anything.

    The demo writes fake trades and a 10,000 deposit, so it only uses a directory that does
    not exist yet, an empty one, or one an earlier demo made (its ``DEMO`` marker). Never one
    that holds a log or a database of its own: ``--dir data`` is the production layout. An
    earlier demo's log and SQLite file are removed first (the closing check compares the
    database with this run only), and only when the marker names the database they use."""
    marker = workdir / DEMO_MARKER
    if not workdir.exists():
        workdir.mkdir(parents=True, mode=0o700)
        _write_marker(workdir, None)
        return
    if not workdir.is_dir():
        raise DemoRefusedError(f"{workdir} is not a directory")
    names = set(os.listdir(workdir))
    if not names:
        _write_marker(workdir, None)
        return
    if DEMO_MARKER not in names:
        raise DemoRefusedError(
            f"{workdir} already holds {_what(names)} and no {DEMO_MARKER} marker of an "
            "earlier demo: the demo writes fake trades and a 10000 deposit, so it never "
            "uses a directory that may hold a real log or database"
        )
    others = sorted(names - _DEMO_NAMES)
    if others:
        raise DemoRefusedError(
            f"{workdir} was an earlier demo's but now also holds files it did not make "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
        )
    recorded = _marker_id(marker)
    found = {
        "wal/": _recorded_id(workdir / "wal") if (workdir / "wal").exists() else recorded,
        "atb.db": _sqlite_id(workdir / "atb.db") if (workdir / "atb.db").exists() else recorded,
    }
    strangers = [name for name, db_id in found.items() if recorded is None or db_id != recorded]
    if strangers:
        which = " and ".join(strangers) + (
            " are not the ones" if len(strangers) > 1 else " is not the one"
        )
        raise DemoRefusedError(
            f"{workdir} has a {DEMO_MARKER} marker, but its {which} the earlier demo there "
            "left (another database id, or none recorded): the demo removes only its own",
            hint=f"remove {workdir} yourself if it is a demo's; {_REFUSED_HINT}",
        )
    if (workdir / "wal").exists():
        shutil.rmtree(workdir / "wal")
    for name in sorted(names & _DEMO_NAMES - {DEMO_MARKER, "wal"}):
        (workdir / name).unlink(missing_ok=True)


def _what(names: set[str]) -> str:
    held = []
    if "wal" in names:
        held.append("a log directory (wal/)")
    if "atb.db" in names:
        held.append("a database (atb.db)")
    rest = sorted(names - {"wal", "atb.db"})
    if rest:
        held.append(f"other files ({', '.join(rest[:3])}{', ...' if len(rest) > 3 else ''})")
    return " and ".join(held)


def _write_marker(workdir: Path, database_id: str | None) -> None:
    text = (
        "atb demo: this directory holds a demo's fake trades; the next `atb demo --dir` here "
        "replaces its wal/ and atb.db.\n"
    )
    if database_id is not None:
        text += f"database_id={database_id}\n"
    (workdir / DEMO_MARKER).write_text(text)


def _marker_id(marker: Path) -> str | None:
    for line in marker.read_text(errors="replace").splitlines():
        if line.startswith("database_id="):
            return line.partition("=")[2].strip() or None
    return None


def _recorded_id(wal_dir: Path) -> str | None:
    """The database id the log in ``wal_dir`` records (its ``database.json``), if any."""
    try:
        target = read_target(wal_dir)
    except (ValueError, OSError):
        return None
    return None if target is None else target.database_id


def _sqlite_read(path: Path, sql: str) -> list[tuple[object, ...]] | None:
    """Rows of ``sql`` on a SQLite file, read without writing anything (not even the -shm
    file a reader of a WAL-mode database makes); None when it cannot be read."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _sqlite_id(path: Path) -> str | None:
    """The ``wal_database_id`` of a SQLite file; None when it has none (or is in use: its
    -wal file holds what the main file does not)."""
    if _busy(path):
        return None
    rows = _sqlite_read(path, "SELECT database_id FROM wal_database_id")
    return str(rows[0][0]) if rows else None


def _busy(path: Path) -> bool:
    wal = path.with_name(path.name + "-wal")
    return wal.exists() and wal.stat().st_size > 0


def refuse_used_database(url: str) -> None:
    """Refuse (``DemoRefusedError``) a database that already holds trading data: the demo's
    fake trades and deposit would mix with it (and its closing check would fail). A SQLite
    file that does not exist yet is fine, and is not created here."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        name = u.database
        if not name or name == ":memory:" or name.startswith("file:") or not Path(name).exists():
            return
        path = Path(name)
        tables = _sqlite_read(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
        if _busy(path) or tables is None:  # in use now, or not a database we can read
            used = ["in use, or not readable as SQLite"]
        else:
            ours = {t.name for t in schema_metadata.sorted_tables}
            used = [
                str(t)
                for (t,) in tables
                if t in ours and _sqlite_read(path, f'SELECT 1 FROM "{t}" LIMIT 1')
            ]
        _refuse_if_used(url, used)
        return
    db = DatabaseManager(url, read_only=True)
    try:
        present = set(sa.inspect(db.engine).get_table_names())
        used = []
        with db.engine.connect() as conn:
            for table in schema_metadata.sorted_tables:
                if (
                    table.name in present
                    and conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first()
                ):
                    used.append(table.name)
    finally:
        db.dispose()
    _refuse_if_used(url, used)


def _refuse_if_used(url: str, used: list[str]) -> None:
    if used:
        raise DemoRefusedError(
            f"the database {mask_url(url)} already holds data ({', '.join(sorted(used)[:4])}"
            f"{', ...' if len(used) > 4 else ''}): the demo writes fake trades and a 10000 "
            "deposit, so it needs a database of its own",
            hint="give --database-url a new, empty database; nothing was written",
        )


# the settings the demo shortens (said at its start): (WALConfig field, variable)
_SHORTENED = (
    ("sync_interval", "WAL_SYNC_INTERVAL"),
    ("breaker_failure_threshold", "WAL_BREAKER_FAILURES"),
    ("breaker_cooldown_seconds", "WAL_BREAKER_COOLDOWN"),
    ("backoff_base_seconds", "WAL_BACKOFF_BASE"),
    ("backoff_max_seconds", "WAL_BACKOFF_MAX"),
    ("db_timeout_ms", "WAL_DB_TIMEOUT_MS"),
)


def run_demo(
    *,
    workdir: Path | None = None,
    database_url: str | None = None,
    rounds: int = 10,
    seed: int = 7,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo session; print as it goes through ``echo``; return the closing check."""
    t0 = time.monotonic()
    if database_url is not None:
        refuse_used_database(database_url)  # the demo's trades never land in a used database
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="atb-demo-")
        workdir = Path(tmp.name)
    else:
        claim_workdir(workdir)  # refused unless new, empty, or an earlier demo's: no money mixed
    wal_dir = workdir / "wal"
    proxy: TcpProxy | None = None
    outage: _Outage
    if database_url is None or database_url.startswith("sqlite"):
        db_file = workdir / "atb.db"
        url = database_url or f"sqlite:///{db_file}"
        db_file = Path(make_url(url).database or db_file)
        outage = _SQLiteLock(db_file)
        connect_url = url
    else:
        url = database_url
        u = make_url(url)
        if not u.host or u.host.startswith("/"):
            raise WALError(
                "the PostgreSQL demo needs a TCP URL (host and port) to cut the network",
                hint="use postgresql://user:password@host:port/db",
            )
        proxy = TcpProxy(u.host, u.port or 5432)
        outage = _ProxyCut(proxy)
        connect_url = u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    result = DemoResult(database=mask_url(url), log_dir=str(wal_dir))

    def say(msg: str) -> None:
        echo(f"[{time.monotonic() - t0:5.1f}s] {msg}")

    config = WALConfig.from_env(
        {},  # the demo's own settings: the environment's WAL_* are not read
        directory=wal_dir,
        database_url=connect_url,  # the route the manager takes (through the proxy)
        sync_interval=0.2,
        breaker_failure_threshold=1,
        breaker_cooldown_seconds=0.5,
        backoff_base_seconds=0.1,
        backoff_max_seconds=0.5,
        db_timeout_ms=200,  # WAL_DB_TIMEOUT_MS: how long a call waits for a database that is down
    )
    db = DatabaseManager(connect_url, timeout_ms=config.db_timeout_ms)
    ddb = DurableDatabaseManager(db, config=config)
    model = _Model()
    rng = random.Random(seed)
    echo(f"atb demo: a trading session through a database outage ({db.dialect})")
    where = " (temporary: removed at the end; pass --dir to keep it)" if tmp is not None else ""
    echo(f"  log: {wal_dir}{where}")
    echo(f"  database: {result.database}")
    defaults = WALConfig()
    shortened = ", ".join(
        f"{env} {getattr(config, name):g} (default {getattr(defaults, name):g})"
        for name, env in _SHORTENED
    )
    echo(f"  shortened for the show, so the outage fits in seconds: {shortened}")
    try:
        ddb.start()
        sid = ddb.create_trading_session(strategy="demo", initial_balance=Decimal("10000"))
        ddb.atomic_balance_update(Decimal("10000"), reason="deposit")
        model.balance += Decimal("10000")
        result.operations += 2
        say(f"session started, deposit 10000 -> balance {ddb.get_balance():.2f}")
        for _ in range(rounds):
            result.operations += _round_trip(ddb, model, rng, sid)
        say(
            f"database up: {rounds} round trips (open, buy, stop, close, sell, P&L): "
            f"balance {ddb.get_balance():.2f}, pending {ddb.get_wal_status()['pending']}"
        )
        say(f"OUTAGE: {outage.description}")
        outage.begin()
        try:
            before = result.operations
            for _ in range(rounds):
                result.operations += _round_trip(ddb, model, rng, sid)
            result.operations_during_outage = result.operations - before
            seen = ddb.get_balance()
            result.balance_read_during_outage = seen
            pending = ddb.get_wal_status()["pending"]
            say(
                f"database down: {rounds} more round trips, every call returned; "
                f"{pending} entries wait in the log"
            )
            time.sleep(1.5)  # let the sync thread probe the dead database a few times
            st = ddb.get_wal_status()
            cause = str(st["last_error"] or "none").split(" (see ")[0].split(": ")[-2:]
            say(f"sync thread: breaker {st['breaker_state']}, last error: {': '.join(cause)}")
            mark = "ok" if seen == model.balance else "WRONG"
            say(
                f"balance read during the outage: {seen:.2f} (expected {model.balance:.2f}: {mark})"
            )
            if seen != model.balance:
                result.problems.append(f"balance read during outage {seen} != {model.balance}")
        finally:
            outage.end()
        say("database back")
        t_drain = time.monotonic()
        assert ddb.manager is not None
        deadline = t_drain + 60
        while ddb.get_wal_status()["pending"] and time.monotonic() < deadline:
            ddb.manager.wake()
            ddb.manager.force_sync()
        result.drain_seconds = time.monotonic() - t_drain
        left = ddb.get_wal_status()["pending"]
        say(f"the log drained in {result.drain_seconds:.2f} s ({left} pending)")
        _closing_check(ddb, db, model, result)
    finally:
        ddb.stop()
        db.dispose()
        if proxy is not None:
            proxy.close()
        if tmp is not None:
            tmp.cleanup()
        else:  # the next demo here may remove this one's log and database: say which they are
            _write_marker(workdir, _recorded_id(wal_dir))
    result.seconds = time.monotonic() - t0
    _print_check(result, echo)
    return result


def _closing_check(
    ddb: DurableDatabaseManager, db: DatabaseManager, model: _Model, r: DemoResult
) -> None:
    assert ddb.storage is not None
    r.entries_logged = sum(1 for _ in ddb.storage.iter_entries())
    with db.engine.connect() as conn:
        r.entries_applied = int(
            conn.execute(sa.text("SELECT count(*) FROM wal_applied")).scalar_one()
        )
    r.trades_expected = model.trades
    r.trades_in_db = len(db.get_trades())
    r.balance_expected = model.balance
    r.balance_in_db = db.get_balance()
    r.open_positions_in_db = len(db.get_open_positions())
    if r.entries_logged != r.operations:
        r.problems.append(f"{r.operations} operations but {r.entries_logged} log entries")
    if r.entries_applied != r.entries_logged:
        r.problems.append(f"{r.entries_logged} entries logged, {r.entries_applied} applied")
    if r.trades_in_db != r.trades_expected:
        r.problems.append(f"{r.trades_in_db} trades in the database, {r.trades_expected} made")
    if r.balance_in_db != r.balance_expected:
        r.problems.append(
            f"balance {r.balance_in_db} in the database, {r.balance_expected} expected"
        )
    if r.open_positions_in_db != len(model.open_positions):
        r.problems.append(f"{r.open_positions_in_db} open positions, expected none")


def _print_check(r: DemoResult, echo: Callable[[str], None]) -> None:
    def row(name: str, got: object, want: object) -> None:
        mark = "ok" if got == want else "MISMATCH"
        echo(f"  {name:<30} {got!s:>12}   {mark}")

    echo("closing check")
    during = f"({r.operations_during_outage} in the outage)"
    echo(f"  {'operations made':<30} {r.operations:>12}   {during}")
    row("entries in the log", r.entries_logged, r.operations)
    row("entries applied (ledger)", r.entries_applied, r.entries_logged)
    row("trades in the database", r.trades_in_db, r.trades_expected)
    row("balance in the database", f"{r.balance_in_db:.2f}", f"{r.balance_expected:.2f}")
    row("open positions", r.open_positions_in_db, 0)
    if r.ok:
        echo(f"OK: nothing lost, nothing doubled ({r.seconds:.1f} s).")
    else:
        echo("FAILED: " + "; ".join(r.problems))
