"""Issue 24 through the real CLI: `atb orders` never acts on the wrong log or database, status
is never green on a broken engine, and the operator's hands (halt, cancel, flatten).

Real files, real SQLite, the paper broker as its own HTTP process (``PaperProcess``), the
engine as an in-process ``OrderManager`` on a real log (``open_ddb``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from orders_helpers import FAST_RETRY, open_ddb, run
from paper_process import PaperProcess

from cli.main import atb
from wal.log.storage import WALStorage
from wal.orders import HttpBroker, OrderIntent, OrderManager, RiskLimits, TradingHalted
from wal.orders.reconcile import ReconcilerConfig, StartupReconciler

FAST = ReconcilerConfig(fetch_timeout=2.0, fetch_attempts=1, fetch_backoff=())


pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def paper(tmp_path: Path) -> Iterator[PaperProcess]:
    p = PaperProcess(tmp_path)
    try:
        yield p
    finally:
        p.close()


def invoke(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(atb, args, env=env, input=stdin, catch_exceptions=False)


def url_of(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'atb.db'}"


def engine(
    tmp_path: Path,
    broker_url: str,
    *,
    buy: int = 0,
    limit: str | None = None,
    stop: bool = False,
) -> list[str]:
    """One engine run on tmp/wal and tmp/atb.db: reconcile, then buy ``buy`` AAPL at market,
    optionally rest a buy limit at ``limit``; the client ids of what it sent."""
    url = url_of(tmp_path)
    sent: list[str] = []

    async def go() -> None:
        ddb = open_ddb(tmp_path / "wal", url)
        broker = await HttpBroker.connect(broker_url, timeout=2.0)
        try:
            om = OrderManager(ddb, broker, risk=RiskLimits(check_balance=False), retry=FAST_RETRY)
            result = await StartupReconciler(om, FAST).run()
            assert not result.errors, result
            if buy:
                o = await om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(buy)))
                sent.append(o.client_order_id)
            if limit is not None:
                o = await om.submit(
                    OrderIntent(
                        symbol="MSFT",
                        side="buy",
                        quantity=Decimal(1),
                        order_type="limit",
                        limit_price=Decimal(limit),
                    )
                )
                sent.append(o.client_order_id)
            ddb.drain(10.0)  # applied: the log records its database (database.json)
            await om.close()
        finally:
            await broker.aclose()
            ddb.stop()
            ddb.db.dispose()

    run(go())
    return sent


def tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


# ------------------------------------------------------------ never act on the wrong thing

ORDER_COMMANDS = [
    ["list"],
    ["list", "--json"],
    ["show", "abc"],
    ["status", "--no-broker"],
    ["status", "--json"],
    ["verify"],
    ["reconcile", "--dry-run"],
    ["reconcile", "--json"],
    ["cancel", "abc", "--yes"],
    ["flatten", "--yes"],
    ["flatten", "--dry-run"],
    ["halt", "--reason", "x"],
    ["resume"],
]


@pytest.mark.parametrize("args", ORDER_COMMANDS, ids=lambda a: " ".join(a))
def test_no_orders_command_creates_a_log_or_a_database(tmp_path: Path, args: list[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    for where in ("missing", "empty"):
        for env in ({}, {"DATABASE_URL": url_of(tmp_path)}):
            r = invoke(["orders", "--dir", where, *args], env=env)
            assert r.exit_code == 2, (where, r.output)
            assert f"no log at {where}" in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            if "--json" in args:
                assert json.loads(r.stdout)["health"]["exit_code"] == 2
    assert tree(tmp_path) == ["empty"]  # nothing created: no log, no HALT, no data/atb.db
    assert stat.S_IMODE(empty.stat().st_mode) == 0o755  # and nothing chmodded


@pytest.mark.parametrize(
    "args",
    [
        ["sync"],
        ["compact"],
        ["retry", "--all"],
        ["status"],
        ["metrics"],
        ["replay", "--since", "1"],
        ["verify"],
        ["inspect"],
        ["failed"],
        ["discard", "00000000-0000-0000-0000-000000000000", "--yes"],
        ["repair", "--yes"],
    ],
    ids=lambda a: a[0],
)
def test_no_wal_command_starts_a_log_in_an_empty_directory(tmp_path: Path, args: list[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    r = invoke(["wal", "--dir", "empty", *args], env={"DATABASE_URL": url_of(tmp_path)})
    assert r.exit_code == 2, r.output
    assert "no log at empty" in r.stderr
    assert list(empty.iterdir()) == [] and stat.S_IMODE(empty.stat().st_mode) == 0o755


def test_orders_read_the_database_the_log_records(tmp_path: Path, paper: PaperProcess) -> None:
    (cid,) = engine(tmp_path, paper.url, buy=3)
    assert (tmp_path / "wal" / "database.json").exists()
    # no DATABASE_URL: the log's database.json names it (not the default data/atb.db)
    r = invoke(["orders", "--dir", "wal", "list", "--json"])
    assert r.exit_code == 0, r.output
    assert [o["client_order_id"] for o in json.loads(r.stdout)] == [cid]
    r = invoke(["orders", "--dir", "wal", "verify"])
    assert r.exit_code == 0 and "intact" in r.output, r.output
    # `atb wal status` checks the same database, not the built-in default
    r = invoke(["wal", "--dir", "wal", "status", "--json"])
    db_doc = json.loads(r.stdout)["database"]
    assert db_doc["url"] == url_of(tmp_path) and db_doc["reachable"] is True, db_doc
    assert db_doc["matches_log"] is True and r.exit_code == 0, r.output
    # a database that does not exist is refused, and not created
    for cmd in (["status", "--no-broker"], ["list"], ["verify"]):
        r = invoke(["orders", "--dir", "wal", "--database-url", "sqlite:///nope.db", *cmd])
        assert r.exit_code == 2 and "nope.db does not exist" in r.stderr, r.output
    # another database (with its own id) is refused: it is not the log's
    other = tmp_path / "other.db"
    from wal.db import DatabaseManager

    db = DatabaseManager(f"sqlite:///{other}")
    db.database_id(create=True)
    db.dispose()
    r = invoke(["orders", "--dir", "wal", "--database-url", f"sqlite:///{other}", "list"])
    assert r.exit_code == 2 and "this log belongs to" in r.stderr, r.output
    assert not (tmp_path / "data").exists() and not (tmp_path / "nope.db").exists()


def test_reconcile_never_writes_the_engines_status_file(
    tmp_path: Path, paper: PaperProcess
) -> None:
    engine(tmp_path, paper.url, buy=2)
    view = tmp_path / "wal" / "manager-status.json"
    theirs = b'{"pid": 1, "running": true, "updated_at": "2025-01-01T00:00:00+00:00"}'
    view.write_bytes(theirs)
    for args in (["--dry-run"], [], ["--broker-url", "http://127.0.0.1:9"]):
        url = [] if args and args[0] == "--broker-url" else ["--broker-url", paper.url]
        invoke(["orders", "--dir", "wal", "reconcile", *url, *args])
        assert view.read_bytes() == theirs


def test_an_unreachable_broker_is_named_not_an_order(tmp_path: Path, paper: PaperProcess) -> None:
    engine(tmp_path, paper.url, buy=1)
    r = invoke(
        ["orders", "--dir", "wal", "reconcile", "--broker-url", "http://127.0.0.1:9", "--json"]
    )
    assert r.exit_code == 3, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "the broker at http://127.0.0.1:9 did not answer" in err
    assert "the order is UNKNOWN" not in err
    assert json.loads(r.stdout)["health"]["exit_code"] == 3


def test_a_url_that_answers_404_is_not_a_broker_one_line_never_a_traceback(
    tmp_path: Path, paper: PaperProcess
) -> None:
    """A wrong path prefix: the paper broker's own process answers 404 to everything under
    it. ``reconcile`` says so in one line, exit 3 (nothing changed); ``status`` says it did
    not check the broker, never compares the journal with positions a 404 read as none."""
    engine(tmp_path, paper.url, buy=1)
    wrong = paper.url + "/nope"
    r = invoke(["orders", "--dir", "wal", "reconcile", "--broker-url", wrong])
    assert r.exit_code == 3, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert f"the broker at {wrong} did not answer" in err and "HTTP 404" in err, err
    assert "Traceback" not in r.output and "AttributeError" not in r.output
    r = invoke(["orders", "--dir", "wal", "status", "--broker-url", wrong, "--json"])
    doc = json.loads(r.stdout)
    assert doc["checked_broker"] is False and "HTTP 404" in doc["broker_error"], r.output
    assert r.exit_code == 1  # the journal's own view: its position has no stop (1 wins over 3)
    assert paper.writes() == 1  # the engine's buy; nothing since


def test_reconcile_with_the_log_locked_is_one_line_and_a_json_document(
    tmp_path: Path, paper: PaperProcess
) -> None:
    engine(tmp_path, paper.url, buy=1)
    with WALStorage(tmp_path / "wal"):  # the engine runs
        r = invoke(["orders", "--dir", "wal", "reconcile", "--broker-url", paper.url, "--json"])
    assert r.exit_code == 1
    assert "cannot reconcile the order journal: the log in wal is locked by" in r.stderr
    assert "cannot the" not in r.stderr
    assert "locked by" in json.loads(r.stdout)["error"]


# ------------------------------------------------------------ never green on a broken engine


def test_wal_status_engine_dead_with_pending_entries(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WALStorage(d) as log:
        from wal.entry import WALEntry

        for _ in range(3):
            log.append(WALEntry.create("atomic_balance_update", kwargs={"delta": Decimal(1)}))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    (d / "manager-status.json").write_bytes(
        orjson.dumps(
            {
                "pid": dead_pid,
                "running": True,
                "breaker_state": "open",
                "last_sync_at": None,
                "updated_at": "2025-01-01T00:00:00+00:00",
            }
        )
    )
    r = invoke(["wal", "--dir", "wal", "status", "--json", "--no-db"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 4, r.output
    assert doc["manager"]["pid_alive"] is False and doc["manager"]["running"] is False
    assert any("engine is not running" in p for p in doc["health"]["problems"])
    table = invoke(["wal", "--dir", "wal", "status", "--no-db"])
    assert table.exit_code == 4 and "health    PROBLEM" in table.output


def test_wal_status_database_unreachable_and_breaker_open(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WALStorage(d) as log:  # the engine runs (this process holds the log)
        from wal.entry import WALEntry

        log.append(WALEntry.create("atomic_balance_update", kwargs={"delta": Decimal(1)}))
        r = invoke(["wal", "--dir", "wal", "--database-url", "sqlite:///gone.db", "status"])
        assert r.exit_code == 3 and "the database is unreachable" in r.output, r.output
        (d / "manager-status.json").write_bytes(
            orjson.dumps(
                {
                    "pid": os.getpid(),
                    "running": True,
                    "breaker_state": "open",
                    "last_error": "connection refused",
                    "updated_at": "2025-01-01T00:00:00+00:00",
                }
            )
        )
        r = invoke(["wal", "--dir", "wal", "status", "--no-db", "--json"])
        doc = json.loads(r.stdout)
        assert r.exit_code == 3, r.output
        assert doc["health"]["issues"][0]["exit_code"] == 3
        assert "circuit breaker is open" in doc["health"]["issues"][0]["problem"]
    assert not (tmp_path / "gone.db").exists()


def test_orders_status_asks_the_broker(tmp_path: Path, paper: PaperProcess) -> None:
    (cid,) = engine(tmp_path, paper.url, limit="1")  # a resting buy limit, far below the market
    base = ["orders", "--dir", "wal", "status", "--broker-url", paper.url, "--json"]
    r = invoke(base)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["checked_broker"] is True
    # behind the journal's back (the engine is down), the broker fills the order
    paper.http.post("/_paper/price", json={"symbol": "MSFT", "price": "0.5"}).raise_for_status()
    assert paper.positions().get("MSFT") == 1, paper.open_orders()
    r = invoke(base)
    doc = json.loads(r.stdout)
    assert r.exit_code == 1, r.output
    assert doc["unprotected_positions"] == ["MSFT"]
    assert any(cid in d for d in doc["disagreements"]), doc
    # the journal alone would say OK: --no-broker says plainly it did not ask
    r = invoke(["orders", "--dir", "wal", "status", "--no-broker"])
    assert r.exit_code == 0 and "broker: not asked" in r.output, r.output
    # an unreachable broker: "could not check" (3), never OK
    r = invoke(["orders", "--dir", "wal", "status", "--broker-url", "http://127.0.0.1:9"])
    assert r.exit_code == 3 and r.output.startswith("NOT CHECKED"), r.output
    assert "did not answer" in r.output


def test_orders_reads_never_take_the_sqlite_write_lock(tmp_path: Path, paper: PaperProcess) -> None:
    (cid,) = engine(tmp_path, paper.url, buy=1)
    locker = sqlite3.connect(tmp_path / "atb.db", isolation_level=None)
    env = {"WAL_DB_TIMEOUT_MS": "100"}
    try:
        locker.execute("BEGIN IMMEDIATE")  # a writer holds the write lock
        r = invoke(["orders", "--dir", "wal", "list", "--json"], env=env)
        assert r.exit_code == 0, r.output
        assert [o["client_order_id"] for o in json.loads(r.stdout)] == [cid]
        r = invoke(["orders", "--dir", "wal", "show", cid[:8]], env=env)
        assert r.exit_code == 0, r.output
        r = invoke(["orders", "--dir", "wal", "verify"], env=env)
        assert r.exit_code == 0, r.output
        r = invoke(["orders", "--dir", "wal", "status", "--no-broker"], env=env)
        assert r.exit_code == 1, r.output  # the position has no stop: a verdict, not a lock error
        # a command that must write: one line, and one JSON document
        env["DATABASE_URL"] = url_of(tmp_path)
        for cmd in (["sync", "--json"], ["replay", "--since", "1", "--json"]):
            r = invoke(["wal", "--dir", "wal", *cmd], env=env)
            assert r.exit_code == 3, r.output
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert "locked" in json.loads(r.stdout)["error"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()


# ------------------------------------------------------------ the operator's hands


def test_halt_stops_new_orders_of_a_running_engine_durably(
    tmp_path: Path, paper: PaperProcess
) -> None:
    engine(tmp_path, paper.url, buy=2)
    url = url_of(tmp_path)

    async def running_engine(halt_between: bool) -> tuple[Any, Any]:
        ddb = open_ddb(tmp_path / "wal", url)
        broker = await HttpBroker.connect(paper.url, timeout=2.0)
        try:
            om = OrderManager(ddb, broker, risk=RiskLimits(check_balance=False), retry=FAST_RETRY)
            await StartupReconciler(om, FAST).run()
            if halt_between:  # the operator throws the switch while the engine runs
                r = invoke(["orders", "--dir", "wal", "halt", "--reason", "broker incident"])
                assert r.exit_code == 0 and "HALTED" in r.output, r.output
            writes = paper.writes()
            with pytest.raises(TradingHalted, match="broker incident"):
                await om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(1)))
            assert paper.writes() == writes  # nothing was sent
            # a protective order still goes out: it only reduces the position
            close = await om.submit(
                OrderIntent(symbol="AAPL", side="sell", quantity=Decimal(1), order_type="market"),
                protective=True,
            )
            return close.state.value, om.positions()
        finally:
            await broker.aclose()
            ddb.stop()
            ddb.db.dispose()

    state, _ = run(running_engine(True))
    assert state == "filled"
    halt = tmp_path / "wal" / "HALT"
    assert stat.S_IMODE(halt.stat().st_mode) == 0o600
    # shown by status
    r = invoke(["orders", "--dir", "wal", "status", "--no-broker", "--json"])
    assert json.loads(r.stdout)["halted"]["reason"] == "broker incident"
    r = invoke(["wal", "--dir", "wal", "status", "--no-db"])
    assert "HALTED" in r.output and "broker incident" in r.output
    r = invoke(["wal", "--dir", "wal", "metrics"])
    assert "atb_trading_halted 1.0" in r.output
    # durable across a restart
    run(running_engine(False))
    r = invoke(["orders", "--dir", "wal", "resume"])
    assert r.exit_code == 0 and "RESUMED" in r.output and not halt.exists()
    assert "atb_trading_halted 0.0" in invoke(["wal", "--dir", "wal", "metrics"]).output


def test_cancel_and_flatten_with_dry_run_and_confirmation(
    tmp_path: Path, paper: PaperProcess
) -> None:
    _aapl, msft = engine(tmp_path, paper.url, buy=3, limit="1")
    base = ["orders", "--dir", "wal"]
    b = ["--broker-url", paper.url]
    writes = paper.writes()
    r = invoke([*base, "cancel", msft[:10], *b, "--dry-run"])
    assert r.exit_code == 0 and "would cancel" in r.output and paper.writes() == writes, r.output
    r = invoke([*base, "cancel", msft[:10], *b], stdin="n\n")
    assert r.exit_code == 1 and "not confirmed" in r.stderr and paper.writes() == writes
    r = invoke([*base, "cancel", msft, *b, "--yes"])
    assert r.exit_code == 0 and "cancelled" in r.output, r.output
    assert paper.open_orders() == []
    r = invoke([*base, "flatten", "AAPL", *b, "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["closes"] == [{"symbol": "AAPL", "side": "sell", "quantity": "3"}]
    assert paper.positions() == {"AAPL": Decimal(3)}
    r = invoke([*base, "flatten", *b], stdin="n\n")
    assert r.exit_code == 1 and paper.positions() == {"AAPL": Decimal(3)}
    r = invoke([*base, "flatten", *b, "--yes"])
    assert r.exit_code == 0 and "sent market sell 3 AAPL: filled" in r.output, r.output
    assert paper.positions() == {}
    r = invoke([*base, "list", "--json"])
    closes = [o for o in json.loads(r.stdout) if o["side"] == "sell"]
    assert [(c["order_type"], c["state"], c["quantity"]) for c in closes] == [
        ("market", "filled", "3")
    ]


def test_served_metrics_answer_only_metrics(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from wal.config import WALConfig
    from wal.db import DatabaseManager
    from wal.sync.manager import WALManager

    db = DatabaseManager(url_of(tmp_path))
    storage = WALStorage(tmp_path / "wal")
    m = WALManager(storage, db, WALConfig(metrics_port=0, sync_interval=600))
    try:
        m.start()
        base = f"http://127.0.0.1:{m.metrics_port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert "atb_trading_halted 0.0" in text and "atb_engine_alive 1.0" in text
        assert "atb_database_reachable 1.0" in text
        for path in ("/", "/favicon.ico", "/metrics/x", "/debug"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}{path}", timeout=10)
            assert err.value.code == 404, path
        (tmp_path / "wal" / "HALT").write_text('{"reason": "r", "at": "t", "by": "me"}')
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
            assert "atb_trading_halted 1.0" in resp.read().decode()  # seen at the next scrape
    finally:
        m.stop()
        storage.close()
        db.dispose()


def test_wal_metrics_on_a_broken_log_says_why(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WALStorage(d, max_segment_bytes=4096) as log:
        from wal.entry import WALEntry

        for i in range(40):
            log.append(
                WALEntry.create(
                    "atomic_balance_update", kwargs={"delta": Decimal(i), "reason": "x" * 200}
                )
            )
    first = sorted(d.glob("*.wal"))[0]
    raw = bytearray(first.read_bytes())
    raw[300] ^= 0x01  # a bit flipped inside a sealed segment
    first.write_bytes(bytes(raw))
    r = invoke(["wal", "--dir", "wal", "metrics"])
    assert r.exit_code == 2, r.output
    assert r.stdout == ""  # `> tmp && mv` keeps the last good file
    assert r.stderr.startswith("Error: cannot read the log: ") and first.name in r.stderr


def test_wal_metrics_counts_unknown_orders_and_unprotected_positions(
    tmp_path: Path, paper: PaperProcess
) -> None:
    engine(tmp_path, paper.url, buy=2)
    r = invoke(["wal", "--dir", "wal", "metrics"])
    assert r.exit_code == 0, r.output
    assert "atb_positions_unprotected 1.0" in r.stdout and "atb_orders_unknown 0.0" in r.stdout
    assert "atb_database_reachable 1.0" in r.stdout and "atb_engine_alive 0.0" in r.stdout


# ------------------------------------------------------------ config, logs, smaller items


def test_config_show_names_each_source_and_masks_secrets(tmp_path: Path) -> None:
    env = {
        "WAL_FSYNC": "interval",
        "DATABASE_URL": "postgresql://trader:s3cret@db.internal/atb",
        "ATB_BROKER_URL": "https://key:t0ken@broker.example/api",
    }
    r = invoke(["config", "show", "--dir", "somewhere", "--json"], env=env)
    assert r.exit_code == 0, r.output
    rows = {s["name"]: s for s in json.loads(r.stdout)["settings"]}
    assert rows["fsync"] == {
        "name": "fsync",
        "variable": "WAL_FSYNC",
        "value": "interval",
        "source": "env WAL_FSYNC",
    }
    assert rows["directory"]["value"] == "somewhere" and rows["directory"]["source"] == "--dir"
    assert rows["max_retries"]["source"] == "default"
    assert rows["database_url"]["value"] == "postgresql://trader:***@db.internal/atb"
    assert rows["broker_url"]["source"] == "env ATB_BROKER_URL"
    assert "s3cret" not in r.output and "t0ken" not in r.output
    table = invoke(["config", "show"], env=env)
    assert "(env WAL_FSYNC)" in table.output and "s3cret" not in table.output
    assert not (tmp_path / "somewhere").exists()


def test_a_successful_command_prints_no_library_warnings(
    tmp_path: Path, paper: PaperProcess
) -> None:
    engine(tmp_path, paper.url, buy=1)
    wal_dir = str(tmp_path / "wal")  # run from the project root: tmp/wal would shadow `wal`
    args = ["orders", "--dir", wal_dir, "reconcile", "--broker-url", paper.url, "--dry-run"]
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAL_")}
    ok = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == "" and "trading halted" not in ok.stdout
    # --verbose shows them, as JSON lines with WAL_LOG_FORMAT=json
    v = subprocess.run(
        [sys.executable, "-m", "cli.main", "--verbose", *args],
        capture_output=True,
        text=True,
        env={**env, "WAL_LOG_FORMAT": "json"},
        cwd=root,
    )
    assert v.returncode == 0, v.stderr
    lines = [json.loads(line) for line in v.stderr.splitlines()]
    assert any("trading halted" in d["message"] for d in lines), v.stderr
    assert all(set(d) >= {"ts", "level", "logger", "message"} for d in lines)
    # --quiet: nothing on stderr, and a bad format is one line
    q = invoke(["--quiet", *args])
    assert q.exit_code == 0 and q.stderr == ""
    bad = invoke(args, env={"WAL_LOG_FORMAT": "xml"})
    assert bad.exit_code == 1 and "WAL_LOG_FORMAT='xml' is not valid" in bad.stderr


def test_a_failing_command_shows_the_warnings_it_held(tmp_path: Path) -> None:
    import logging

    from cli.commands.orders import orders

    @orders.command("warn-then-fail", hidden=True)
    def warn_then_fail() -> None:
        """A command that logs a warning, then fails."""
        logging.getLogger("wal.test").warning("the held warning")
        raise click_exception()

    try:
        r = invoke(["orders", "warn-then-fail"])
        assert r.exit_code == 1
        assert "WARNING wal.test: the held warning" in r.stderr
        r = invoke(["--quiet", "orders", "warn-then-fail"])
        assert "held warning" not in r.stderr
    finally:
        del orders.commands["warn-then-fail"]


def click_exception() -> Exception:
    from cli._common import AtbError

    return AtbError("failed on purpose")


def test_dir_naming_a_file_and_an_empty_wal_dir_are_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for group in ("wal", "orders"):
        r = invoke([group, "--dir", "afile", "status" if group == "wal" else "list"])
        assert r.exit_code == 2, r.output
        assert "afile is a file, not a log directory" in r.stderr and "PosixPath" not in r.stderr
    r = invoke(["wal", "status"], env={"WAL_DIR": ""})
    assert r.exit_code == 1
    assert "WAL_DIR='' is not valid: expected a value, not an empty one" in r.stderr
    assert "exists and is not a directory" not in r.stderr


def test_paper_broker_bad_price_is_a_usage_error() -> None:
    for bad in ("AAPL", "AAPL=abc", "=5", "AAPL=-1"):
        r = invoke(["paper-broker", "serve", "--port", "0", "--price", bad])
        assert r.exit_code == 2, (bad, r.output)
        assert "--price" in r.stderr and "SYMBOL=PRICE" in r.stderr
        assert "ConversionSyntax" not in r.stderr


def test_paper_broker_serves_on_a_tcp_nodelay_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn is handed a pre-bound socket: accepted connections inherit TCP_NODELAY from it
    (without it a response's body waited ~40 ms behind its headers: most of a 0.2 s client
    timeout). The socket ``atb paper-broker serve`` hands to uvicorn has it, and so does a
    connection accepted on it."""
    import socket

    import uvicorn

    handed: list[socket.socket] = []

    async def serve(self: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        assert sockets is not None
        handed.extend(sockets)
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    r = invoke(["paper-broker", "serve", "--port", "0"])
    assert r.exit_code == 0, r.output
    (sock,) = handed
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        sock.listen()
        with socket.create_connection(sock.getsockname()):
            conn, _ = sock.accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()


def test_orders_list_show_filters_prefix_and_plain_decimals(
    tmp_path: Path, paper: PaperProcess
) -> None:
    aapl, msft = engine(tmp_path, paper.url, buy=2, limit="1.5")
    base = ["orders", "--dir", "wal"]
    r = invoke([*base, "list"])
    assert r.exit_code == 0
    assert "CREATED (UTC)" in r.output and ".0000000000" not in r.output
    rows = json.loads(invoke([*base, "list", "--json"]).stdout)
    assert {o["quantity"] for o in rows} == {"2", "1"}
    assert [o["limit_price"] for o in rows if o["symbol"] == "MSFT"] == ["1.5"]
    by_symbol = json.loads(invoke([*base, "list", "--symbol", "MSFT", "--json"]).stdout)
    assert [o["client_order_id"] for o in by_symbol] == [msft]
    last = json.loads(invoke([*base, "list", "--limit", "1", "--json"]).stdout)
    assert [o["client_order_id"] for o in last] == [msft]
    later = json.loads(invoke([*base, "list", "--since", "2999-01-01", "--json"]).stdout)
    assert later == []
    r = invoke([*base, "list", "--since", "yesterday"])
    assert r.exit_code == 2 and "--since" in r.stderr
    r = invoke([*base, "show", aapl[:6], "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["order"]["client_order_id"] == aapl
    assert ".0000000000" not in r.stdout
    r = invoke([*base, "show", "nope", "--json"])
    assert r.exit_code == 1
    assert "no order with client_order_id 'nope'" in json.loads(r.stdout)["error"]


def test_inspect_unknown_operation_and_wal_help_names_every_command(tmp_path: Path) -> None:
    with WALStorage(tmp_path / "wal") as log:
        from wal.entry import WALEntry

        log.append(WALEntry.create("atomic_balance_update", kwargs={"delta": Decimal(1)}))
    r = invoke(["wal", "--dir", "wal", "inspect", "--operation", "nope"])
    assert r.exit_code == 2 and "'nope' is not an operation" in r.stderr, r.output
    r = invoke(["wal", "--dir", "wal", "inspect", "--operation", "log_trade"])
    assert r.exit_code == 0 and "no matching entries" in r.output
    from cli.commands.wal import wal

    text = invoke(["wal", "--help"]).output
    intro = text.split("Examples:")[0]
    for name in wal.commands:
        assert name in intro, name


def test_demo_says_what_it_shortens(tmp_path: Path) -> None:
    r = invoke(["demo", "--rounds", "1", "--dir", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if "shortened for the show" in x)
    assert "WAL_BREAKER_FAILURES 1 (default 5)" in line and "WAL_DB_TIMEOUT_MS 200" in line


def test_shell_completion_works_as_documented(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "cli.md").read_text()
    assert 'eval "$(_ATB_COMPLETE=bash_source atb)"' in page
    env = {**os.environ, "COMP_WORDS": "atb orders ", "COMP_CWORD": "2"}
    env["_ATB_COMPLETE"] = "bash_complete"
    r = subprocess.run(
        [sys.executable, "-m", "cli.main"], capture_output=True, text=True, env=env, cwd=root
    )
    words = {line.split(",", 1)[1] for line in r.stdout.split()}
    assert {"list", "status", "halt", "resume", "cancel", "flatten", "reconcile"} <= words


def test_the_exit_code_table_is_whole() -> None:
    import re

    import cli._common as common

    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "cli.md").read_text()
    section = page.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = {int(m) for m in re.findall(r"^\| (\d) \|", section, re.M)}
    codes = {v for k, v in vars(common).items() if k.startswith("EXIT_")}
    assert codes == rows == {0, 1, 2, 3, 4}
    header = re.search(r"^\| code \|(.*)$", section, re.M)
    assert header is not None
    for column in ("`atb wal status`", "`atb wal verify`", "`atb orders status`", "other"):
        assert column in header.group(1)
    status_help = invoke(["wal", "status", "--help"]).output
    for code in ("1 when", "2 when", "3 when", "4 when"):
        assert code in " ".join(status_help.split()), code


def test_orders_list_during_an_outage_shows_the_logs_pending_orders(
    tmp_path: Path, paper: PaperProcess
) -> None:
    from trading_child import Outage

    (first,) = engine(tmp_path, paper.url, buy=1)  # applied: the log records its database
    url = url_of(tmp_path)
    outage = Outage(url)

    async def during_outage() -> str:
        ddb = open_ddb(tmp_path / "wal", url)
        outage.attach(ddb.db)
        broker = await HttpBroker.connect(paper.url, timeout=2.0)
        try:
            om = OrderManager(ddb, broker, risk=RiskLimits(check_balance=False), retry=FAST_RETRY)
            await StartupReconciler(om, FAST).run()
            outage.begin()  # the database is gone: the order is journaled in the log only
            o = await om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(2)))
            return o.client_order_id
        finally:
            await broker.aclose()
            ddb.stop()
            ddb.db.dispose()

    try:
        second = run(during_outage())
        r = invoke(["orders", "--dir", "wal", "list", "--json"], env={"WAL_DB_TIMEOUT_MS": "50"})
        assert r.exit_code == 3, r.output
        shown = [o["client_order_id"] for o in json.loads(r.stdout)]
        assert second in shown and first not in shown  # the log's pending part only
        assert "warning:" in r.stderr and "pending" in r.stderr
        r = invoke(["orders", "--dir", "wal", "status", "--no-broker", "--json"])
        assert r.exit_code in (1, 3) and json.loads(r.stdout)["database_error"]
    finally:
        outage.close()
    r = invoke(["orders", "--dir", "wal", "list", "--json"])  # back: both, nothing lost
    assert {first, second} <= {o["client_order_id"] for o in json.loads(r.stdout)}
