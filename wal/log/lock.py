"""One writer per log: an exclusive ``flock`` on ``<dir>/LOCK``.

``flock`` locks belong to an open file description, so a second ``WALStorage`` in the same
process is refused just like one in another process. The owner writes its pid into the file
so the refused one can name it. The lock dies with its process (SIGKILL included): no stale
lock files to clean up. ``flock`` does not work across NFS: keep the log on a local disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import portalocker

from wal.errors import WALLockedError

__all__ = ["LOCK_NAME", "WriterLock", "read_owner_pid"]

LOCK_NAME = "LOCK"


def read_owner_pid(directory: Path) -> int | None:
    """The pid written by the current (or last) owner of the lock, if readable."""
    try:
        text = (directory / LOCK_NAME).read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


class WriterLock:
    """Held from ``acquire()`` to ``release()``; raises ``WALLockedError`` when taken."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        f = os.fdopen(fd, "r+")
        try:
            portalocker.lock(f, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.exceptions.LockException:
            f.close()
            raise WALLockedError(self.directory, read_owner_pid(self.directory)) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()  # only informational: no fsync needed, the lock itself is not on disk
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            try:
                portalocker.unlock(self._file)
            finally:
                self._file.close()
                self._file = None
