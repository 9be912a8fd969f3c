"""The file operations the log's durability depends on, behind one small interface.

Every operation that changes what survives a crash (open-for-write, write, fdatasync,
fsync of a directory, rename, unlink, truncate, fallocate) goes through a ``FileOps``.
``OSFileOps`` is the real thing. Tests pass their own implementation to
``WALStorage(fs=...)`` to model the page cache (what survives a power loss) and to inject
ENOSPC, EIO and short writes where the real fault cannot be produced. Reads go straight to
the OS: they change nothing on disk, but never through a symlink and never blocking on
a FIFO or a device (``open_regular``, ``read_regular``): every file the library opens in
or beside the log directory must be a regular file, and anything else is refused with a
``WALUnsafeFileError`` naming what it is, instead of hanging the process on a ``open()``
or ``read()`` that never returns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Protocol

from wal.errors import WALUnsafeFileError

__all__ = [
    "FileOps",
    "OSFileOps",
    "file_kind",
    "open_regular",
    "read_regular",
    "write_all",
    "write_file_atomic",
]

# O_NONBLOCK: opening a FIFO or a device never waits (a FIFO opened for reading without a
# writer would block in open(), one opened for writing without a reader too); it changes
# nothing for a regular file. O_NOFOLLOW: a symlink is refused (ELOOP), never followed.
_SAFE_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def file_kind(mode: int | None) -> str:
    """What a file that is not a regular one is, for a message ("a FIFO (named pipe)", ...);
    ``None``: a symlink (the only thing ``O_NOFOLLOW`` refuses before there is a mode)."""
    if mode is None or stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _refused(path: str | os.PathLike[str]) -> WALUnsafeFileError:
    try:
        mode: int | None = os.lstat(path).st_mode
    except OSError:
        mode = None
    return WALUnsafeFileError(Path(path), file_kind(mode))


def _open_checked(path: str | os.PathLike[str], flags: int, mode: int) -> int:
    """``os.open`` that never blocks nor follows a symlink (``OSError``, ``ELOOP``), and
    refuses (``WALUnsafeFileError``) anything that is not a regular file once opened."""
    try:
        fd = os.open(path, flags | _SAFE_FLAGS, mode)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader; a device
            raise _refused(path) from None
        raise
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise WALUnsafeFileError(Path(path), file_kind(st.st_mode))
    return fd


def open_regular(path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """A descriptor of the regular file ``path`` (``flags`` as for ``os.open``), never through
    a symlink and never blocking: a symlink, a directory, a FIFO, a device or a socket at
    ``path`` raises ``WALUnsafeFileError`` saying which (checked with ``fstat`` on the opened
    descriptor: what was opened is what was checked). ``FileNotFoundError`` and other
    ``OSError`` propagate."""
    try:
        return _open_checked(path, flags, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):  # a symlink; a directory opened to write
            raise _refused(path) from None
        raise


def read_regular(path: str | os.PathLike[str], limit: int | None = 1 << 20) -> bytes:
    """The bytes of the regular file ``path`` (``open_regular``: a symlink, directory, FIFO or
    device raises ``WALUnsafeFileError``, never hangs). ``limit``: a file larger than that
    many bytes raises ``ValueError`` (the library's small files are a few KiB; None: any
    size). ``FileNotFoundError`` propagates."""
    fd = open_regular(path)
    try:
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise ValueError(f"{os.fspath(path)} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


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
    """The real file system. Never follows a symlink and opens nothing but a regular file:
    a symlink at a file of the log fails to open (``OSError``, ``ELOOP``) instead of
    writing, truncating or copying what it points to, and a FIFO or a device is refused
    (``WALUnsafeFileError``) instead of blocking the writer in ``open()``."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return _open_checked(path, flags, mode)

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
        fd = _open_checked(path, os.O_WRONLY, 0)
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
