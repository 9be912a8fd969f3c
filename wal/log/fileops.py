"""The file operations the log's durability depends on, behind one small interface.

Every operation that changes what survives a crash (open-for-write, write, fdatasync,
fsync of a directory, rename, unlink, truncate, fallocate) goes through a ``FileOps``.
``OSFileOps`` is the real thing. Tests pass their own implementation to
``WALStorage(fs=...)`` to model the page cache (what survives a power loss) and to inject
ENOSPC, EIO and short writes where the real fault cannot be produced. Reads go straight to
the OS: they change nothing on disk.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol

__all__ = ["FileOps", "OSFileOps", "write_all"]


class FileOps(Protocol):
    """What the storage asks of the file system. Paths are ``str``; fds are ``int``."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int: ...
    def write(self, fd: int, data: bytes) -> int: ...
    def fdatasync(self, fd: int) -> None: ...
    def close(self, fd: int) -> None: ...
    def fsync_dir(self, path: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def truncate(self, path: str, length: int) -> None: ...
    def fallocate(self, fd: int, offset: int, length: int) -> None: ...


class OSFileOps:
    """The real file system. Never follows a symlink: a file of the log that is a symlink
    fails to open (ELOOP) instead of writing, truncating or copying what it points to."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, mode)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def truncate(self, path: str, length: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, length)
            os.fsync(fd)  # the cut must be durable before anything is appended after it
        finally:
            os.close(fd)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        """Give the file its blocks (``posix_fallocate``); the new size is durable only after
        the next fdatasync. Raises ``OSError`` (``EOPNOTSUPP``) where the file system cannot."""
        os.posix_fallocate(fd, offset, length)


def write_all(fs: FileOps, fd: int, data: bytes) -> None:
    """Write every byte, continuing after a short write; the next write reports the cause."""
    while data:
        n = fs.write(fd, data)
        if n <= 0:
            raise OSError(errno.EIO, f"write returned {n}")
        data = data[n:]
