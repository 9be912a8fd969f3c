"""Reading entries back from the log's segments, by LSN, while appenders keep writing.

``LogReader`` is the part of ``WALStorage`` (which derives from it) that turns index slots
into entries: it finds a record's segment and offset in the index (:mod:`wal.log.index`), reads
its bytes with ``pread`` under the storage's lock (a backlog's neighbouring records with one
``pread``), then verifies and parses them without the lock, so a reader never holds up an
appender while it parses. Background readers (a drain) also yield to appends in progress.
"""

from __future__ import annotations

import bisect
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from wal.entry import WALEntry, WALEntryStatus
from wal.errors import WALClosedError, WALCorruptionError, WALEntryNotFoundError
from wal.log.fileops import FileOps
from wal.log.index import CODE_NONE, STATUS_CODE, UNFINISHED_CODES, LogIndex, key_hash
from wal.log.options import StorageOptions
from wal.log.record import RecordError, decode_line
from wal.log.segment import SegmentInfo

__all__ = ["LogReader"]


class LogReader(LogIndex):
    """Reads entries back from disk (a base of ``WALStorage``; see the module docstring)."""

    # set up by WALStorage.__init__ (recovery and compaction work on this narrow view)
    directory: Path
    options: StorageOptions
    readonly: bool
    _fs: FileOps
    _next_lsn: int  # the LSN the next record gets
    _written_lsn: int  # highest LSN written and indexed
    _durable_lsn: int  # highest LSN fsynced
    _mutex: threading.Lock
    _cond: threading.Condition
    _closed: bool
    _segments: list[SegmentInfo]
    _read_fds: dict[int, int]  # segment's first LSN -> read-only descriptor
    _appenders: int  # foreground writers between enqueue and acknowledgement
    _yielding: int  # background threads in yield_to_appenders()

    def _segment_for(self, lsn: int) -> SegmentInfo:
        firsts = [s.first for s in self._segments]
        k = bisect.bisect_right(firsts, lsn) - 1
        if k < 0:
            raise WALEntryNotFoundError(lsn)
        return self._segments[k]

    def _read_raw(self, lsn: int) -> tuple[bytes, Path, int]:
        """One record's bytes by LSN, with its file and offset (caller holds the lock)."""
        i = lsn - self._base
        if i < 0 or i >= self._n or self._lengths[i] == 0:
            raise WALEntryNotFoundError(lsn)
        return self._read_span(self._segment_for(lsn), self._offsets[i], self._lengths[i])

    @staticmethod
    def _decode_raw(raw: tuple[bytes, Path, int]) -> dict[str, Any]:
        """Verify and parse what ``_read_raw`` read (no lock needed)."""
        data, path, off = raw
        try:
            return decode_line(data[:-1])
        except RecordError as exc:
            raise WALCorruptionError(path, 0, off, exc.problem) from None

    def _read_record(self, lsn: int) -> dict[str, Any]:
        """Read one record back from disk by LSN (caller holds the lock or is recovering)."""
        return self._decode_raw(self._read_raw(lsn))

    def _raw_entry(
        self, lsn: int
    ) -> tuple[tuple[bytes, Path, int], tuple[bytes, Path, int] | None]:
        """An entry's record and its newest status record, as bytes (caller holds the lock)."""
        s = self._status_rec[lsn - self._base]
        return self._read_raw(lsn), (self._read_raw(s) if s else None)

    def _raw_entries(
        self, lsns: list[int]
    ) -> list[tuple[tuple[bytes, Path, int], tuple[bytes, Path, int] | None]]:
        """``_raw_entry`` of each LSN (ascending); one ``pread`` when they lie close together
        in one segment, as a backlog does (caller holds the lock)."""
        if len(lsns) < 2:
            return [self._raw_entry(lsn) for lsn in lsns]
        base, offsets, lengths = self._base, self._offsets, self._lengths
        seg = self._segment_for(lsns[0])
        i0, i1 = lsns[0] - base, lsns[-1] - base
        lo, hi = offsets[i0], offsets[i1] + lengths[i1]
        useful = sum(lengths[lsn - base] for lsn in lsns)
        if (
            self._segment_for(lsns[-1]) is not seg
            or min(useful, hi - lo) <= 0
            or hi - lo > 2 * useful
        ):
            return [self._raw_entry(lsn) for lsn in lsns]
        data, _, _ = self._read_span(seg, lo, hi - lo)
        out = []
        for lsn in lsns:
            i = lsn - base
            off = offsets[i]
            s = self._status_rec[i]
            rec = (data[off - lo : off - lo + lengths[i]], seg.path, off)
            out.append((rec, self._read_raw(s) if s else None))
        return out

    def _read_span(self, seg: SegmentInfo, off: int, length: int) -> tuple[bytes, Path, int]:
        fd = self._read_fds.get(seg.first)
        if fd is None:
            fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
            self._read_fds[seg.first] = fd
        return os.pread(fd, length, off), seg.path, off

    @classmethod
    def _entry_from_raw(
        cls, raw: tuple[tuple[bytes, Path, int], tuple[bytes, Path, int] | None]
    ) -> WALEntry:
        """Build the entry with its current status from ``_raw_entry`` (no lock needed)."""
        entry = WALEntry.from_dict(cls._decode_raw(raw[0]))
        if raw[1] is not None:
            st = cls._decode_raw(raw[1])
            at = st.get("at")
            entry = entry.with_status(
                WALEntryStatus(st["status"]),
                at=None if at is None else datetime.fromisoformat(at),
                error=st.get("error"),
                attempts=st.get("attempts"),
            )
        return entry

    def _load_entry(self, lsn: int) -> WALEntry:
        return self._entry_from_raw(self._raw_entry(lsn))

    def get_entry(self, entry_id: uuid.UUID | str) -> WALEntry:
        """The entry with its current status; ``WALEntryNotFoundError`` if it is not here."""
        with self._cond:
            self._check_open()
            lsn, _ = self._resolve(entry_id)
            return self._load_entry(lsn)

    def find_by_idempotency_key(self, key: str) -> WALEntry | None:
        """The entry appended with this explicit idempotency key, if it is still in the log."""
        with self._cond:
            self._check_open()
            lsn = self._keys.get(key_hash(key))
            if lsn is None:
                return None
            try:
                entry = self._load_entry(lsn)
            except WALEntryNotFoundError:
                return None
            if entry.idempotency_key == key:
                return entry
            # a 64-bit hash collision: look the slow way
            for e in self.iter_entries():
                if e.idempotency_key == key:
                    return e
            return None

    def _check_open(self) -> None:
        if self._closed:
            raise WALClosedError("the log is closed")

    def get_pending_entries(
        self, *, after_lsn: int = 0, limit: int | None = None, background: bool = False
    ) -> Iterator[WALEntry]:
        """PENDING and SYNCING entries in LSN order, read from disk one at a time.

        ``background=True`` (a drain): before parsing each entry, wait for a flush in
        progress to end (``yield_to_appenders``), so appends keep their latency.
        """
        pos_lsn = after_lsn + 1
        n = 0
        while limit is None or n < limit:
            want = 64 if limit is None else min(64, limit - n)
            lsns = []
            with self._mutex:  # only the index search and the preads hold the lock
                self._check_open()
                start = max(pos_lsn - self._base, 0)
                for m in UNFINISHED_CODES.finditer(self._status, start):
                    lsns.append(m.start() + self._base)
                    if len(lsns) == want:
                        break
                raws = self._raw_entries(lsns)
            if not raws:
                return
            for raw in raws:  # parsing runs unlocked: appenders are not held up by a reader
                if background:
                    self.yield_to_appenders()
                entry = self._entry_from_raw(raw)
                yield entry
                n += 1
                pos_lsn = (entry.lsn or 0) + 1

    def yield_to_appenders(self) -> None:
        """Let appenders in progress finish first: wait (once, 5 ms at most) for one of them.

        Background work (the drain's parsing) calls this between small steps. Python runs
        one thread at a time: an appender woken by its ``fdatasync`` or by its group's leader
        would otherwise wait for the interpreter until the background thread is preempted
        (every 5 ms by default), which is what an append's p99 showed during a drain.
        """
        if not self._appenders:  # unlocked read: only a hint, rechecked below
            return
        with self._mutex:
            if self._appenders:
                self._yielding += 1
                try:
                    self._cond.wait(0.005)  # _append_done notifies; bounded: the drain must go on
                finally:
                    self._yielding -= 1

    def iter_entries(self, statuses: Iterable[WALEntryStatus] | None = None) -> Iterator[WALEntry]:
        """Every entry still in the log, in LSN order, with its current status."""
        wanted = None if statuses is None else {STATUS_CODE[WALEntryStatus(s)] for s in statuses}
        next_lsn = 0  # by LSN, not slot: a compaction may shift the index between yields
        while True:
            with self._cond:
                self._check_open()
                n = self._n
                i = max(next_lsn - self._base, 0)
                while i < n:
                    code = self._status[i]
                    if code != CODE_NONE and (wanted is None or code in wanted):
                        break
                    i += 1
                if i >= n:
                    return
                entry = self._load_entry(i + self._base)
                next_lsn = i + self._base + 1
            yield entry

    def count(self, status: WALEntryStatus) -> int:
        with self._cond:
            return self._counts[STATUS_CODE[WALEntryStatus(status)]]
