"""Group commit: the records of concurrent appenders written with one ``write``, one ``fdatasync``.

After PostgreSQL's ``XLogFlush``: an appender frames its record and takes the next LSN under
one lock. If nobody is flushing or waiting, it writes the record at once with one ``write`` and
makes it durable with one ``fdatasync``: a lone appender pays one fsync per append. Otherwise
it adds the record to the open ``Group``; the group's first writer leads its flush once the
previous one ends (one ``write``, one ``fdatasync`` for the whole group), the others wait on the
group's latch and are woken once, when their records are durable. Status records may be
written without an fsync of their own (``durable=False``): the next flush's fsync covers them.

``GroupCommit`` is the part of ``WALStorage`` (which derives from it) that runs this protocol
(``_enqueue``, ``_commit``, ``_flush``), poisons the log on a failed write or fsync (it is never
retried and believed), and ``sync``: interval mode's fdatasync, from a background thread every
``fsync_interval_ms`` and on close. The bytes go to disk through :mod:`wal.log.segwriter`.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import threading
import time

from wal.errors import WALClosedError, WALError, WALWriteError
from wal.log.index import IndexRecord
from wal.log.segwriter import SegmentWriter
from wal.log.waiters import AsyncWaiters

__all__ = ["Group", "GroupCommit"]

log = logging.getLogger("wal")


class Group:
    """The records that the next flush writes together, and how their writers learn the end.

    The first writer to add records to a group leads its flush; the others (members) wait on
    ``latch``, a lock the leader holds until the flush ends. Each member takes it and hands it
    on at once, so a group of N wakes with N lock hand-offs and no Condition machinery. The
    latch is made only when a second writer joins: a lone appender needs none.
    """

    __slots__ = ("durable", "error", "latch", "led", "records", "waiters")

    def __init__(self) -> None:
        self.records: list[IndexRecord] = []
        self.durable = False  # some record needs an fsync before it is acknowledged
        self.led = False
        self.latch: threading.Lock | None = None
        self.error: BaseException | None = None
        self.waiters: AsyncWaiters | None = None  # coroutines of append_async, by loop

    def join(self) -> None:
        """A member joins (lock held): make the latch, held until ``finish``."""
        if self.latch is None:
            self.latch = threading.Lock()
            self.latch.acquire()

    def wait(self) -> None:
        """A member waits for the end of the flush (lock not held)."""
        assert self.latch is not None
        self.latch.acquire()  # blocks until the leader's finish(), then the member before us
        self.latch.release()  # hand on to the next member

    def finish(self) -> None:
        """The group is flushed (or failed): wake its members, threads and coroutines."""
        if self.latch is not None:
            self.latch.release()
        if self.waiters is not None:
            self.waiters.settle(self.error)


class GroupCommit(SegmentWriter):
    """Group commit, poisoning, ``sync`` (a base of ``WALStorage``; see the module docstring)."""

    # set up by WALStorage.__init__
    _waiting: int  # threads in _wait(): notify only when somebody waits
    _group: Group  # the open group: records waiting for the next flush
    _flushing: bool  # a leader is writing (one flush at a time)
    _failed: WALWriteError | None  # the log is poisoned: every write raises this
    _stop_syncer: threading.Event  # interval mode: stops the background sync thread

    def _check_writable(self) -> None:
        if self._forked:
            assert self._failed is not None
            raise self._failed
        if self._closed:
            raise WALClosedError("the log is closed")
        if self.readonly:
            raise WALError(
                "this log was opened read-only", hint="open it with WALStorage(dir) to write"
            )
        if self._failed is not None:
            raise type(self._failed)(
                f"the log refuses appends after an earlier write failure: {self._failed.message}",
                path=self._failed.path,
                errno=self._failed.errno,
                hint=self._failed.hint,
            )

    def _enqueue(self, records: list[IndexRecord], durable: bool = True) -> tuple[Group, bool]:
        """Add records to the open group (lock held). True: the caller leads its flush."""
        g = self._group
        g.records.extend(records)
        g.durable = g.durable or durable
        if durable:
            self._appenders += 1  # a foreground writer: background work yields to it
        lead = not g.led
        if not lead:
            g.join()
        g.led = True
        return g, lead

    def _commit(self, g: Group, lead: bool) -> None:
        """Group commit (lock not held): return when ``g``'s records are acknowledged.

        The leader waits for the previous flush to end, closes the group, writes all its
        records with one ``write`` and one ``fdatasync``, then wakes the group's members;
        records arriving meanwhile form the next group, whose first writer leads it.
        """
        if not lead:
            g.wait()  # our leader finishes the group once our records are durable (or failed)
            if g.error is not None:
                raise g.error
            return
        with self._cond:
            while self._flushing:
                self._wait()  # one flush at a time: the previous group is being written
            if self._group is g:
                self._group = Group()
            refused: BaseException | None = self._failed
            if refused is None and self._closed:
                refused = WALClosedError("the log was closed before this write was made durable")
            if refused is not None:
                g.error = refused
                g.finish()
                raise refused
            self._flushing = True
        try:
            self._flush(g.records, g.durable)
        except BaseException as exc:
            g.error = exc
            raise
        finally:
            g.finish()

    def _flush(self, batch: list[IndexRecord], durable: bool = True) -> None:
        """Write ``batch`` and make it durable, then index it (caller set ``_flushing``)."""
        sync = durable and self.options.fsync == "always"
        error: BaseException | None = None
        off = 0
        try:
            off = self._write_batch(batch, sync)
        except BaseException as exc:
            error = exc
        with self._mutex:
            self._flushing = False
            if self._waiting:  # the next group's leader, sync() and compact() wait here
                self._cond.notify_all()
            if error is not None:
                self._poison(error)
                raise self._failed or error
            self._index_written(batch, off)
            top = batch[-1][0]
            if top > self._written_lsn:
                self._written_lsn = top
            if sync and top > self._durable_lsn:
                self._durable_lsn = top

    def _append_done(self) -> None:
        """A foreground writer is back (acknowledged or failed): wake a yielding drain."""
        with self._mutex:
            self._appenders -= 1
            if self._yielding:
                self._cond.notify_all()

    def _wait(self, timeout: float | None = None) -> None:
        """Wait on ``_cond`` (lock held), counted so that notifiers can skip an empty wake."""
        self._waiting += 1
        try:
            self._cond.wait(timeout)
        finally:
            self._waiting -= 1

    def _poison(self, error: BaseException) -> None:
        if self._failed is not None:
            return
        if isinstance(error, WALWriteError):
            self._failed = error
            return
        en = getattr(error, "errno", None)
        name = errno_mod.errorcode.get(en, str(en)) if isinstance(en, int) else type(error).__name__
        seg = self._segments[-1].path if self._segments else self.directory
        hint = None
        if en in (errno_mod.EMFILE, errno_mod.ENFILE):
            hint = (
                "the process ran out of file descriptors (not disk space): raise its open-file "
                "limit (ulimit -n) or close files elsewhere, then reopen the log"
            )
        self._failed = WALWriteError(
            f"writing {seg} failed ({name}: {error}); the last entries were not acknowledged",
            path=seg,
            errno=en if isinstance(en, int) else None,
            hint=hint,
        )
        self._failed.__cause__ = error
        log.error("%s", self._failed)

    def sync(self) -> None:
        """Make everything written so far durable (for ``interval`` mode; cheap otherwise)."""
        with self._cond:
            self._check_writable()
            while self._flushing:
                self._wait()
            if self._durable_lsn >= self._written_lsn or self.options.fsync == "unsafe_never":
                return
            top = self._written_lsn
            self._flushing = True
            self._cond.release()
            error: BaseException | None = None
            try:
                t0 = time.perf_counter_ns()
                self._fs.fdatasync(self._fd)  # interval mode: bound the power-loss window
                self._record_fsync(time.perf_counter_ns() - t0)
            except BaseException as exc:
                error = exc
            finally:
                self._cond.acquire()
                self._flushing = False
                self._cond.notify_all()
            if error is not None:
                self._poison(error)
                raise self._failed or error
            self._durable_lsn = max(self._durable_lsn, top)
            self._unsynced = 0  # nobody wrote meanwhile (_flushing was ours)

    def _interval_sync_loop(self) -> None:
        interval = self.options.fsync_interval_ms / 1000.0
        while not self._stop_syncer.wait(interval):
            try:
                self.sync()
            except WALError:
                return  # the storage is poisoned; appends raise from now on
