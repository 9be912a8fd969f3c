"""Preallocation: the next segment, given its space in the background while the current fills.

``StorageOptions.preallocate`` ("off", "zero", "fallocate"): a segment gets its space before
records go into it, so an append's ``fdatasync`` writes data without committing a new file
size. The ``Preallocator`` (one per ``WALStorage``, owned by its active segment,
:mod:`wal.log.segwriter`) prepares ``PREPARED_NAME`` (``next.wal.prep``): zeros or
``posix_fallocate``, synced, in a background thread. The rotation takes it (``take``), writes
the header into it, syncs it, renames it into place and syncs the directory, so appenders never
wait for the zeroing when it is ready in time. When it is not, the rotation waits for it, or
prepares it inline (``obtain``): where a record goes, and when a segment rotates, never depend
on the thread. When to ask for one is the active segment's call (how full it is).

Nothing here is owed: a crash leaves a file the next open removes. A failure (disk full, a file
system that refuses) only turns preallocation off for this open; ``fallocate`` refused as
unsupported falls back to zeros.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import logging
import os
import threading
from pathlib import Path

from wal.log.fileops import FileOps, write_all
from wal.log.segment import FILE_MODE, PREPARED_NAME

__all__ = ["PrepareStopped", "Preallocator"]

log = logging.getLogger("wal")

ZERO_CHUNK = 1 << 20  # zeros written per call while preparing a segment
ZERO_SYNC_EVERY = 16 << 20  # and synced this often: little dirty data to hold up the log's fsyncs
NO_FALLOCATE = (errno_mod.EOPNOTSUPP, errno_mod.ENOSYS, errno_mod.EINVAL)


class PrepareStopped(Exception):
    """The log is closing: the segment being prepared is abandoned."""


class Preallocator:
    """The next segment of one log, prepared in the background (see the module docstring)."""

    def __init__(self, fs: FileOps, directory: Path, size: int, how: str, *, off: bool) -> None:
        self._fs = fs
        self.directory = directory
        self.size = size  # a segment's size: max_segment_bytes
        self.lock = threading.Lock()  # guards busy and ready
        self.busy = False  # a thread is preparing it
        self.ready = False  # PREPARED_NAME holds a synced, preallocated file
        self.off = off  # never prepare (options, read-only), or not any more (a failure)
        self.how = how  # "fallocate" falls back to "zero" if refused
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()

    def take(self) -> bool:
        """True (and it is ours now) when a prepared next segment is ready."""
        with self.lock:
            ready, self.ready = self.ready, False
            return ready

    def obtain(self, size: int | None = None) -> bool:
        """The prepared next segment for a rotation, now: True (and it is ours) unless
        preallocation is off (options, or a failure). A preparation under way is waited for;
        none started is done inline, so where a record goes never depends on the thread.
        ``size``: the space of one prepared inline, when not a whole segment (a new log's
        first)."""
        if self.thread is not None:
            self.thread.join()  # a preparation under way finishes first (busy is False after)
        with self.lock:
            inline = not (self.busy or self.ready or self.off)
            if inline:
                self.busy = True
        if inline:
            self.prepare(size)  # zeros (or fallocate) written and fdatasynced, synchronously
        return self.take()

    def start(self, background: bool) -> None:
        """Prepare the next segment: in a thread, or inline when not ``background``."""
        with self.lock:
            if self.busy or self.ready or self.off:
                return
            self.busy = True
        if not background:
            self.prepare()
            return
        old = self.thread
        if old is not None:
            old.join()  # it has finished (busy was False): reap it
        self.thread = threading.Thread(target=self.prepare, name="wal-preallocate", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop: a segment being prepared is abandoned (the next open removes it)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    def discard(self) -> None:
        """Remove a prepared segment nobody took (the log is closing, ``close`` was called):
        a closed log leaves no ``max_segment_bytes`` file of zeros behind. Not owed, so no
        directory fsync: if a crash brings the name back, the next open removes it."""
        with self.lock:
            ready, self.ready = self.ready, False
        if ready:
            # nothing owed: a failure (EIO, a lost device) leaves it for the next open
            with contextlib.suppress(OSError):
                self._fs.unlink(str(self.directory / PREPARED_NAME))

    def prepare(self, size: int | None = None) -> None:
        """Give ``PREPARED_NAME`` a segment's space (or ``size`` bytes) and sync it (the
        background thread, or inline).

        Nothing here is owed: a crash leaves a file the next open removes. A failure (disk
        full, a file system that refuses) only turns preallocation off for this open.
        """
        path = str(self.directory / PREPARED_NAME)
        size = self.size if size is None else size
        ok = False
        try:
            # a temporary name: a crash during the preparation leaves no segment, only this
            # file, which the next open removes
            fd = self._fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            try:
                self.allocate(fd, size)  # zero-fill (or fallocate) the whole segment's space
                # the zeros (and the file size) on disk before the rotation renames the file
                # into place: a crash after the rename finds a full-size file whose rest reads
                # as zeros, and the rotation's fdatasync has one page to write, not them all
                self._fs.fdatasync(fd)
            finally:
                self._fs.close(fd)
            ok = True
        except PrepareStopped:
            pass
        except Exception as exc:  # disk full, EIO, a refusal: appends go on without it
            log.warning(
                "could not preallocate the next segment in %s (%s); segments grow with each "
                "append until the log is reopened",
                self.directory,
                exc,
            )
            self.off = True
        finally:
            if not ok:
                with contextlib.suppress(OSError):
                    self._fs.unlink(path)
            with self.lock:
                self.busy = False
                self.ready = ok

    def allocate(self, fd: int, size: int) -> None:
        """Give the open file ``size`` bytes of space: ``posix_fallocate`` or zeros."""
        if self.how == "fallocate":
            try:
                self._fs.fallocate(fd, 0, size)
                return
            except OSError as exc:
                if exc.errno not in NO_FALLOCATE:
                    raise
                log.info("%s: fallocate refused (%s): zeros instead", self.directory, exc)
                self.how = "zero"
        zeros = bytes(min(ZERO_CHUNK, size))
        done = unsynced = 0
        while done < size:
            if self.stop.is_set():
                raise PrepareStopped
            n = min(len(zeros), size - done)
            write_all(self._fs, fd, zeros[:n])
            done += n
            unsynced += n
            if unsynced >= ZERO_SYNC_EVERY and done < size:
                self._fs.fdatasync(fd)  # bound the dirty data the log's own fsyncs might wait on
                unsynced = 0
