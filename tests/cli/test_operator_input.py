"""Bad input and failures at the edges of `atb`, through the real command line: one line
naming what was wrong and what to do, a non-zero exit code, no traceback, nothing written.

The demo never writes its fake money into a real log or database; `atb serve` with a database
that does not answer, a bad `--price` or `--paper-state`; a bad broker URL; names that are
not valid UTF-8 (`--json` and text); an empty or over-long `--dir`; a `database.json` that
is a directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from orders_helpers import open_ddb

from cli.main import atb
from wal import WALEntry, WALStorage
from wal.db import DatabaseManager
from wal.orders.paper import PaperBroker

BIN = Path(sys.executable).parent
ATB = shutil.which("atb", path=str(BIN))
ATB_CMD = [ATB] if ATB else [sys.executable, "-m", "cli.main"]

DEMO_MARKER = "DEMO"  # the file that marks a directory `atb demo --dir` made

# a PostgreSQL server nobody listens for: the connection is refused at once
DEAD_PG = "postgresql://trader:hunter2@127.0.0.1:1/atb"


pytestmark = pytest.mark.usefixtures("clean_env")


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(atb, args, env=env, catch_exceptions=False)


def run_atb(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("WAL_")}
    full.pop("DATABASE_URL", None)
    full.pop("ATB_BROKER_URL", None)
    full.update(env or {})
    return subprocess.run(
        [*ATB_CMD, *args], env=full, capture_output=True, text=True, timeout=120, check=False
    )


def one_error_line(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [x for x in stderr.splitlines() if x.startswith("Error: ")]
    assert len(lines) == 1, stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(d: Path) -> dict[str, str]:
    """Every file under ``d`` and its content's hash: "nothing was written" is checkable."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def deposits(d: Path, amounts: list[str]) -> None:
    with WALStorage(d) as log:
        for a in amounts:
            log.append(
                WALEntry.create(
                    "atomic_balance_update", kwargs={"delta": Decimal(a), "reason": "deposit"}
                )
            )


# ------------------------------------------------------------------ F1: the demo's money


def production(d: Path) -> str:
    """The production layout, ``d/wal`` and ``d/atb.db``, with a real deposit of 250 applied."""
    url = f"sqlite:///{d / 'atb.db'}"
    ddb = open_ddb(d / "wal", url)
    try:
        ddb.atomic_balance_update(Decimal("250"), reason="real deposit")
        ddb.drain(10.0)
    finally:
        ddb.stop()
        ddb.db.dispose()
    return url


def balance(url: str) -> Decimal:
    db = DatabaseManager(url)
    try:
        return db.get_balance()
    finally:
        db.dispose()


def test_demo_never_writes_into_a_directory_that_holds_a_log_or_a_database(
    tmp_path: Path,
) -> None:
    prod = tmp_path / "data"
    url = production(prod)
    before = snapshot(prod)
    r = invoke(["demo", "--dir", str(prod), "--rounds", "1"])
    assert r.exit_code == 2, r.output
    line = one_error_line(r.stderr, "already holds a log directory (wal/)", "a database (atb.db)")
    assert "nothing was written" in line
    assert snapshot(prod) == before and balance(url) == Decimal("250")

    # a log alone, a database alone, anything else: refused the same way
    only_log = tmp_path / "only-log"
    deposits(only_log / "wal", ["1"])
    only_db = tmp_path / "only-db"
    only_db.mkdir()
    shutil.copy(prod / "atb.db", only_db / "atb.db")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    for d, what in ((only_log, "wal/"), (only_db, "atb.db"), (notes, "todo.txt")):
        before = snapshot(d)
        r = invoke(["demo", "--dir", str(d), "--rounds", "1"])
        assert r.exit_code == 2, (d, r.output)
        one_error_line(r.stderr, what, "nothing was written")
        assert snapshot(d) == before and not (d / DEMO_MARKER).exists()

    # a database that holds trading data, named by URL: refused, untouched
    before = snapshot(prod)
    r = invoke(["demo", "--database-url", url, "--rounds", "1"])
    assert r.exit_code == 2, r.output
    one_error_line(r.stderr, "already holds data", "needs a database of its own")
    assert snapshot(prod) == before and balance(url) == Decimal("250")


def test_demo_reruns_in_its_own_directory_and_refuses_one_taken_over(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    for _ in range(2):  # the second run replaces the first's log and database: no false FAILED
        r = invoke(["demo", "--dir", str(d), "--rounds", "1"])
        assert r.exit_code == 0, r.output
        assert "OK: nothing lost, nothing doubled" in r.output and "FAILED" not in r.output
        assert (d / DEMO_MARKER).is_file()
    # an empty directory is fine, and becomes a demo directory
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke(["demo", "--dir", str(empty), "--rounds", "1"]).exit_code == 0
    # the demo directory's database replaced by another one (a real engine moved in):
    # the marker alone does not let the demo remove it
    (d / "atb.db").unlink()
    other = DatabaseManager(f"sqlite:///{d / 'atb.db'}")
    other.database_id(create=True)
    other.dispose()
    before = snapshot(d)
    r = invoke(["demo", "--dir", str(d), "--rounds", "1"])
    assert r.exit_code == 2, r.output
    one_error_line(r.stderr, "atb.db is not the one the earlier demo there left")
    assert snapshot(d) == before


# ------------------------------------------------------------ F7, F8: atb serve at start


def test_serve_with_a_database_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    for url, needle in (
        (DEAD_PG, "postgresql://trader:***@127.0.0.1:1/atb did not answer"),
        (f"sqlite:///{tmp_path / 'adir'}", "did not answer: OperationalError"),
    ):
        r = invoke(["serve", "--port", "0", "--dir", str(tmp_path / "wal")], {"DATABASE_URL": url})
        assert r.exit_code == 3, r.output
        one_error_line(r.stderr, "cannot start: database", needle, "nothing was started")
        assert "hunter2" not in r.stderr
        assert not (tmp_path / "wal").exists()


@pytest.mark.parametrize(
    "bad", ["AAPL=NaN", "AAPL=-5", "AAPL=0", "=5", "AAPL=", "AAPL=inf", "a b=1"]
)
def test_serve_bad_price_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    # the dead database: were the price taken, the start would fail later, not with exit 2
    env = {"DATABASE_URL": DEAD_PG}
    r = invoke(["serve", "--port", "0", "--dir", str(tmp_path / "wal"), "--price", bad], env)
    assert r.exit_code == 2, r.output
    assert "Invalid value for --price" in r.stderr and "SYMBOL=PRICE" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "wal").exists()


def test_serve_paper_state_checks(tmp_path: Path) -> None:
    env = {"DATABASE_URL": DEAD_PG}
    missing = tmp_path / "no" / "such" / "paper.json"
    r = invoke(["serve", "--port", "0", "--paper-state", str(missing)], env)
    assert r.exit_code == 2, r.output
    one_error_line(r.stderr, f"--paper-state {missing}", "does not exist", "nothing was started")
    assert not (tmp_path / "no").exists()

    # a saved paper market keeps its prices; a --price it overrides is said, not dropped
    state = tmp_path / "paper.json"
    b = PaperBroker(state_path=state)
    b.set_price("AAPL", Decimal("150.5"))
    b.close()
    r = invoke(["serve", "--port", "0", "--paper-state", str(state), "--price", "AAPL=187"], env)
    assert r.exit_code == 3, r.output  # then the dead database
    note = next(x for x in r.stderr.splitlines() if x.startswith("note:"))
    assert "--price not applied to AAPL" in note and "AAPL 150.5" in note
    assert str(state) in note


# ------------------------------------------------------------------ F9: the broker URL


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("http://127.0.0.1:99999", "port out of range 1-65535"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("ftp://127.0.0.1:21", "expected an http:// or https:// URL"),
        ("http://:8787", "names no host"),
        ("127.0.0.1:8787", "expected an http:// or https:// URL"),
        ("http://u:hunter2@127.0.0.1:0", "port 0"),
    ],
)
def test_bad_broker_url_is_one_line_naming_it(tmp_path: Path, bad: str, why: str) -> None:
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    ddb = open_ddb(tmp_path / "wal", url)  # a real log and its database: the broker is next
    ddb.atomic_balance_update(Decimal("1"), reason="deposit")
    ddb.drain(10.0)
    ddb.stop()
    ddb.db.dispose()
    before = snapshot(tmp_path / "wal")
    env = {"WAL_DIR": str(tmp_path / "wal"), "ATB_BROKER_URL": bad}
    r = invoke(["orders", "status", "--timeout", "1"], env)
    assert r.exit_code == 2, r.output
    one_error_line(r.stderr, "ATB_BROKER_URL=", "is not a valid broker URL", why)
    assert "hunter2" not in r.stderr
    r = invoke(["orders", "reconcile", "--broker-url", bad], {"WAL_DIR": str(tmp_path / "wal")})
    assert r.exit_code == 2, r.output
    one_error_line(r.stderr, "--broker-url=", why, "nothing was asked or changed")
    assert snapshot(tmp_path / "wal") == before


# -------------------------------------------------- F10: names that are not valid UTF-8


def test_a_directory_name_that_is_not_utf8_in_json_and_text(tmp_path: Path) -> None:
    name = os.fsdecode(b"log-\xff")  # "log-\udcff": what Python makes of the byte 0xff
    d = tmp_path / name
    deposits(d, ["1", "2"])
    r = invoke(["wal", "--dir", str(d), "status", "--json", "--no-db"])
    doc = orjson.loads(r.stdout)
    assert doc["directory"].endswith("log-\\xff"), doc["directory"]
    # a missing one: the error document, exit 2
    r = invoke(["wal", "--dir", os.fsdecode(b"\xfe"), "status", "--json"])
    assert r.exit_code == 2, r.output
    assert orjson.loads(r.stdout)["error"].startswith("no log at \\xfe")
    r = invoke(["wal", "--dir", str(d), "inspect", "--json"])
    assert r.exit_code == 0 and len(orjson.loads(r.stdout)) == 2
    # text, through a strict UTF-8 stdout (PYTHONIOENCODING=utf-8): escaped, not a crash
    for args in (["verify"], ["status", "--no-db"]):
        p = run_atb(["wal", "--dir", str(d), *args], {"PYTHONIOENCODING": "utf-8"})
        assert "Traceback" not in p.stderr, p.stderr
        assert p.returncode in (0, 1, 4), p.stderr
        assert "log-\\xff" in p.stdout, p.stdout


# ---------------------------------------------------------------- F12: the --dir value


def test_an_empty_dir_is_refused_like_an_empty_wal_dir(tmp_path: Path) -> None:
    for args in (
        ["wal", "--dir", "", "status"],
        ["orders", "--dir", "", "list"],
        ["demo", "--dir", "", "--rounds", "1"],
        ["serve", "--dir", "", "--port", "0"],
    ):
        r = invoke(args, {"DATABASE_URL": DEAD_PG})
        assert r.exit_code == 2, (args, r.output)
        assert "Invalid value for '--dir': '' is empty" in r.stderr
    assert os.listdir(tmp_path) == []  # nothing appeared in the current directory


def test_an_over_long_dir_is_one_short_line(tmp_path: Path) -> None:
    long = "a" * 5000
    r = invoke(["wal", "--dir", long, "status"])
    assert r.exit_code != 0
    line = one_error_line(r.stderr, "File name too long", "(5000 characters)")
    assert len(line) < 400


def test_database_json_that_is_a_directory_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    deposits(d, ["1"])
    (d / "database.json").mkdir()
    named = f"{d / 'database.json'} is a directory"
    r = invoke(["wal", "--dir", str(d), "status"])  # a health problem, named, with what to do
    assert r.exit_code == 1 and "Traceback" not in r.stderr, r.output
    assert named in r.stdout and "move it away" in r.stdout, r.stdout
    r = invoke(["wal", "--dir", str(d), "sync", "--yes"])  # one line, nothing applied
    assert r.exit_code != 0, r.output
    one_error_line(r.stderr, named, "move it away")
