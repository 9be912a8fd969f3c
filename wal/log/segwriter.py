"""The active segment: opened for append, written a batch at a time, rotated.

``SegmentWriter`` is the part of ``WALStorage`` (which derives from it) that owns the file
records go into: it reopens the last segment after recovery (written at the end of its
records, never after the zeros of its preallocated rest), creates a segment (its header
durable, then its name: the directory is synced before a record goes into it), writes a
flush's batch with one ``write`` (and one ``fdatasync`` when the batch is to be durable), and
rotates: the full segment is sealed with an ``fdatasync`` and cut back to its last record, then
the next one is created. Every ``CHECK_EVERY`` flushes, and after each rotation, it checks that
``LOCK`` is still the file this writer locked.

Preallocation (:mod:`wal.log.prealloc`): a segment gets its space before records go into it,
so an append's ``fdatasync`` writes data without committing a new file size. A new log's first
segment is prepared inline when the log is created, with less space than a whole segment
(``_first_segment_bytes``: its records up to the switch point and ``FIRST_SEGMENT_SLACK`` more,
or a whole segment when that is smaller), so a short-lived log never zeroes 64 MiB. This module
decides when the next segment is wanted (half of a whole segment written, or half of the
switch point of one that is not whole) and takes it at the rotation: its header is written and
synced, then it is renamed into place. Rotation is deterministic: a segment rotates when the
next batch would take it past ``max_segment_bytes``, and one given less than a whole segment
(a new log's first, or any when preallocation failed) when it holds
``min(PREPARE_UNALLOCATED_AFTER, max_segment_bytes / 2)`` bytes of records; a prepared segment
not ready then is waited for or prepared inline. A sealed segment is cut back to its last
record before the next one exists: only the last segment ever ends in zeros, which recovery
reads as the normal end of the log.

Only the flush's leader calls in here (``_flushing`` set, see :mod:`wal.log.groupcommit`).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from wal.crashpoints import ARMED, crash_point
from wal.errors import WALLockLostError
from wal.log.fileops import write_all
from wal.log.index import IndexRecord
from wal.log.lock import CHECK_EVERY, WriterLock
from wal.log.manifest import write_manifest
from wal.log.prealloc import Preallocator
from wal.log.reading import LogReader
from wal.log.segment import (
    FILE_MODE,
    PREPARED_NAME,
    TEAR_BOUND,
    SegmentInfo,
    segment_header,
    segment_name,
)

__all__ = ["PREPARE_UNALLOCATED_AFTER", "SegmentWriter"]

PREPARE_UNALLOCATED_AFTER = 1 << 20  # a segment given less than a whole segment's space moves
# to a prepared one after this many bytes of records (or half a segment)
FIRST_SEGMENT_SLACK = 64 << 10  # a new log's first segment: zeros past the switch, for its batch


class SegmentWriter(LogReader):
    """Writes into the active segment and rotates it (a base of ``WALStorage``)."""

    # tests of power loss set this False: the next segment is then prepared inline, by the
    # flush that asks for it, so a workload's file operations come in a deterministic order
    prepare_in_background: ClassVar[bool] = True

    # set up by WALStorage.__init__
    _pid: int  # the process that opened the log
    _lock: WriterLock | None  # None when read-only (or closed)
    _flushes_unchecked: int  # flushes since the last check that LOCK is still ours
    _fd: int  # the active segment, open for writing (-1: none)
    _seg_size: int  # the active segment's records end here
    _header_len: int  # the active segment's header: a segment of only this is empty
    _alloc_end: int  # the active segment's file size: data, then preallocated zeros
    _seg_prealloc: bool  # the active segment was given a whole segment's space
    _unsynced: int  # bytes written to the active segment since its last fdatasync
    _prealloc: Preallocator  # the next segment, prepared in the background
    _fsync_count: int
    _fsync_ns: deque[int]  # the latest fsyncs' durations
    fsync_observers: list[Callable[[int], None]]

    def _open_for_append(self) -> None:
        if not self._segments:
            self._create_segment(self._next_lsn)
        elif self._segments[-1].compacted:
            # never append to a compacted segment (its header fixes its range): start a new one
            self._create_segment(self._next_lsn)
        else:
            seg = self._segments[-1]
            # no O_APPEND: a preallocated segment is written at the end of its records, before
            # the zeros of its preallocated rest
            self._fd = self._fs.open(str(seg.path), os.O_WRONLY, FILE_MODE)
            os.lseek(self._fd, seg.size, os.SEEK_SET)
            st = os.fstat(self._fd)
            seg.ino = (st.st_dev, st.st_ino)
            if self.options.fsync != "unsafe_never":
                # what recovery just read may be page cache only (the writer was killed before
                # its fsync): make it durable, so an entry found after a restart survives a
                # power loss
                self._fs.fdatasync(self._fd)
            self._unsynced = 0
            self._seg_size = seg.size
            self._alloc_end = max(st.st_size, seg.size)
            self._seg_prealloc = st.st_size >= self.options.max_segment_bytes
            self._header_len = len(segment_header(seg.first, None))
        if self.recovery_report.manifest_first is None:
            # a new log (or one from before the manifest): record the first LSN it owes,
            # after that segment's header is durable (the manifest never names a lost one)
            first = self._segments[0].first
            write_manifest(self._fs, self.directory, first)
            self.recovery_report.manifest_first = first

    def _create_segment(self, first: int, *, rotation: bool = False) -> None:
        """Create a segment, durable (data and directory entry) before it is used.

        At a ``rotation``, the prepared next segment (waited for, or prepared inline, when
        the background thread has not finished: ``Preallocator.obtain``); else (a new log's
        first segment, or a new one after a compacted last segment) one prepared inline with
        ``_first_segment_bytes`` of space. With preallocation off (or failed), a new file that
        grows with appends."""
        path = self.directory / segment_name(first)
        # the bound this writer keeps (see _write_bounded); never fsyncing, it keeps none
        tear = None if self.options.fsync == "unsafe_never" else TEAR_BOUND
        header = segment_header(first, None, tear)
        # a new log's first segment: space for the records before its switch to a whole
        # prepared one, so its first appends' fdatasyncs commit no new file size either
        prepared = self._prealloc.obtain(None if rotation else self._first_segment_bytes())
        if prepared:
            fd = self._fs.open(str(self.directory / PREPARED_NAME), os.O_WRONLY, FILE_MODE)
        else:
            fd = self._fs.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            write_all(self._fs, fd, header)
            if self.options.fsync != "unsafe_never":
                self._fs.fdatasync(fd)  # the header must be on disk before any record after it
                crash_point("rotate-after-create")
            if prepared:
                # its name makes it a segment: only once its header is durable (above)
                self._fs.rename(str(self.directory / PREPARED_NAME), str(path))
            if self.options.fsync != "unsafe_never":
                # a new file's name is in the directory, not the file: fsync the directory
                self._fs.fsync_dir(str(self.directory))
        except BaseException:
            self._fs.close(fd)
            raise
        if self._fd >= 0:
            self._fs.close(self._fd)
        self._fd = fd
        self._unsynced = 0  # the header was synced (or nothing ever is)
        self._seg_size = self._header_len = len(header)
        st = os.fstat(fd)
        self._alloc_end = max(st.st_size, len(header))
        # a full segment's space: it rotates only when full (a new log's first one, given
        # less, moves to a prepared one at the switch, as on reopen)
        self._seg_prealloc = self._alloc_end >= self.options.max_segment_bytes
        self._segments.append(
            SegmentInfo(first, path, first - 1, False, len(header), (st.st_dev, st.st_ino))
        )

    def _first_segment_bytes(self) -> int:
        """The space a new log's first segment is given: its records up to the switch, and
        room for the batch that crosses it."""
        return min(self.options.max_segment_bytes, self._switch_at() + FIRST_SEGMENT_SLACK)

    def _switch_at(self) -> int:
        """Bytes of records after which a segment not given a whole segment's space (a new log's
        first, or one that grows) moves to a prepared one."""
        return min(PREPARE_UNALLOCATED_AFTER, self.options.max_segment_bytes // 2)

    def _want_prepared(self) -> bool:
        """Should the next segment be prepared now? (leader, after a write)"""
        p = self._prealloc
        if p.off or p.busy or p.ready:
            return False
        if self._seg_prealloc:
            # half full: the next one is ready in time
            return self._seg_size * 2 >= self.options.max_segment_bytes
        # half way to the switch (a first segment, or one that grows): it is ready in time
        return (self._seg_size - self._header_len) * 2 >= self._switch_at()

    def _write_batch(self, batch: list[IndexRecord], sync: bool) -> int:
        """Write a batch to the active segment (rotating first if needed); return the offset
        of its first record. Leader only."""
        data = b"".join([r[1] for r in batch])
        header_only = self._seg_size <= self._header_len
        self._flushes_unchecked += 1
        full = self._seg_size + len(data) > self.options.max_segment_bytes
        # a segment not given a whole segment's space (a new log's first, or one that grows)
        # moves to a prepared one at a fixed size, whether or not the thread has finished
        # preparing it (the rotation then waits for it, or prepares it)
        early = (
            not self._seg_prealloc
            and not self._prealloc.off
            and self._seg_size - self._header_len >= self._switch_at()
        )
        if not header_only and (full or early):
            self._rotate(batch[0][0])
            self._flushes_unchecked = CHECK_EVERY
        if self._flushes_unchecked >= CHECK_EVERY:
            self._check_lock()  # before these records are written, let alone acknowledged
        seg = self._segments[-1]
        off = self._seg_size
        if self._unsynced + len(data) <= TEAR_BOUND or self.options.fsync == "unsafe_never":
            write_all(self._fs, self._fd, data)
            self._unsynced += len(data)
        else:
            self._write_bounded(batch)
        if ARMED:  # a constant: the crash tests' hook costs nothing in production
            crash_point("append-after-write")
        if sync:
            t0 = time.perf_counter_ns()
            self._fs.fdatasync(self._fd)  # the acknowledgement below promises these bytes
            self._record_fsync(time.perf_counter_ns() - t0)
            self._unsynced = 0
            if ARMED:
                crash_point("append-after-fsync")
        self._seg_size = seg.size = off + len(data)
        if self._seg_size > self._alloc_end:
            self._alloc_end = self._seg_size
        seg.end = batch[-1][0]
        if self._want_prepared():
            self._prealloc.start(self.prepare_in_background)
        return off

    def _write_bounded(self, batch: list[IndexRecord]) -> None:
        """Write a batch so that no more than ``TEAR_BOUND`` bytes are ever unsynced (a record
        larger than that alone): in pieces, each synced before the next goes past the bound.

        Recovery relies on it to tell a torn write from corruption: good records after a
        lost page are a later page of the same unacknowledged write only within the bound.
        """
        piece: list[bytes] = []
        size = 0
        for r in batch:
            line = r[1]
            if piece and size + len(line) > TEAR_BOUND:
                self._write_piece(b"".join(piece))
                piece, size = [], 0
            piece.append(line)
            size += len(line)
        if piece:
            self._write_piece(b"".join(piece))

    def _write_piece(self, data: bytes) -> None:
        if self._unsynced and self._unsynced + len(data) > TEAR_BOUND:
            t0 = time.perf_counter_ns()
            # what is written so far is durable before more goes past the tear bound
            self._fs.fdatasync(self._fd)
            self._record_fsync(time.perf_counter_ns() - t0)
            self._unsynced = 0
        write_all(self._fs, self._fd, data)
        self._unsynced += len(data)

    def _check_lock(self) -> None:
        """Halt if ``LOCK`` is not the file this writer locked (after a rotation, and every
        ``CHECK_EVERY`` flushes: an ``lstat``, never on each append)."""
        self._flushes_unchecked = 0
        problem = self._lock.still_ours() if self._lock is not None else None
        if problem is not None:
            raise WALLockLostError(
                f"{problem} in {self.directory} while this process (pid {self._pid}) was "
                "writing: another writer may be appending; this one stops"
            )

    def _record_fsync(self, ns: int) -> None:
        self._fsync_count += 1
        self._fsync_ns.append(ns)
        for observe in self.fsync_observers:
            observe(ns)

    def _rotate(self, first: int) -> None:
        """Seal the active segment and start a new one at ``first``. Leader only."""
        if self.options.fsync != "unsafe_never":
            # a torn record may only ever be in the last segment: seal this one on disk
            t0 = time.perf_counter_ns()
            self._fs.fdatasync(self._fd)
            self._record_fsync(time.perf_counter_ns() - t0)
            self._durable_lsn = self._written_lsn
        if self._alloc_end > self._seg_size:
            # only the last segment may end in zeros: cut this one back to its last record
            # (truncate syncs) before the next segment exists
            self._fs.truncate(str(self._segments[-1].path), self._seg_size)
            self._alloc_end = self._seg_size
        self._create_segment(first, rotation=True)
