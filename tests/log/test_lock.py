"""wal.log.lock: one writer per log, in this process and across processes; the lock dies with its
owner (SIGKILL included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from wal import WALLockedError, WALStorage
from wal.log.lock import LOCK_NAME, WriterLock, read_owner_pid

# A process that takes the writer lock (through a real WALStorage), says so, and waits.
HOLDER = """
import sys
from wal import WALStorage
log = WALStorage(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
log.close()
"""


def start_holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"  # blocks until the child holds the lock
    return proc


def test_second_lock_in_the_same_process(tmp_path: Path) -> None:
    a, b = WriterLock(tmp_path), WriterLock(tmp_path)
    a.acquire()
    with pytest.raises(WALLockedError) as ei:
        b.acquire()
    assert ei.value.pid == os.getpid()
    assert f"process {os.getpid()}" in str(ei.value)
    a.release()
    b.acquire()  # free again
    b.release()
    a.release()  # a second release is harmless


def test_second_storage_in_the_same_process(tmp_path: Path) -> None:
    with WALStorage(tmp_path / "log"):
        with pytest.raises(WALLockedError) as ei:
            WALStorage(tmp_path / "log")
        assert ei.value.pid == os.getpid()
        assert ei.value.directory == tmp_path / "log"
    WALStorage(tmp_path / "log").close()  # released by close()


def test_storage_in_another_process(tmp_path: Path) -> None:
    d = tmp_path / "log"
    holder = start_holder(d)
    try:
        with pytest.raises(WALLockedError) as ei:
            WALStorage(d)
        assert ei.value.pid == holder.pid
        assert f"process {holder.pid}" in str(ei.value)
        with WALStorage.open_readonly(d) as ro:  # readers need no lock
            assert ro.next_lsn == 1
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    WALStorage(d).close()


def test_lock_dies_with_a_killed_owner(tmp_path: Path) -> None:
    d = tmp_path / "log"
    holder = start_holder(d)
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=30) == -signal.SIGKILL
    with WALStorage(d) as log:  # no stale lock to clean up
        assert read_owner_pid(d) == os.getpid()
        assert log.next_lsn == 1
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.close()
    holder.stdout.close()


def test_read_owner_pid(tmp_path: Path) -> None:
    assert read_owner_pid(tmp_path) is None
    (tmp_path / LOCK_NAME).write_text("")
    assert read_owner_pid(tmp_path) is None
    (tmp_path / LOCK_NAME).write_text("garbage")
    assert read_owner_pid(tmp_path) is None
    (tmp_path / LOCK_NAME).write_text("1234\n")
    assert read_owner_pid(tmp_path) == 1234


def test_lock_file_is_owner_only(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path)
    lock.acquire()
    try:
        assert (tmp_path / LOCK_NAME).stat().st_mode & 0o777 == 0o600
        assert read_owner_pid(tmp_path) == os.getpid()
    finally:
        lock.release()
