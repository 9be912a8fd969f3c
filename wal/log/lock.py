"""One writer per log: an exclusive ``flock`` on the log directory and on ``<dir>/LOCK``.

``flock`` locks belong to an open file description, so a second ``WALStorage`` in the same
process is refused just like one in another process. The owner writes its pid into ``LOCK``
so the refused one can name it. The locks die with their process (SIGKILL included): no
stale lock files to clean up. ``flock`` does not work across NFS: keep the log on a local disk.

The directory itself is locked too: a directory cannot be deleted while the log is in it, so
an operator deleting ``LOCK`` while a writer runs does not let a second writer in. The writer
also checks, after each rotation and every ``CHECK_EVERY`` flushes, that ``LOCK`` is still the
file it locked (``still_ours``), and halts if not. ``LOCK`` is opened with ``O_NOFOLLOW``: a
symlink named ``LOCK`` is refused, its target never truncated.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from wal.errors import WALLockedError, WALUnsafeFileError
from wal.log.fileops import file_kind, open_regular

__all__ = [
    "CHECK_EVERY",
    "LOCK_NAME",
    "WriterLock",
    "lock_file_problem",
    "move_bad_lock",
    "read_owner_pid",
]

LOCK_NAME = "LOCK"
CHECK_EVERY = 1024  # flushes between two checks that LOCK is still ours (and after a rotation)


def read_owner_pid(directory: Path) -> int | None:
    """The pid written by the current (or last) owner of the lock, if readable. None when
    ``LOCK`` is missing or not a regular file (a FIFO, a device or a symlink is never read:
    ``lock_file_problem`` says what it is)."""
    try:
        fd = open_regular(directory / LOCK_NAME)
    except (OSError, WALUnsafeFileError):
        return None
    try:
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
    finally:
        os.close(fd)


def lock_file_problem(directory: Path) -> str | None:
    """Why no writer can take the log's lock (None: LOCK is a regular file, or not there
    yet): a directory, a symlink or a device at ``LOCK`` is refused by every writer."""
    try:
        st = os.lstat(directory / LOCK_NAME)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{LOCK_NAME} cannot be read ({exc.strerror})"
    if stat.S_ISREG(st.st_mode):
        return None
    what = file_kind(st.st_mode)
    return (
        f"{LOCK_NAME} is {what}, not a regular file: no writer can lock the log (the trading "
        "process refuses to start); move it out of the log directory, or `atb wal repair` "
        "moves it into its backup"
    )


def move_bad_lock(directory: Path, dest: Path) -> bool:
    """Move a ``LOCK`` that is not a regular file (``lock_file_problem``) to ``dest``, as it
    is (a symlink is never followed), under the directory's lock, which every writer takes
    first: no writer is running meanwhile. False: LOCK was fine, nothing moved."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WALLockedError(directory, read_owner_pid(directory)) from None
        if lock_file_problem(directory) is None:
            return False
        os.rename(directory / LOCK_NAME, dest)  # the entry itself moves, whatever it is
        os.fsync(dir_fd)  # the move is durable before a new LOCK is made in its place
        return True
    finally:
        os.close(dir_fd)  # closing releases the directory's lock


class WriterLock:
    """Held from ``acquire()`` to ``release()``; raises ``WALLockedError`` when taken."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = -1
        self._dir_fd = -1
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the LOCK we hold
        self._pid = 0

    def acquire(self) -> None:
        path = self.directory / LOCK_NAME
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(dir_fd)
            raise WALLockedError(self.directory, read_owner_pid(self.directory)) from None
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600
            )
        except OSError as exc:
            os.close(dir_fd)
            if exc.errno == errno.ELOOP:
                raise WALUnsafeFileError(path, "a symlink") from None
            if exc.errno == errno.EISDIR:
                raise WALUnsafeFileError(path, "a directory") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            os.close(dir_fd)
            raise WALUnsafeFileError(path, file_kind(st.st_mode))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            os.close(dir_fd)
            raise WALLockedError(self.directory, read_owner_pid(self.directory)) from None
        os.ftruncate(fd, 0)
        # only informational: no fsync needed, the lock itself is not on disk
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd, self._dir_fd = fd, dir_fd
        self._identity = (st.st_dev, st.st_ino)
        self._pid = os.getpid()

    def still_ours(self) -> str | None:
        """None while ``LOCK`` is the file this writer locked; else what happened to it."""
        try:
            st = os.lstat(self.directory / LOCK_NAME)
        except FileNotFoundError:
            return "LOCK was deleted"
        if (st.st_dev, st.st_ino) != self._identity:
            return "LOCK was replaced by another file"
        return None

    def release(self) -> None:
        """Unlock and close. In a process forked from the owner, only close this process's
        copies of the descriptors: an unlock there would release the owner's lock."""
        fd, dir_fd = self._fd, self._dir_fd
        self._fd = self._dir_fd = -1
        if fd < 0:
            return
        try:
            if os.getpid() == self._pid:
                fcntl.flock(fd, fcntl.LOCK_UN)
                fcntl.flock(dir_fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            os.close(dir_fd)
