"""F12: a repair killed while it copies the log leaves ``<backup>.partial`` beside it; the next
``atb wal status``, ``verify`` and ``repair`` say what it is, that it holds copies only, and
that it can be removed.

The kill is a real ``SIGKILL`` of a real ``atb wal repair`` process, delivered at a named point
(``WAL_CRASH_POINT=repair.after_backup_copy:2`` with ``WAL_CRASH_ACTION=stop``: the process
stops itself there after copying its second file; the test sees it stopped and kills it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from test_verify import CASES, build_log, snapshot

from wal.log.backups import partial_backups

BIN = Path(sys.executable).parent
ATB = shutil.which("atb", path=str(BIN))
ATB_CMD = [ATB] if ATB else [sys.executable, "-m", "cli.main"]

pytestmark = pytest.mark.timeout(300)
# none of the machine's WAL_*, DATABASE_URL settings reaches the commands
ENV = {k: v for k, v in os.environ.items() if not k.startswith("WAL_") and k != "DATABASE_URL"}


def atb(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ATB_CMD, "wal", "--dir", str(d), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=d.parent,
    )


def kill_repair_mid_copy(d: Path) -> None:
    """Start `atb wal repair --yes`, let it stop itself after its second copy, SIGKILL it."""
    env = {
        **ENV,
        "WAL_CRASH_POINT": "repair.after_backup_copy:2",
        "WAL_CRASH_ACTION": "stop",
    }
    child = subprocess.Popen(
        [*ATB_CMD, "wal", "--dir", str(d), "repair", "--yes"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=d.parent,
    )
    try:
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status  # it reached the point (not an early exit)
        os.kill(child.pid, signal.SIGKILL)
        _, status = os.waitpid(child.pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        child.returncode = -signal.SIGKILL  # reaped above
        if child.poll() is None:  # pragma: no cover - only if an assert above failed
            child.kill()


def test_a_repair_killed_while_it_copies_leaves_a_partial_backup_that_is_named(
    tmp_path: Path,
) -> None:
    d = tmp_path / "wal"
    build_log(d)
    CASES[3].mutate(d)  # a torn tail: repair backs up, then cuts it; the log still opens
    before = {k: v[0] for k, v in snapshot(d).items() if k != "LOCK"}

    kill_repair_mid_copy(d)

    (partial,) = partial_backups(d)
    assert partial.parent == tmp_path and partial.name.startswith("wal.backup-")
    assert partial.name.endswith(".partial")
    assert len(list(partial.iterdir())) == 2  # two copies made, then the kill
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["wal", partial.name])
    assert {k: v[0] for k, v in snapshot(d).items() if k != "LOCK"} == before  # untouched

    def named(text: str) -> bool:
        return str(partial) in text and "copies only" in text and "rm -r" in text

    # status (table and JSON), verify: one line each, not a health problem
    out = atb(d, "status", "--no-db", "--json")
    doc = orjson.loads(out.stdout)
    assert len(doc["notes"]) == 1 and named(doc["notes"][0])
    assert not any("partial" in p for p in doc["health"]["problems"])
    out = atb(d, "status", "--no-db")
    assert [line for line in out.stdout.splitlines() if line.startswith("note ")]
    assert named(out.stdout)
    out = atb(d, "verify")
    assert named(out.stdout) and "note" in out.stdout
    doc = orjson.loads(atb(d, "verify", "--json").stdout)
    assert any(named(n) for n in doc["notes"])

    # the next repair says it too, makes its own backup, and leaves the partial one alone
    out = atb(d, "repair", "--yes")
    assert out.returncode == 0, out.stderr
    assert named(out.stdout)
    backups = sorted(p.name for p in tmp_path.iterdir() if p.name != "wal")
    assert partial.name in backups and len(backups) == 2
    assert partial_backups(d) == [partial]


def test_status_names_a_partial_backup_even_when_the_log_cannot_be_read(
    tmp_path: Path,
) -> None:
    d = tmp_path / "wal"
    build_log(d)
    CASES[0].mutate(d)  # a bit flip mid-log: the open refuses the log
    planted = tmp_path / "wal.backup-20260101T000000Z.partial"
    planted.mkdir()  # as a killed repair leaves it
    (tmp_path / "wal.backup-20260101T000000Z").mkdir()  # a finished one: not named
    out = atb(d, "status", "--no-db")
    assert out.returncode == 2
    assert f"note: {planted}: an unfinished backup" in out.stderr
    assert "wal.backup-20260101T000000Z:" not in out.stderr
    out = atb(d, "repair", "--yes", "--json")
    doc = orjson.loads(out.stdout)
    assert any(str(planted) in n for n in doc["notes"])
