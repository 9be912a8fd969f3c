"""Issue 12: what an operator under pressure relies on, through the real ``atb`` command line.

Real logs, real SQLite files and PostgreSQL databases, a real HTTP scrape of ``/metrics``,
real processes for the writer lock, a dead pid and a closed pipe.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from helpers_log import as_preallocated, write_at_end
from prometheus_client.parser import text_string_to_metric_families

from cli._common import require_log_dir
from cli.main import atb
from wal import WALEntry, WALEntryStatus, WALStorage
from wal.config import WALConfig, mask_url
from wal.db import DatabaseManager
from wal.log.fileops import OSFileOps
from wal.log.report import RecoveryReport
from wal.log.segment import list_segments
from wal.sync.breaker import BreakerState
from wal.sync.identity import TARGET_FILE, read_target, record_target
from wal.sync.manager import WALManager

BIN = Path(sys.executable).parent
ATB = shutil.which("atb", path=str(BIN))
ATB_CMD = [ATB] if ATB else [sys.executable, "-m", "cli.main"]
DOCS = Path(__file__).resolve().parents[2] / "docs"


pytestmark = pytest.mark.usefixtures("clean_env")


def invoke(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(atb, args, env=env, input=stdin, catch_exceptions=False)


def deposits(d: Path, amounts: list[str]) -> list[WALEntry]:
    with WALStorage(d) as log:
        return [
            log.append(
                WALEntry.create(
                    "atomic_balance_update", kwargs={"delta": Decimal(a), "reason": "deposit"}
                )
            )
            for a in amounts
        ]


def statuses(d: Path) -> list[WALEntryStatus]:
    with WALStorage.open_readonly(d) as log:
        return [e.status for e in log.iter_entries()]


def balance(url: str) -> Decimal:
    db = DatabaseManager(url)
    try:
        return db.get_balance()
    finally:
        db.dispose()


def sqlite_url(path: Path) -> str:
    DatabaseManager(f"sqlite:///{path}").dispose()  # the file exists (sync never creates one)
    return f"sqlite:///{path}"


# ------------------------------------------------------------------ 1. the right database


def engine_applied(d: Path, url: str, amounts: list[str]) -> None:
    """What a trading process does: log and apply (records the log's database)."""
    db = DatabaseManager(url)
    storage = WALStorage(d)
    try:
        m = WALManager(storage, db, WALConfig(directory=d, database_url=url, apply_mode="inline"))
        for a in amounts:
            r = m.write("atomic_balance_update", delta=Decimal(a), reason="deposit")
            assert r.status is WALEntryStatus.COMPLETED
        m.stop()
    finally:
        storage.close()
        db.dispose()


def test_sync_never_drains_into_another_database(db_url: str, tmp_path: Path) -> None:
    d = tmp_path / "wal"
    engine_applied(d, db_url, ["1"])
    target = read_target(d)
    assert target is not None and target.url == mask_url(db_url)  # never a password
    deposits(d, ["10", "20"])  # the engine died with a backlog

    # another existing database, from the environment: refused, nothing applied
    other = sqlite_url(tmp_path / "other.db")
    r = invoke(["wal", "--dir", str(d), "sync"], env={"DATABASE_URL": other})
    assert r.exit_code == 1
    assert "this log belongs to" in r.stderr and "Refusing" in r.stderr
    assert balance(other) == 0 and statuses(d).count(WALEntryStatus.PENDING) == 2

    # named explicitly, but not confirmed: still nothing
    r = invoke(["wal", "--dir", str(d), "--database-url", other, "sync"], stdin="n\n")
    assert r.exit_code == 1 and "not confirmed" in r.stderr
    assert balance(other) == 0

    # the right one (from the environment): applied there
    r = invoke(["wal", "--dir", str(d), "sync", "--json"], env={"DATABASE_URL": db_url})
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout)["applied"] == 2
    assert balance(db_url) == Decimal(31)


def test_sync_without_a_url_drains_into_the_database_the_log_records(
    db_url: str, tmp_path: Path
) -> None:
    """As `atb orders` does: nothing named, the recorded database (never the default file)."""
    d = tmp_path / "wal"
    engine_applied(d, db_url, ["1"])
    deposits(d, ["10", "20"])  # the engine died with a backlog
    r = invoke(["wal", "--dir", str(d), "sync", "--json"])
    assert r.exit_code == 0, r.output
    assert "using the log's database" in r.stderr
    assert orjson.loads(r.stdout)["applied"] == 2
    assert balance(db_url) == Decimal(31)
    assert not (tmp_path / "data").exists()  # the default SQLite file was never created


def test_sync_without_a_url_refuses_a_recorded_url_whose_password_is_masked(
    tmp_path: Path,
) -> None:
    d = tmp_path / "wal"
    deposits(d, ["3"])
    record_target(d, "postgresql://trader:s3cret@db.invalid/atb", "an-id", OSFileOps())
    r = invoke(["wal", "--dir", str(d), "sync"])
    assert r.exit_code == 1
    assert "password is not kept" in r.stderr and "s3cret" not in r.stderr
    assert statuses(d) == [WALEntryStatus.PENDING]


def test_the_engine_applies_nothing_to_another_database(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    first = sqlite_url(tmp_path / "first.db")
    engine_applied(d, first, ["1"])
    other = sqlite_url(tmp_path / "other.db")
    db = DatabaseManager(other)
    storage = WALStorage(d)
    try:
        m = WALManager(storage, db, WALConfig(directory=d, database_url=other, apply_mode="inline"))
        r = m.write("atomic_balance_update", delta=Decimal(7), reason="deposit")
        assert r.status is WALEntryStatus.PENDING  # durable in the log, never misdirected
        assert m.force_sync().applied == 0
        assert "this log belongs to" in (m.get_stats()["last_error"] or "")
        m.stop()
    finally:
        storage.close()
        db.dispose()
    assert balance(other) == 0
    assert read_target(d) is not None and read_target(d).url == mask_url(first)  # type: ignore[union-attr]
    # pointed back at its own database, the engine drains it there
    engine_applied(d, first, [])
    db = DatabaseManager(first)
    storage = WALStorage(d)
    try:
        m = WALManager(storage, db, WALConfig(directory=d, database_url=first, apply_mode="inline"))
        assert m.force_sync().applied == 1
        m.stop()
    finally:
        storage.close()
        db.dispose()
    assert balance(first) == Decimal(8)


def test_sync_to_a_new_database_needs_the_url_and_a_confirmation(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    first = sqlite_url(tmp_path / "first.db")
    engine_applied(d, first, ["1"])
    deposits(d, ["5"])
    new = sqlite_url(tmp_path / "new.db")
    r = invoke(["wal", "--dir", str(d), "--database-url", new, "sync"], stdin="y\n")
    assert r.exit_code == 0, r.output
    assert balance(new) == 5
    target = read_target(d)
    assert target is not None and target.url == new
    # --yes confirms without asking
    deposits(d, ["7"])
    r = invoke(["wal", "--dir", str(d), "--database-url", first, "sync", "--yes"])
    assert r.exit_code == 0, r.output
    assert balance(first) == 8


def test_a_log_without_a_recorded_database_needs_one_named(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    deposits(d, ["3"])
    (tmp_path / "data").mkdir()
    DatabaseManager(f"sqlite:///{tmp_path / 'data' / 'atb.db'}").dispose()  # the default exists
    r = invoke(["wal", "--dir", str(d), "sync"])
    assert r.exit_code == 1 and "records no database yet" in r.stderr
    assert statuses(d) == [WALEntryStatus.PENDING]
    assert not (d / TARGET_FILE).exists()


def test_sync_status_and_reads_never_create_a_database_file(tmp_path: Path) -> None:
    (tmp_path / "wal").mkdir()  # an empty log directory
    for args in (["sync"], ["status"], ["status", "--json"], ["inspect"], ["failed"], ["verify"]):
        invoke(["wal", "--dir", "wal", *args])
        assert not (tmp_path / "data").exists(), args


def test_replay_after_a_database_restore(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    db_file = tmp_path / "atb.db"
    url = sqlite_url(db_file)
    env = {"DATABASE_URL": url}
    deposits(d, ["1"])
    assert invoke(["wal", "--dir", str(d), "sync"], env=env).exit_code == 0
    backup = tmp_path / "backup.db"
    shutil.copy(db_file, backup)  # the nightly backup (the CLI closed the database)
    deposits(d, ["10", "100"])
    assert invoke(["wal", "--dir", str(d), "sync"], env=env).exit_code == 0
    discarded = deposits(d, ["1000"])[0]
    r = invoke(["wal", "--dir", str(d), "discard", str(discarded.entry_id), "--yes"])
    assert r.exit_code == 0, r.output
    assert balance(url) == 111

    # the disk dies; the backup comes back: 110 is missing, and the log says COMPLETED
    for extra in ("-wal", "-shm"):
        Path(f"{db_file}{extra}").unlink(missing_ok=True)
    shutil.copy(backup, db_file)
    assert balance(url) == 1
    assert invoke(["wal", "--dir", str(d), "retry", "--all"]).output.startswith("0 FAILED")

    dry = invoke(["wal", "--dir", str(d), "replay", "--since", "1", "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    doc = orjson.loads(dry.stdout)
    assert doc["missing"] == 2 and doc["requeued"] == 0 and doc["checked"] == 3
    assert statuses(d).count(WALEntryStatus.PENDING) == 0  # a dry run changes nothing

    r = invoke(["wal", "--dir", str(d), "replay", "--since", "1"], env=env)
    assert r.exit_code == 0 and "2 entries re-queued" in r.output
    assert invoke(["wal", "--dir", str(d), "sync"], env=env).exit_code == 0
    assert balance(url) == 111  # exactly once: the first deposit was not applied again
    again = invoke(["wal", "--dir", str(d), "replay", "--since", "1"], env=env)
    assert "nothing to replay" in again.output

    bad = invoke(["wal", "--dir", str(d), "replay", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2 and "neither an LSN" in bad.stderr


# ------------------------------------------------------------------ 2. status tells the truth


def test_missing_directory_says_no_log_here(tmp_path: Path) -> None:
    for cmd in (["status"], ["verify"], ["repair"], ["inspect"], ["failed"], ["metrics"]):
        r = invoke(["wal", "--dir", "nowhere", *cmd])
        assert r.exit_code == 2, cmd
        assert "no log at nowhere" in r.stderr and "--dir" in r.stderr, r.stderr
        assert "line 0" not in r.stderr and "atb wal verify" not in r.stderr
    assert not (tmp_path / "nowhere").exists()


def test_every_json_command_prints_one_document_on_failure(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cases = [
        ["wal", "--dir", "nowhere", "status", "--json"],
        ["wal", "--dir", "afile", "status", "--json"],
        ["wal", "--dir", "nowhere", "verify", "--json"],
        ["wal", "--dir", "afile", "inspect", "--json"],
        ["wal", "--dir", "nowhere", "failed", "--json"],
        ["wal", "--dir", "nowhere", "sync", "--json"],
        ["wal", "--dir", "nowhere", "compact", "--json"],
        ["wal", "--dir", "nowhere", "repair", "--yes", "--json"],
    ]
    for args in cases:
        r = invoke(args)
        assert r.exit_code != 0, args
        doc = orjson.loads(r.stdout)
        assert set(doc) == {"directory", "error", "health"}, args
        assert doc["health"]["exit_code"] == r.exit_code


def test_json_when_the_log_is_locked(tmp_path: Path) -> None:
    d = tmp_path / "held"
    deposits(d, ["1"])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(d)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "ready"
        writers = (["sync", "--json"], ["compact", "--json"], ["replay", "--since", "1", "--json"])
        for cmd in writers:
            r = invoke(["wal", "--dir", str(d), *cmd])
            doc = orjson.loads(r.stdout)
            assert r.exit_code == doc["health"]["exit_code"] == 1, cmd
            assert "locked by process" in doc["error"], cmd
        status = invoke(["wal", "--dir", str(d), "status", "--json", "--no-db"])
        assert orjson.loads(status.stdout)["lock"]["held"] is True
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


HOLDER = """
import sys
from wal import WALStorage
log = WALStorage(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
log.close()
"""


def test_status_shows_a_torn_tail_as_verify_does(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    deposits(d, ["1", "2"])
    seg = list_segments(d)[-1][1]
    as_preallocated(seg)  # the last segment as preallocate="zero" leaves it: records, zeros
    # a crash in the middle of a write into the zero rest
    at = write_at_end(seg, b'{"t":"entry","lsn":3,"half a rec')
    r = invoke(["wal", "--dir", "wal", "status", "--json", "--no-db"])
    doc = orjson.loads(r.stdout)
    assert doc["recovery"]["torn_tail_bytes"] == seg.stat().st_size - at  # with the zeros after
    assert any("torn tail" in p for p in doc["health"]["problems"])
    assert r.exit_code == 1  # beats 4 (no engine while 2 entries are pending)
    assert "torn tail" in invoke(["wal", "--dir", "wal", "status", "--no-db"]).output
    v = invoke(["wal", "--dir", "wal", "verify", "--json"])
    assert orjson.loads(v.stdout)["defects"][0]["torn_tail"] is True
    assert b"half a rec" in seg.read_bytes()  # read-only: nothing was cut


def test_reachable_means_a_write_could_happen_now(tmp_path: Path) -> None:
    deposits(tmp_path / "wal", ["1"])
    url = sqlite_url(tmp_path / "atb.db")
    env = {"WAL_DB_TIMEOUT_MS": "50"}
    args = ["wal", "--dir", "wal", "--database-url", url, "status", "--json"]
    assert orjson.loads(invoke(args, env=env).stdout)["database"]["reachable"] is True
    locker = sqlite3.connect(tmp_path / "atb.db", isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        db = orjson.loads(invoke(args, env=env).stdout)["database"]
        assert db["reachable"] is False and "locked" in db["error"]
        assert "BEGIN IMMEDIATE" in db["checked"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()


def test_engine_view_and_cli_sync_are_kept_apart_and_stale_is_labelled(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    url = sqlite_url(tmp_path / "atb.db")
    # a trading process that published its view, then died
    child = subprocess.run(
        [sys.executable, "-c", ENGINE, str(d), url], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    view = (d / "manager-status.json").read_bytes()
    assert orjson.loads(view)["pid"] != os.getpid()
    deposits(d, ["5"])
    r = invoke(["wal", "--dir", str(d), "sync"], env={"DATABASE_URL": url})
    assert r.exit_code == 0, r.output
    assert (d / "manager-status.json").read_bytes() == view  # the engine's view is untouched
    s = invoke(["wal", "--dir", str(d), "status", "--json", "--no-db"])
    doc = orjson.loads(s.stdout)
    assert doc["manager"]["stale"] is True and doc["manager"]["pid_alive"] is False
    assert doc["last_cli_sync"]["applied"] == 1
    table = invoke(["wal", "--dir", str(d), "status", "--no-db"]).output
    assert "STALE: process" in table and "applied/s (60 s average)" in table
    assert re.search(r"cli sync .*applied 1", table)


ENGINE = """
import sys
from decimal import Decimal
from wal import WALStorage
from wal.config import WALConfig, mask_url
from wal.db import DatabaseManager
from wal.sync.manager import WALManager
db = DatabaseManager(sys.argv[2])
s = WALStorage(sys.argv[1])
cfg = WALConfig(directory=sys.argv[1], database_url=sys.argv[2], apply_mode="inline")
m = WALManager(s, db, cfg)
m.write("atomic_balance_update", delta=Decimal(1), reason="x")
m.stop()
s.close()
"""


def _documented_list(section: str, field: str) -> set[str]:
    page = (DOCS / "cli.md").read_text()
    body = page.split(section, 1)[1]
    row = next(line for line in body.splitlines() if line.startswith(f"| `{field}` |"))
    meaning = row.split("|")[3]
    # the fields are the backticked names that start a comma-separated item
    return set(re.findall(r"(?:^\s*|, )`(\w+)`", meaning.split(":", 1)[1]))


def test_documented_json_fields_are_the_real_ones(tmp_path: Path) -> None:
    deposits(tmp_path / "wal", ["1"])
    doc = orjson.loads(invoke(["wal", "--dir", "wal", "status", "--json", "--no-db"]).stdout)
    page = (DOCS / "cli.md").read_text()
    section = page.split("### `atb wal status --json`", 1)[1].split("\n### ", 1)[0]
    table = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert table == set(doc)
    recovery = _documented_list("### `atb wal status --json`", "recovery")
    assert recovery == set(doc["recovery"]) == set(RecoveryReport().to_dict())
    database = _documented_list("### `atb wal status --json`", "database")
    assert database == set(doc["database"])


def test_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WALStorage(d) as log:
        log.append_many(
            WALEntry.create("atomic_balance_update", kwargs={"delta": Decimal(1)})
            for _ in range(3000)
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAL_")}
    for args in (["inspect", "--limit", "0"], ["status", "--no-db"]):
        p = subprocess.Popen(
            [*ATB_CMD, "wal", "--dir", str(d), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert p.stdout is not None and p.stderr is not None
        p.stdout.readline()
        p.stdout.close()  # `| head -1`
        err = p.stderr.read().decode()
        rc = p.wait(timeout=60)
        assert err == "", err
        expected = 0 if args[0] == "inspect" else 1  # status: 3000 pending, over the alert
        assert rc == expected, (args, rc)


# ------------------------------------------------------------------ 3. short timeouts


def test_the_configured_timeout_reaches_the_connection(db_url: str, tmp_path: Path) -> None:
    db = DatabaseManager(db_url)
    storage = WALStorage(tmp_path / "wal")
    try:
        WALManager(storage, db, WALConfig(db_timeout_ms=1234))
        assert db.timeout_ms == 1234
        with db.engine.connect() as conn:
            if db.dialect == "sqlite":
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
            else:
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "1234ms"
                assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "1234ms"
    finally:
        storage.close()
        db.dispose()


def test_the_breaker_opens_after_the_configured_failures(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "atb.db")
    db = DatabaseManager(url)
    db.atomic_balance_update(Decimal(0))  # the schema exists
    storage = WALStorage(tmp_path / "wal")
    cfg = WALConfig(
        db_timeout_ms=20,
        breaker_failure_threshold=2,
        breaker_cooldown_seconds=600,
        apply_mode="inline",  # each write tries the database: the failures open the breaker
    )
    locker = sqlite3.connect(tmp_path / "atb.db", isolation_level=None)
    try:
        m = WALManager(storage, db, cfg)
        locker.execute("BEGIN EXCLUSIVE")  # another process locks the database
        receipts = []
        for i in range(4):
            receipts.append(m.write("atomic_balance_update", delta=Decimal(i), reason="x"))
            assert receipts[-1].status is WALEntryStatus.PENDING  # back to the log at once
            expected = BreakerState.OPEN if i >= 1 else BreakerState.CLOSED
            assert m.breaker.state is expected, i
        assert "locked" in (m.get_stats()["last_error"] or "")
        locker.execute("ROLLBACK")
        assert m.force_sync().applied == 4
    finally:
        locker.close()
        storage.close()
        db.dispose()


# ------------------------------------------------------------------ 4. metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _samples(text: str) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_manager_serves_metrics_on_loopback(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "atb.db")
    db = DatabaseManager(url)
    storage = WALStorage(tmp_path / "wal")
    port = _free_port()
    m = WALManager(
        storage, db, WALConfig(metrics_port=port, sync_interval=600, apply_mode="inline")
    )
    try:
        assert m.metrics_port is None  # off until started
        m.start()
        assert m.metrics_port == port
        m.write("atomic_balance_update", delta=Decimal(2), reason="x")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        s = _samples(text)
        assert s["wal_appended_entries_total"] == 1
        assert s["wal_applied_entries_total"] == 1
        assert s["wal_pending_entries"] == 0
        assert s["wal_entries{status=completed}"] == 1
        assert s["wal_breaker_open"] == 0 and s["wal_breaker_state{state=closed}"] == 1
        assert s["wal_fsync_seconds_count"] >= 1
        assert s["wal_last_successful_apply_timestamp_seconds"] > 0
        assert s["wal_log_segments"] == 1 and s["wal_log_bytes"] > 0
        # bound to loopback only
        other = [a for a in _local_addresses() if not a.startswith("127.")]
        for addr in other:
            with socket.socket() as c, pytest.raises(OSError):
                c.settimeout(2)
                c.connect((addr, port))
    finally:
        m.stop()
        storage.close()
        db.dispose()
    with socket.socket() as c, pytest.raises(OSError):
        c.settimeout(2)
        c.connect(("127.0.0.1", port))  # stop() closed it


def _local_addresses() -> list[str]:
    try:
        return sorted({str(i[4][0]) for i in socket.getaddrinfo(socket.gethostname(), None, 2)})
    except OSError:
        return []


def test_atb_wal_metrics_prints_the_exposition_once(tmp_path: Path) -> None:
    deposits(tmp_path / "wal", ["1", "2"])
    r = invoke(["wal", "--dir", "wal", "metrics"])
    assert r.exit_code == 0, r.output
    s = _samples(r.stdout)
    assert s["wal_entries{status=pending}"] == 2 and s["wal_pending_entries"] == 2
    assert s["wal_failed_entries"] == 0 and s["wal_oldest_pending_age_seconds"] >= 0
    assert s["wal_log_write_failed"] == 0


def _run_on_a_tty(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``atb ARGS`` with its stdout on a real pseudo-terminal; return (exit code, output)."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_sync_shows_progress_on_a_terminal_and_nothing_extra_when_piped(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    url = sqlite_url(tmp_path / "atb.db")
    engine_applied(d, url, ["1"])
    deposits(d, ["1"] * 300)
    env = {**os.environ, "DATABASE_URL": url, "WAL_DIR": str(d)}
    code, out = _run_on_a_tty(["wal", "sync"], env)
    assert code == 0, out
    assert "applying" in out and "300/300" in out  # the bar: label and position
    assert "applied 300" in out
    deposits(d, ["1"] * 5)
    piped = subprocess.run(
        [sys.executable, "-m", "cli.main", "wal", "sync", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert piped.returncode == 0, piped.stderr
    assert orjson.loads(piped.stdout)["applied"] == 5  # one JSON document, no bar
    assert "applying" not in piped.stdout + piped.stderr


def test_compact_shows_progress_on_a_terminal_and_nothing_extra_when_piped(
    tmp_path: Path,
) -> None:
    d = tmp_path / "wal"
    url = sqlite_url(tmp_path / "atb.db")
    engine_applied(d, url, ["1"] * 3)
    with WALStorage(d, max_segment_bytes=4096) as log:  # several sealed segments
        log.append_many(
            WALEntry.create("atomic_balance_update", (), {"delta": Decimal(1)}) for _ in range(60)
        )
    env = {**os.environ, "DATABASE_URL": url, "WAL_DIR": str(d)}
    code, out = _run_on_a_tty(["wal", "compact", "--retention-hours", "0"], env)
    assert code == 0, out
    assert "compacting segments" in out and "compacted" in out
    piped = subprocess.run(
        [sys.executable, "-m", "cli.main", "wal", "compact", "--retention-hours", "0", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert piped.returncode == 0, piped.stderr
    assert "bytes_before" in orjson.loads(piped.stdout)
    assert "compacting" not in piped.stdout + piped.stderr


def _as_nobody(fn: Callable[[], object]) -> str:
    """``fn()`` run in a forked child as uid/gid 65534 (nobody, as the wrong user would be);
    what it raised or returned, as text. Needs root, to change user."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                out = f"returned {fn()!r}"
            except BaseException as exc:  # what the operator would be told
                out = f"{type(exc).__name__}: {exc}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    return text


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root (CI runs as root)")
def test_the_wrong_user_is_told_permission_denied_not_no_log(tmp_path: Path) -> None:
    """The engine's log directory is 0700: another user running `atb` gets "permission
    denied" and whose it is, never "no log here" (which sends them looking elsewhere)."""
    d = tmp_path / "wal"
    with WALStorage(d) as log:
        log.append(WALEntry.create("log_trade", kwargs={"n": 1}))
    os.chmod(tmp_path, 0o755)  # the parent open, the log's own directory 0700
    config = WALConfig.from_env({}, directory=d)
    told = _as_nobody(lambda: require_log_dir(config))
    assert "permission denied" in told and "no log" not in told, told
    os.chmod(tmp_path, 0o700)  # now the parent is closed too
    told = _as_nobody(lambda: require_log_dir(config))
    assert "permission denied" in told and "does not exist" not in told, told


@pytest.mark.parametrize("since", ["\u00b2", "\u0663"])
def test_replay_since_that_is_no_lsn_or_time_is_a_usage_error(tmp_path: Path, since: str) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises: a traceback, not a usage error."""
    r = CliRunner().invoke(atb, ["wal", "--dir", str(tmp_path), "replay", "--since", since])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit)
    assert "Invalid value for --since" in r.output
