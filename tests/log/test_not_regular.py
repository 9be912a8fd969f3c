"""A FIFO, a device or a symlink where the library expects one of its own regular files is
refused with one clear error, at once: never an ``open()`` or ``read()`` that blocks forever.

Every file read in (or beside) the log directory goes through ``open_regular`` /
``read_regular`` (``O_NONBLOCK | O_NOFOLLOW``, then ``fstat``: a regular file or nothing);
files written through ``OSFileOps`` too. The CLI runs in a subprocess with a timeout as a
guard: the assertions are on its output, a timeout is the failure. In-process calls run in a
thread with a bounded ``join`` for the same reason (the FIFO is opened from the test's side
afterwards so that a blocked thread is released).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fifo_guard import GUARD_S, answers
from helpers_log import make_entry

from wal import WALStorage
from wal.errors import WALUnsafeFileError
from wal.log.fileops import OSFileOps, open_regular, read_regular
from wal.log.lock import LOCK_NAME, lock_file_problem, read_owner_pid
from wal.orders.audit import read_digest
from wal.orders.paperstate import _read_or_none
from wal.sync.identity import read_target
from wal.sync.status import read_view

BIN = Path(sys.executable).parent
ATB = shutil.which("atb", path=str(BIN))
ATB_CMD = [ATB] if ATB else [sys.executable, "-m", "cli.main"]


def make_log(d: Path) -> None:
    with WALStorage(d) as log:
        for i in range(3):
            log.append(make_entry(i))


def run_atb(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAL_")}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [*ATB_CMD, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=GUARD_S,
        check=False,
    )


# ------------------------------------------------------------------ the helpers themselves


def test_read_regular_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"x" * 10)
    (tmp_path / "link").symlink_to(tmp_path / "file")
    with pytest.raises(WALUnsafeFileError, match=r"FIFO \(named pipe\)"):
        answers(lambda: read_regular(fifo), fifo)
    with pytest.raises(WALUnsafeFileError, match="a directory"):
        read_regular(tmp_path / "dir")
    with pytest.raises(WALUnsafeFileError, match="a symlink"):
        read_regular(tmp_path / "link")
    with pytest.raises(WALUnsafeFileError, match="a device"):
        read_regular("/dev/null")
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing")
    assert read_regular(tmp_path / "file") == b"x" * 10
    with pytest.raises(ValueError, match="larger than 5 bytes"):
        read_regular(tmp_path / "file", limit=5)


def test_a_fifo_is_never_opened_for_writing_by_the_log(tmp_path: Path) -> None:
    fifo = tmp_path / "next.wal.prep"
    os.mkfifo(fifo)
    with pytest.raises(WALUnsafeFileError, match="FIFO"):  # no reader: it would block
        answers(lambda: OSFileOps().open(str(fifo), os.O_WRONLY), fifo)
    with pytest.raises(WALUnsafeFileError, match="FIFO"):
        answers(lambda: open_regular(fifo, os.O_RDWR), fifo)  # RDWR never blocks: fstat says
    with pytest.raises(WALUnsafeFileError, match="FIFO"):
        answers(lambda: OSFileOps().truncate(str(fifo), 0), fifo)


# ------------------------------------------------------------------ LOCK


def test_a_fifo_at_lock(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    make_log(d)
    (d / LOCK_NAME).unlink()
    os.mkfifo(d / LOCK_NAME)
    fifo = d / LOCK_NAME
    assert answers(lambda: read_owner_pid(d), fifo) is None
    problem = lock_file_problem(d)
    assert problem is not None and problem.startswith("LOCK is a FIFO (named pipe)")
    with pytest.raises(WALUnsafeFileError, match="FIFO"):
        answers(lambda: WALStorage(d), fifo)
    for args in (["status", "--no-db"], ["status", "--no-db", "--json"]):
        r = run_atb(["wal", "--dir", "wal", *args], tmp_path)
        assert "Traceback" not in r.stderr, r.stderr
        assert "LOCK is a FIFO (named pipe), not a regular file" in r.stdout, r.stdout
        assert r.returncode == 1, (r.stdout, r.stderr)


# ------------------------------------------------------------------ the other files


@pytest.mark.parametrize(
    ("name", "where", "said"),
    [
        ("HALT", "stdout", "HALT is a FIFO (named pipe), not a halt file: halted"),
        ("database.json", "stdout", "database.json is a FIFO (named pipe)"),
        ("manager-status.json", "stdout", "unreadable manager-status.json"),
        ("last-cli-sync.json", "stdout", "unreadable last-cli-sync.json"),
        ("MANIFEST", "stderr", "MANIFEST is a FIFO (named pipe)"),
    ],
)
def test_wal_status_answers_with_a_fifo_in_the_log_directory(
    tmp_path: Path, name: str, where: str, said: str
) -> None:
    d = tmp_path / "wal"
    make_log(d)
    with contextlib.suppress(FileNotFoundError):
        (d / name).unlink()
    os.mkfifo(d / name)
    for args in (["status", "--no-db"], ["status", "--no-db", "--json"]):
        r = run_atb(["wal", "--dir", "wal", *args], tmp_path)
        assert "Traceback" not in r.stderr, r.stderr
        assert said in getattr(r, where), (r.stdout, r.stderr)
        assert "FIFO" in r.stdout + r.stderr


def test_the_small_files_readers_refuse_a_fifo(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    d.mkdir()
    for name in ("database.json", "manager-status.json", "order-audit.digest", "paper.json"):
        os.mkfifo(d / name)
    fifos = sorted(d.iterdir())
    with pytest.raises(ValueError, match=r"database\.json is a FIFO"):
        answers(lambda: read_target(d), *fifos)
    view = answers(lambda: read_view(d), *fifos)
    assert view is not None and "FIFO" in view["error"]
    with pytest.raises(WALUnsafeFileError, match="FIFO"):
        answers(lambda: read_digest(d / "order-audit.digest"), *fifos)
    with pytest.raises(ValueError, match=r"FIFO.*not a paper broker state file"):
        answers(lambda: _read_or_none(d / "paper.json"), *fifos)
