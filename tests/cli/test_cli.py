"""The ``atb`` command line, through click's ``CliRunner`` and through the installed ``atb``.

Real logs on disk, a real SQLite database, and a real second process holding the writer lock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner, Result
from helpers_log import flip_bit, lines_of, make_entry

from cli.main import atb
from wal import WALCorruptionError, WALEntry, WALEntryStatus, WALStorage
from wal.errors import WALArgumentError
from wal.log.segment import list_segments

BIN = Path(sys.executable).parent
ATB = shutil.which("atb", path=str(BIN))
ATB_CMD = [ATB] if ATB else [sys.executable, "-m", "cli.main"]

STATUS_FIELDS = {
    "directory",
    "segments",
    "bytes",
    "next_lsn",
    "entries",
    "pending",
    "oldest_pending_age_seconds",
    "fsync",
    "recovery",
    "lock",
    "database",
    "manager",
    "halted",
    "last_cli_sync",
    "health",
    "notes",  # a killed repair's unfinished backup beside the log (never a health problem)
}

HOLDER = """
import sys
from wal import WALStorage
log = WALStorage(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
log.close()
"""


pytestmark = pytest.mark.usefixtures("clean_env")


def invoke(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(atb, args, env=env, input=stdin, catch_exceptions=False)


def run_atb(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("WAL_")}
    full.pop("DATABASE_URL", None)
    full.update(env or {})
    return subprocess.run(
        [*ATB_CMD, *args], env=full, capture_output=True, text=True, timeout=60, check=False
    )


def assert_one_line_error(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])


def make_log(
    d: Path, n: int = 3, *, blob: int = 0, segment_bytes: int | None = None
) -> list[WALEntry]:
    opts: dict[str, Any] = {} if segment_bytes is None else {"max_segment_bytes": segment_bytes}
    with WALStorage(d, **opts) as log:
        return [log.append(make_entry(i, blob=blob)) for i in range(n)]


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


def status_of(d: Path, entry: WALEntry) -> WALEntry:
    with WALStorage.open_readonly(d) as log:
        return log.get_entry(entry.entry_id)


def corrupt_sealed(d: Path) -> tuple[str, int, int]:
    """Flip a bit in line 3 of the first (sealed) segment: (file, line, offset)."""
    seg = list_segments(d)[0][1]
    off, raw = lines_of(seg)[2]
    flip_bit(seg, off + len(raw) - 20, 1)
    return seg.name, 3, off


@pytest.fixture
def held_log(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A log whose writer lock is held by another, real process: (directory, its pid)."""
    d = tmp_path / "held"
    make_log(d)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(d)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield d, proc.pid
    finally:
        proc.stdin.close()  # the holder reads EOF, closes the log and exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ help and entry points


def _commands(group: click.Group, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, [*path, name])
        else:
            yield [*path, name]


def test_every_command_has_help_with_examples() -> None:
    paths = list(_commands(atb, []))
    names = {" ".join(p) for p in paths}
    assert {
        "wal status",
        "wal sync",
        "wal compact",
        "wal verify",
        "wal inspect",
        "wal failed",
        "wal retry",
        "wal discard",
        "wal repair",
        "wal bench",
    } <= names
    for path in paths:
        result = invoke([*path, "--help"])
        assert result.exit_code == 0, path
        assert "Examples:" in result.output, f"`atb {' '.join(path)} --help` has no Examples:"
        # the examples block keeps its lines (click's \b), each an `atb` command line
        block = result.output.split("Examples:", 1)[1].strip().splitlines()
        assert block and all(line.strip().startswith("atb") for line in block[:1]), block


def test_status_help_documents_every_json_field() -> None:
    text = invoke(["wal", "status", "--help"]).output
    for field in STATUS_FIELDS:
        assert field in text, field
    docs = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
    page = docs.read_text()
    assert "## Stable JSON output" in page
    for field in STATUS_FIELDS:
        assert f"`{field}`" in page, field


def test_installed_entry_points() -> None:
    r = run_atb(["--help"])
    assert r.returncode == 0 and "wal" in r.stdout, r.stderr
    r = run_atb(["--version"])
    assert r.returncode == 0 and "atb" in r.stdout
    # and as a module, for environments without the console script
    m = subprocess.run(
        [sys.executable, "-m", "cli.main", "wal", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert m.returncode == 0 and "Examples:" in m.stdout, m.stderr


# ------------------------------------------------------------------ configuration errors


def test_bad_variable_is_one_line_through_the_runner(tmp_path: Path) -> None:
    make_log(tmp_path / "wal")
    r = invoke(["wal", "--dir", "wal", "status"], env={"WAL_FSYNC": "sometimes"})
    assert r.exit_code == 1
    assert_one_line_error(r.stderr, "WAL_FSYNC='sometimes'", "always | interval | unsafe_never")
    assert r.stdout == ""


def test_bad_variable_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    secret = "pa55word"
    r = run_atb(
        ["wal", "status"],
        env={"WAL_DIR": str(tmp_path), "DATABASE_URL": f"postgresql://u:{secret}@h:badport/x"},
    )
    assert r.returncode == 1
    assert_one_line_error(r.stderr, "DATABASE_URL=")
    assert secret not in r.stderr


def test_help_works_even_with_a_bad_variable() -> None:
    r = invoke(["wal", "status", "--help"], env={"WAL_BATCH_SIZE": "0"})
    assert r.exit_code == 0 and "Examples:" in r.output


# ------------------------------------------------------------------ status


def test_status_healthy(tmp_path: Path) -> None:
    make_log(tmp_path / "wal", n=2)
    engine = WALStorage(tmp_path / "wal")  # a running engine holds the log: healthy
    try:
        _healthy(tmp_path)
    finally:
        engine.close()


def _healthy(tmp_path: Path) -> None:
    r = invoke(["wal", "--dir", "wal", "status", "--json", "--no-db"])
    assert r.exit_code == 0, r.output
    doc = orjson.loads(r.stdout)
    assert set(doc) == STATUS_FIELDS
    assert doc["entries"] == {"pending": 2, "syncing": 0, "completed": 0, "failed": 0}
    assert doc["pending"] == 2 and doc["next_lsn"] == 3 and doc["segments"] == 1
    assert doc["oldest_pending_age_seconds"] >= 0
    assert doc["health"] == {"exit_code": 0, "problems": [], "issues": []}
    assert doc["database"] == {
        "url": "sqlite:///data/atb.db",
        "reachable": None,
        "error": None,
        "checked": None,
        "database_id": None,
        "log_database": None,
        "matches_log": None,
    }
    assert doc["lock"] == {"owner_pid": os.getpid(), "owner_alive": True, "held": True}
    assert doc["manager"] is None
    assert doc["recovery"]["defects"] == []
    table = invoke(["wal", "--dir", "wal", "status", "--no-db"])
    assert table.exit_code == 0
    assert "pending 2, syncing 0, completed 0, failed 0" in table.output
    assert "health    OK" in table.output


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"WAL_PENDING_ALERT_THRESHOLD": "2"}, "3 entries pending (alert threshold 2)"),
        ({"WAL_PENDING_ALERT_AGE": "1e-9"}, "the oldest pending entry is"),
    ],
)
def test_status_exit_1_when_the_database_is_behind(
    tmp_path: Path, env: dict[str, str], problem: str
) -> None:
    make_log(tmp_path / "wal", n=3)
    with WALStorage(tmp_path / "wal"):  # the engine runs: only the threshold is a problem
        r = invoke(["wal", "--dir", "wal", "status", "--json", "--no-db"], env=env)
    assert r.exit_code == 1
    doc = orjson.loads(r.stdout)
    assert doc["health"]["exit_code"] == 1
    assert any(problem in p for p in doc["health"]["problems"]), doc["health"]


def test_status_exit_1_with_a_failed_entry(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    e = make_log(d, n=2)
    with WALStorage(d) as log:
        log.update_status(e[0], WALEntryStatus.FAILED, "constraint violated")
        r = invoke(["wal", "--dir", str(d), "status", "--no-db"])  # while the engine runs
    assert r.exit_code == 1
    assert "PROBLEM: 1 FAILED entry: see" in r.output


def test_status_exit_2_when_the_log_is_corrupt(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    make_log(d, n=30, blob=300, segment_bytes=4096)
    name, line, off = corrupt_sealed(d)
    r = run_atb(["wal", "status", "--no-db"], env={"WAL_DIR": str(d)})
    assert r.returncode == 2
    assert_one_line_error(r.stderr, name, f"line {line}", f"byte offset {off}", "atb wal verify")
    j = invoke(["wal", "--dir", str(d), "status", "--json", "--no-db"])
    assert j.exit_code == 2
    doc = orjson.loads(j.stdout)
    assert doc["health"]["exit_code"] == 2 and name in doc["error"]


def test_status_exit_2_when_there_is_no_log(tmp_path: Path) -> None:
    r = invoke(["wal", "--dir", "nowhere", "status", "--no-db"])
    assert r.exit_code == 2
    assert_one_line_error(r.stderr, "no log at")
    assert not (tmp_path / "nowhere").exists()


def test_status_database_check(tmp_path: Path) -> None:
    make_log(tmp_path / "wal", n=1)
    engine = WALStorage(tmp_path / "wal")  # the engine runs: only the database is checked
    try:
        _database_check(tmp_path)
    finally:
        engine.close()


def _database_check(tmp_path: Path) -> None:
    from wal.db import DatabaseManager

    # a missing SQLite file is unreachable (exit 3), and checking does not create it
    r = invoke(["wal", "--dir", "wal", "status", "--json"])
    assert r.exit_code == 3, r.output
    db = orjson.loads(r.stdout)["database"]
    assert db["reachable"] is False and "does not exist" in db["error"]
    assert not (tmp_path / "data").exists()
    # an existing database answers
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    DatabaseManager(url).dispose()
    r = invoke(["wal", "--dir", "wal", "--database-url", url, "status", "--json"])
    assert r.exit_code == 0, r.output
    db = orjson.loads(r.stdout)["database"]
    assert db["url"] == url and db["reachable"] is True and db["error"] is None
    assert "BEGIN IMMEDIATE" in db["checked"]
    # a PostgreSQL nobody listens on: refused, reported, password masked
    secret = "pa55word"
    pg = f"postgresql://trader:{secret}@127.0.0.1:1/atb"
    r = invoke(["wal", "--dir", "wal", "--database-url", pg, "status", "--json"])
    assert r.exit_code == 3  # unreachable: its own exit code (docs/cli.md)
    db = orjson.loads(r.stdout)["database"]
    assert db["reachable"] is False and db["error"]
    assert db["url"] == "postgresql://trader:***@127.0.0.1:1/atb"
    assert secret not in r.output
    table = invoke(["wal", "--dir", "wal", "--database-url", pg, "status"])
    assert "UNREACHABLE" in table.output and secret not in table.output


def test_status_shows_the_published_manager_view(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    make_log(d, n=1)
    published = {
        "last_sync_at": datetime.now(UTC).isoformat(),
        "last_error": "connection refused",
        "breaker_state": "open",
        "pending": 1,
        "failed": 0,
        "applied_per_second": 12.5,
        "updated_at": (datetime.now(UTC) - timedelta(seconds=30)).isoformat(),
    }
    (d / "manager-status.json").write_bytes(orjson.dumps(published))
    doc = orjson.loads(invoke(["wal", "--dir", "wal", "status", "--json", "--no-db"]).stdout)
    assert doc["manager"]["breaker_state"] == "open"
    assert 30 <= doc["manager"]["age_seconds"] < 3600
    table = invoke(["wal", "--dir", "wal", "status", "--no-db"]).output
    assert "breaker open" in table and "last error: connection refused" in table


# ------------------------------------------------------------------ the writer lock


def test_read_only_commands_work_and_writers_name_the_owner(
    held_log: tuple[Path, int], tmp_path: Path
) -> None:
    d, pid = held_log
    r = run_atb(["wal", "sync"], env={"WAL_DIR": str(d), "DATABASE_URL": "sqlite:///x.db"})
    assert r.returncode == 1
    assert_one_line_error(r.stderr, f"process {pid}", "sync thread", "atb wal status")
    assert not (tmp_path / "x.db").exists()

    doc = orjson.loads(invoke(["wal", "--dir", str(d), "status", "--json", "--no-db"]).stdout)
    assert doc["lock"] == {"owner_pid": pid, "owner_alive": True, "held": True}
    assert doc["entries"]["pending"] == 3
    assert invoke(["wal", "--dir", str(d), "verify"]).exit_code == 0
    assert invoke(["wal", "--dir", str(d), "inspect"]).exit_code == 0

    some_id = str(make_entry(0).entry_id)
    for args in (["compact"], ["retry", some_id], ["discard", some_id, "--yes"]):
        w = invoke(["wal", "--dir", str(d), *args])
        assert w.exit_code == 1, args
        assert_one_line_error(w.stderr, f"process {pid}", "Read-only commands")


def test_writing_commands_do_not_create_a_missing_log(tmp_path: Path) -> None:
    for args in (["sync"], ["compact"], ["retry", "--all"]):
        r = invoke(["wal", "--dir", "missing", *args])
        assert r.exit_code == 2, args
        assert_one_line_error(r.stderr, "no log at missing")
    assert not (tmp_path / "missing").exists()


# ------------------------------------------------------------------ verify and repair


def test_verify_finds_a_flipped_bit(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    make_log(d, n=30, blob=300, segment_bytes=4096)
    assert invoke(["wal", "--dir", str(d), "verify"]).exit_code == 0
    name, line, off = corrupt_sealed(d)
    r = invoke(["wal", "--dir", str(d), "verify"])
    assert r.exit_code == 1
    defects = [x for x in r.output.splitlines() if x.startswith("DEFECT")]
    assert len(defects) == 1
    assert f"{name}: line {line}, byte offset {off}: checksum mismatch" in defects[0]
    assert "atb wal repair" in r.output
    doc = orjson.loads(invoke(["wal", "--dir", str(d), "verify", "--json"]).stdout)
    assert [(x["file"], x["line"], x["offset"]) for x in doc["defects"]] == [(name, line, off)]
    assert doc["ok"] is False and doc["opens"] is False


def test_verify_without_a_log_exits_2(tmp_path: Path) -> None:
    r = invoke(["wal", "--dir", "nope", "verify"])
    assert r.exit_code == 2
    assert_one_line_error(r.stderr, "no log at")


def test_repair_makes_a_corrupt_log_open_and_keeps_the_backup(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    entries = make_log(d, n=30, blob=300, segment_bytes=4096)
    corrupt_sealed(d)
    list_segments(d)[2][1].unlink()  # and a missing segment
    with pytest.raises(WALCorruptionError):
        WALStorage(d)
    damaged = {p.name: p.read_bytes() for p in d.glob("*.wal")}

    # answering no changes nothing
    no = invoke(["wal", "--dir", str(d), "repair"], stdin="n\n")
    assert no.exit_code == 1 and "Aborted" in no.output
    assert {p.name: p.read_bytes() for p in d.glob("*.wal")} == damaged
    assert not list(tmp_path.glob("wal.backup-*"))

    r = invoke(["wal", "--dir", str(d), "repair", "--yes"])
    assert r.exit_code == 0, r.output
    assert "a normal open succeeds now" in r.output
    assert sum(x.startswith("dropped") for x in r.output.splitlines()) == 2
    assert "None" not in r.output  # what is not known is not printed
    (backup,) = tmp_path.glob("wal.backup-*")
    assert {p.name: p.read_bytes() for p in backup.glob("*.wal")} == damaged
    with WALStorage(d) as log:
        kept = {e.entry_id for e in log.iter_entries()}
    assert kept < {e.entry_id for e in entries} and len(kept) >= len(entries) - 8
    assert invoke(["wal", "--dir", str(d), "verify"]).exit_code == 0
    again = invoke(["wal", "--dir", str(d), "repair", "--yes"])
    assert again.exit_code == 0 and "nothing to repair" in again.output


def test_repair_prints_what_was_lost_in_words(tmp_path: Path) -> None:
    """The notes (here: the first segment is gone, its LSNs lost) are printed in text, not
    only in --json: an operator reading the screen learns what the repair gave up."""
    d = tmp_path / "wal"
    make_log(d, n=30, blob=300, segment_bytes=4096)
    list_segments(d)[0][1].unlink()
    r = invoke(["wal", "--dir", str(d), "repair", "--yes"])
    assert r.exit_code == 0, r.output
    notes = [x for x in r.output.splitlines() if x.startswith("note")]
    assert any("lost" in x for x in notes), r.output
    doc = orjson.loads(invoke(["wal", "--dir", str(d), "repair", "--yes", "--json"]).stdout)
    assert doc["nothing_to_do"] is True


def _reseal(path: Path, line_no: int, change: Any) -> None:
    """Change record ``line_no`` (1-based) of a segment with ``change(rec)`` and write it back
    with good checksums (its record's and, for an entry, its content's): written wrong, not
    damaged on disk."""
    from wal.entry import content_checksum
    from wal.log.record import decode_line, encode_line

    lines = [raw for _, raw in lines_of(path)]
    rec = decode_line(lines[line_no - 1].rstrip(b"\n"))
    change(rec)
    if rec["t"] == "entry":
        rec["checksum"] = content_checksum(
            rec["entry_id"], rec["operation"], rec["args"], rec["kwargs"], rec["idempotency_key"]
        )
    lines[line_no - 1] = encode_line(orjson.dumps(rec))
    path.write_bytes(b"".join(lines))


def test_a_header_claiming_the_next_segments_range_is_repaired_and_all_agree(
    tmp_path: Path,
) -> None:
    """Review F2: a header whose last claims the next segment's (PENDING) entries. verify
    called that segment "already merged" (false), repair failed its own check without printing
    its backup, then verify said OK while status and every open refused. Now verify, status
    and the open name the same defect; repair corrects the header and all three agree."""
    d = tmp_path / "wal"
    entries = make_log(d, n=30, blob=300, segment_bytes=4096)
    segs = [p for _, p in list_segments(d)]
    b, c = segs[1], segs[2]
    claim = int(c.name[:-4]) + 3
    _reseal(b, 1, lambda rec: rec.update(last=claim))
    c_bytes = c.read_bytes()

    v = invoke(["wal", "--dir", str(d), "verify"])
    assert v.exit_code == 1
    assert "merged" not in v.output and "removes it" not in v.output
    defects = [x for x in v.output.splitlines() if x.startswith("DEFECT")]
    assert len(defects) == 1
    assert f"{b.name}: line 1, byte offset 0: the header says last={claim}" in defects[0]
    assert "a normal open refuses this log" in v.output
    st = invoke(["wal", "--dir", str(d), "status", "--no-db"])
    assert st.exit_code == 2 and f"last={claim}" in st.stderr

    r = invoke(["wal", "--dir", str(d), "repair", "--yes"])
    assert r.exit_code == 0, r.output + r.stderr
    (backup,) = tmp_path.glob("wal.backup-*")
    assert f"backup: {backup}" in r.output
    assert f"rewrote  {b.name}: LSN {int(b.name[:-4])}..{int(c.name[:-4]) - 1}" in r.output
    assert "a normal open succeeds now" in r.output
    assert c.read_bytes() == c_bytes  # the segment of unapplied entries is never removed

    assert invoke(["wal", "--dir", str(d), "verify"]).exit_code == 0
    st = invoke(["wal", "--dir", str(d), "status", "--no-db", "--json"])
    assert st.exit_code != 2 and orjson.loads(st.stdout)["pending"] == 30
    with WALStorage(d) as log:
        assert {e.entry_id for e in log.iter_entries()} == {e.entry_id for e in entries}
    assert "nothing to repair" in invoke(["wal", "--dir", str(d), "repair", "--yes"]).output


def test_a_repair_whose_final_check_fails_still_prints_its_backup_and_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log was backed up and changed, then the normal open after it failed: the operator
    still gets the backup's path and every change, in text and in --json, then the error."""
    import wal.log.repair

    def refuse(d: Path) -> WALStorage:
        raise WALCorruptionError(Path(d) / "MANIFEST", 0, 0, "simulated refusal")

    monkeypatch.setattr(wal.log.repair, "WALStorage", refuse)
    for as_json in (False, True):
        d = tmp_path / f"wal{int(as_json)}"
        make_log(d, n=30, blob=300, segment_bytes=4096)
        name, _, _ = corrupt_sealed(d)
        r = invoke(["wal", "--dir", str(d), "repair", "--yes", *(["--json"] if as_json else [])])
        assert r.exit_code == 1
        (backup,) = tmp_path.glob(f"{d.name}.backup-*")
        assert_one_line_error(
            r.stderr, "a normal open still refuses", "simulated refusal", str(backup)
        )
        if as_json:
            doc = orjson.loads(r.stdout)
            assert doc["backup"] == str(backup) and doc["segments_rewritten"] == [name]
            assert "simulated refusal" in doc["error"] and doc["health"]["exit_code"] == 1
        else:
            assert f"backup: {backup}" in r.output
            assert f"rewrote  {name}" in r.output and "dropped" in r.output


def test_a_nan_decimal_in_a_record_is_a_content_defect_everywhere(tmp_path: Path) -> None:
    """Review F6: an entry holding {"$decimal": "NaN"} under good checksums passed every open
    and status, verify called it a content checksum mismatch, and `inspect --json` crashed on
    it. It is a defect of that record: status, verify, inspect and failed name it (file, line,
    offset; verify its LSN), and repair moves it into the backup."""
    d = tmp_path / "wal"
    entries = make_log(d, n=5)
    seg = list_segments(d)[-1][1]
    off = lines_of(seg)[2][0]  # line 3: the entry at LSN 2
    _reseal(seg, 3, lambda rec: rec["kwargs"].update(qty={"$decimal": "NaN"}))
    where = f"{seg.name}: line 3, byte offset {off}: malformed entry record: kwargs['qty']"

    st = invoke(["wal", "--dir", str(d), "status", "--no-db"])
    assert st.exit_code == 2
    assert_one_line_error(st.stderr, where, "(LSN 2)")
    v = invoke(["wal", "--dir", str(d), "verify"])
    assert v.exit_code == 1 and "a normal open refuses this log" in v.output
    assert where in v.output and "LSN 2" in v.output and "content checksum" not in v.output
    for cmd in (["inspect", "--status", "pending", "--json"], ["failed", "--json"]):
        r = invoke(["wal", "--dir", str(d), *cmd])
        assert r.exit_code == 2 and "Traceback" not in r.output + r.stderr
        doc = orjson.loads(r.stdout)  # one document, naming the record
        assert where in doc["error"]

    r = invoke(["wal", "--dir", str(d), "repair", "--yes"])
    assert r.exit_code == 0, r.output + r.stderr
    dropped = [x for x in r.output.splitlines() if x.startswith("dropped")]
    assert len(dropped) == 1 and f"LSN 2, entry {entries[1].entry_id}" in dropped[0]
    r = invoke(["wal", "--dir", str(d), "inspect", "--status", "pending", "--json"])
    assert r.exit_code == 0
    assert [x["lsn"] for x in orjson.loads(r.stdout)] == [1, 3, 4, 5]


# ------------------------------------------------------------------ inspect, failed, retry, discard


def test_inspect_filters(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    trades = make_log(d, n=3)
    dep = deposits(d, ["5"])
    with WALStorage(d) as log:
        log.update_status(trades[0], WALEntryStatus.COMPLETED)
    base = ["wal", "--dir", str(d), "inspect", "--json"]

    def ids(args: list[str]) -> list[str]:
        r = invoke([*base, *args])
        assert r.exit_code == 0, r.output
        return [e["entry_id"] for e in orjson.loads(r.stdout)]

    assert len(ids([])) == 4
    assert ids(["--status", "completed"]) == [str(trades[0].entry_id)]
    assert len(ids(["--status", "PENDING"])) == 3
    assert ids(["--operation", "atomic_balance_update"]) == [str(dep[0].entry_id)]
    assert ids(["--limit", "2"]) == [str(trades[0].entry_id), str(trades[1].entry_id)]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert ids(["--since", future]) == []
    assert len(ids(["--since", "2000-01-01"])) == 4
    entry = orjson.loads(invoke([*base, "--operation", "atomic_balance_update"]).stdout)[0]
    assert entry["kwargs"]["delta"] == {"$decimal": "5"}
    table = invoke(["wal", "--dir", str(d), "inspect", "--limit", "1"]).output
    assert "LSN" in table and "more entries match" in table
    bad = invoke(["wal", "--dir", str(d), "inspect", "--since", "yesterday"])
    assert bad.exit_code == 2 and "ISO 8601" in bad.output


def test_failed_retry_and_discard(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    e = make_log(d, n=3)
    with WALStorage(d) as log:
        log.update_status(e[0], WALEntryStatus.FAILED, "constraint violated", attempts=10)
        log.update_status(e[1], WALEntryStatus.FAILED, "bad symbol", attempts=10)
        log.update_status(e[2], WALEntryStatus.COMPLETED)
    w = ["wal", "--dir", str(d)]

    listed = invoke([*w, "failed"])
    assert listed.exit_code == 0
    assert "constraint violated" in listed.output and "bad symbol" in listed.output
    assert len(orjson.loads(invoke([*w, "failed", "--json"]).stdout)) == 2

    r = invoke([*w, "retry", str(e[0].entry_id)])
    assert r.exit_code == 0 and "PENDING again" in r.output
    again = status_of(d, e[0])
    assert again.status is WALEntryStatus.PENDING and again.attempts == 0

    # a COMPLETED entry is never retried: it would be applied twice
    r = invoke([*w, "retry", str(e[2].entry_id)])
    assert r.exit_code == 1
    assert_one_line_error(r.stderr, "COMPLETED", "twice")
    # unknown ids and bad usage: one line each
    r = invoke([*w, "retry", "00000000-0000-4000-8000-000000000000"])
    assert r.exit_code == 1
    assert_one_line_error(r.stderr, "no entry 00000000-0000-4000-8000-000000000000")
    r = invoke([*w, "discard", "not-an-id", "--yes"])
    assert r.exit_code == 1
    assert_one_line_error(r.stderr, "no entry not-an-id")
    assert invoke([*w, "retry"]).exit_code == 2

    # discard asks first; "n" changes nothing
    r = invoke([*w, "discard", str(e[1].entry_id), "--reason", "bad data"], stdin="n\n")
    assert r.exit_code == 1 and "never be applied" in r.output
    assert status_of(d, e[1]).status is WALEntryStatus.FAILED
    r = invoke([*w, "discard", str(e[1].entry_id), "--reason", "bad data"], stdin="y\n")
    assert r.exit_code == 0
    gone = status_of(d, e[1])
    assert gone.status is WALEntryStatus.COMPLETED
    assert gone.last_error == "discarded by operator: bad data"
    r = invoke([*w, "discard", str(e[1].entry_id), "--yes"])
    assert r.exit_code == 1
    assert_one_line_error(r.stderr, "discarded already")
    assert invoke([*w, "failed"]).output.strip() == "no FAILED entries (no dead letters)"


def test_retry_all(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    e = make_log(d, n=3)
    with WALStorage(d) as log:
        log.update_statuses([(x, WALEntryStatus.FAILED, "refused", 10) for x in e[:2]])
    r = invoke(["wal", "--dir", str(d), "retry", "--all"])
    assert r.exit_code == 0 and r.output.startswith("2 FAILED entries are PENDING again")
    assert [status_of(d, x).status for x in e] == [WALEntryStatus.PENDING] * 3


# ------------------------------------------------------------------ sync, compact, bench


def test_sync_applies_pending_entries_once(tmp_path: Path) -> None:
    from wal.db import DatabaseManager

    d = tmp_path / "wal"
    entries = deposits(d, ["10", "2.5", "0.25"])
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    DatabaseManager(url).dispose()  # sync never creates a database
    r = run_atb(["wal", "--dir", str(d), "--database-url", url, "sync"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("applied 3,") and "still pending 0" in r.stdout
    assert all(status_of(d, e).status is WALEntryStatus.COMPLETED for e in entries)
    db = DatabaseManager(url)
    try:
        assert db.get_balance() == Decimal("12.75")
    finally:
        db.dispose()
    j = invoke(["wal", "--dir", str(d), "--database-url", url, "sync", "--json"])
    assert j.exit_code == 0
    assert orjson.loads(j.stdout)["applied"] == 0

    # an entry the database refuses stays pending: exit 1
    with WALStorage(d) as log:
        log.append(WALEntry.create("atomic_balance_update", kwargs={"delta": "x"}))
    bad = invoke(["wal", "--dir", str(d), "--database-url", url, "sync"])
    assert bad.exit_code == 1
    assert "refused (will be retried) 1" in bad.stdout and "still pending 1" in bad.stdout


def test_compact(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    e = make_log(d, n=20, blob=300, segment_bytes=4096)
    with WALStorage(d) as log:
        log.update_statuses([(x, WALEntryStatus.COMPLETED, None, None) for x in e[:15]])
        for bad in (float("nan"), float("inf"), -1.0, 1e300):  # refused, nothing dropped
            with pytest.raises(WALArgumentError, match="retention"):
                log.compact(bad)
        assert log.count(WALEntryStatus.COMPLETED) == 15
    for bad in ("nan", "inf", "1e400", "-1"):  # a usage error, one line, no traceback
        r = invoke(["wal", "--dir", str(d), "compact", "--retention-hours", bad])
        assert r.exit_code == 2 and "retention-hours" in r.output and "Traceback" not in r.output
    keep = invoke(["wal", "--dir", str(d), "compact", "--json"])  # default: keep one week
    assert keep.exit_code == 0
    assert orjson.loads(keep.stdout)["entries_dropped"] == 0
    r = invoke(["wal", "--dir", str(d), "compact", "--retention-hours", "0", "--json"])
    assert r.exit_code == 0, r.output
    sizes = orjson.loads(r.stdout)
    assert sizes["entries_dropped"] == 15 and sizes["retention_hours"] == 0
    assert sizes["bytes_after"] < sizes["bytes_before"]
    with WALStorage.open_readonly(d) as log:
        assert log.count(WALEntryStatus.PENDING) == 5
    t = invoke(["wal", "--dir", str(d), "compact", "--retention-hours", "0"])
    assert t.exit_code == 0 and t.output.startswith(f"compacted {d}:")


def test_bench_quick(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    r = invoke(["wal", "bench", "--dir", str(tmp_path / "b"), "--quick", "--json"])
    assert r.exit_code == 0, r.output
    doc = orjson.loads(r.stdout)
    assert doc["measurements"] and isinstance(doc["advice"], str)
    assert list((tmp_path / "b").iterdir()) == []  # its scratch directory is gone


def test_bench_speaks_to_the_user_not_to_the_project(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    r = invoke(["wal", "bench", "--dir", str(tmp_path / "b"), "--quick"])
    assert r.exit_code == 0, r.output
    out = r.output
    # what to choose on this disk, each choice with its measured cost
    assert "what to choose on this disk:" in out
    assert "WAL_FSYNC=always" in out and "µs" in out and "trades/s" in out
    assert "group commit" in out and "append_many" in out and "not for money" in out
    # the project's own performance targets are for benchmarks/, not for the user
    assert "not met" not in out and "target" not in out
    help_text = invoke(["wal", "bench", "--help"]).output
    assert "30 s" not in help_text and "fsync every trade, or batch?" in help_text


def test_verify_tells_a_damaged_last_record_from_a_crashs_tear(tmp_path: Path) -> None:
    """A flipped bit in the complete last record is not what a crash leaves: verify says so
    and where it will go (a .suspect file), not "a torn tail ... .broken"."""
    d = tmp_path / "wal"
    make_log(d, n=5)
    seg = list_segments(d)[-1][1]
    data = bytearray(seg.read_bytes())
    end = len(bytes(data).rstrip(b"\x00"))
    start = bytes(data).rfind(b"\n", 0, end - 1) + 1  # the last record's line
    data[start + 40] ^= 0x01  # inside its JSON: the checksum no longer matches
    seg.write_bytes(bytes(data))
    r = invoke(["wal", "--dir", str(d), "verify"])
    assert r.exit_code == 1
    assert "the last record damaged" in r.output and ".suspect" in r.output, r.output
    assert "torn tail only" not in r.output
