"""The file operations the log's durability depends on, behind one small interface.

Every operation that changes what survives a crash (open-for-write, write, fdatasync,
fsync of a directory, rename, unlink, truncate, fallocate) goes through a ``FileOps``.
``OSFileOps`` is the real thing. Tests pass their own implementation to
``WALStorage(fs=...)`` to model the page cache (what survives a power loss) and to inject
ENOSPC, EIO and short writes where the real fault cannot be produced. Reads go straight to
the OS: they change nothing on disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Protocol

from wal.errors import WALUnsafeFileError

__all__ = ["FileOps", "OSFileOps", "write_all", "write_file_atomic"]


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


def write_file_atomic(
    fs: FileOps, directory: str | os.PathLike[str], name: str, data: bytes, *, durable: bool = True
) -> None:
    """Make ``directory/name`` hold ``data``, atomically: the old bytes or the new, never a mix.

    The one way the library writes a small file of its own (``MANIFEST``, ``database.json``,
    ``manager-status.json``, ...): ``<name>.tmp`` is created afresh (``O_CREAT | O_EXCL``,
    mode 0600; ``fs`` opens with ``O_NOFOLLOW``), written, fdatasynced, renamed over ``name``
    (a rename replaces a symlink there, never writes through it), then the directory is
    fsynced. A leftover ``.tmp`` (or a symlink planted there) is unlinked first, never
    followed or truncated. ``durable=False`` (an informational view whose loss on power
    failure loses nothing) skips the two fsyncs, never the rest.

    A failure up to the rename removes the temp file and raises ``OSError`` whose
    ``filename`` is the temp file; ``name`` is then the old file or the new one, whole.
    ``WALUnsafeFileError`` when the temp name is taken by a directory.
    """
    tmp = os.path.join(directory, name + ".tmp")
    try:
        fs.unlink(tmp)  # a leftover of an interrupted write, or something planted: never followed
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.EPERM):
            raise
        raise WALUnsafeFileError(Path(tmp), "a directory") from None
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fs, fd, data)
        if durable:
            fs.fdatasync(fd)  # never rename an unsynced file over the old one
    except OSError as exc:
        _discard(fs, fd, tmp)
        raise OSError(exc.errno, exc.strerror or str(exc), tmp) from exc
    except BaseException:
        _discard(fs, fd, tmp)
        raise
    fs.close(fd)
    try:
        fs.rename(tmp, os.path.join(directory, name))  # atomic: the old file or the new one
    except OSError as exc:
        with contextlib.suppress(OSError):
            fs.unlink(tmp)  # never leave the temp file behind (gone already if it was renamed)
        raise OSError(exc.errno, exc.strerror or str(exc), tmp) from exc
    if durable:
        fs.fsync_dir(os.fspath(directory))  # the rename is durable only after the directory fsync


def _discard(fs: FileOps, fd: int, tmp: str) -> None:
    """Close and remove a temp file that could not be written (best effort: the error that
    got us here is the one the caller hears)."""
    with contextlib.suppress(OSError):
        fs.close(fd)
    with contextlib.suppress(OSError):
        fs.unlink(tmp)
