"""Reading entries back from the log's segments, by LSN, while appenders keep writing.

``LogReader`` is the part of ``WALStorage`` (which derives from it) that turns index slots
into entries: it finds a record's segment and offset in the index (:mod:`wal.log.index`), reads
its bytes with ``pread`` under the storage's lock (a backlog's neighbouring records with one
``pread``), then verifies and parses them without the lock, so a reader never holds up an
appender while it parses. Background readers (a drain) also yield to appends in progress.

A read never returns a record other than the one asked for: the decoded record's LSN must be
the one looked up, an entry's id must match the 64 id bits the index holds for that LSN, and a
status record must name that entry. A mismatch means the file changed under the index: for
the writer (which owns the files) that is a ``WALCorruptionError``; for a read-only reader
(``open_readonly``) it is a writer's compaction, and so is a segment file replaced (another
inode) or removed: the reader re-indexes the log and retries, or raises the retryable
``WALLogChangedError``. Read descriptors are kept in an LRU cache of ``MAX_READ_FDS``.
"""

from __future__ import annotations

import bisect
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from wal.entry import WALEntry, WALEntryStatus
from wal.errors import (
    WALClosedError,
    WALCorruptionError,
    WALEntryNotFoundError,
    WALForkedError,
    WALLogChangedError,
)
from wal.log.fileops import FileOps
from wal.log.index import CODE_NONE, STATUS_CODE, UNFINISHED_CODES, LogIndex, key_hash
from wal.log.options import StorageOptions
from wal.log.record import RecordError, decode_line
from wal.log.segment import SegmentInfo, open_read

__all__ = ["MAX_READ_FDS", "LogReader", "RawRecord"]

MAX_READ_FDS = 32  # read descriptors cached (least recently used closed first)
READ_ATTEMPTS = 4  # a read-only reader re-indexes at most this many times for one read
T = TypeVar("T")

# One record as read from disk: (bytes with the newline, file, offset, the LSN asked for,
# the id hash the index holds for it: 0 for a status record)
RawRecord = tuple[bytes, Path, int, int, int]


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
    _read_fds: OrderedDict[int, int]  # segment's first LSN -> read-only descriptor (LRU)
    _appenders: int  # foreground writers between enqueue and acknowledgement
    _yielding: int  # background threads in yield_to_appenders()
    _forked: bool  # set in a child process forked after the open: every use raises

    def _reindex(self) -> None:
        """Forget the index and build it again from disk (read-only readers; WALStorage)."""
        raise NotImplementedError

    def _locked(self, read: Callable[[], T]) -> T:
        """Run ``read`` under the lock. A read-only reader whose files a writer replaced
        meanwhile re-indexes the log and runs it again."""
        with self._cond:
            self._check_open()
            for attempt in range(READ_ATTEMPTS):
                try:
                    return read()
                except WALLogChangedError:
                    if not self.readonly or attempt + 1 == READ_ATTEMPTS:
                        raise
                    self._reindex()
            raise AssertionError("unreachable")  # pragma: no cover

    def _changed(self, path: Path, what: str) -> Exception:
        """The error for a file that is not what the index says: a writer's compaction for a
        read-only reader, damage or tampering for the writer itself."""
        if self.readonly:
            return WALLogChangedError(path, what)
        return WALCorruptionError(path, 0, 0, f"{what} (the file changed under the open log)")

    def _segment_for(self, lsn: int) -> SegmentInfo:
        firsts = [s.first for s in self._segments]
        k = bisect.bisect_right(firsts, lsn) - 1
        if k < 0:
            raise WALEntryNotFoundError(lsn)
        return self._segments[k]

    def _read_raw(self, lsn: int) -> RawRecord:
        """One record's bytes by LSN, with its file and offset (caller holds the lock)."""
        i = lsn - self._base
        if i < 0 or i >= self._n or self._lengths[i] == 0:
            raise WALEntryNotFoundError(lsn)
        data, path, off = self._read_span(
            self._segment_for(lsn), self._offsets[i], self._lengths[i]
        )
        return data, path, off, lsn, self._idh[i] if self._status[i] != CODE_NONE else 0

    def _decode_raw(self, raw: RawRecord) -> dict[str, Any]:
        """Verify and parse what ``_read_raw`` read, and check that it is the record asked
        for: its LSN, and an entry's id (no lock needed)."""
        data, path, off, lsn, idh = raw
        try:
            if len(data) < 2 or data[-1:] != b"\n":
                raise RecordError("the record ends early (the file is shorter than indexed)")
            rec = decode_line(data[:-1])
        except RecordError as exc:
            if self.readonly:
                raise WALLogChangedError(path, f"offset {off}: {exc.problem}") from None
            raise WALCorruptionError(path, 0, off, exc.problem) from None
        got = rec.get("lsn")
        if got != lsn:
            raise self._changed(path, f"offset {off} holds LSN {got!r}, the index says LSN {lsn}")
        if idh:
            sid: Any = rec.get("entry_id")
            try:  # id_hash of the UUID's last 8 bytes, read from its text (hex groups 4 and 5)
                ok = int.from_bytes(bytes.fromhex(sid[19:23] + sid[24:36]), "little") == idh
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise self._changed(path, f"LSN {lsn} at offset {off} is not the entry indexed")
        return rec

    def _read_record(self, lsn: int) -> dict[str, Any]:
        """Read one record back from disk by LSN (caller holds the lock or is recovering)."""
        return self._decode_raw(self._read_raw(lsn))

    def _raw_entry(self, lsn: int) -> tuple[RawRecord, RawRecord | None]:
        """An entry's record and its newest status record, as bytes (caller holds the lock)."""
        i = lsn - self._base
        if i < 0 or i >= self._n or self._status[i] == CODE_NONE:
            raise WALEntryNotFoundError(lsn)
        s = self._status_rec[i]
        return self._read_raw(lsn), (self._read_raw(s) if s else None)

    def _raw_entries(self, lsns: list[int]) -> list[tuple[RawRecord, RawRecord | None]]:
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
            rec = (data[off - lo : off - lo + lengths[i]], seg.path, off, lsn, self._idh[i])
            out.append((rec, self._read_raw(s) if s else None))
        return out

    def _read_span(self, seg: SegmentInfo, off: int, length: int) -> tuple[bytes, Path, int]:
        fds = self._read_fds
        fd = fds.get(seg.first)
        if fd is None:
            fd = self._open_segment(seg)
        else:
            fds.move_to_end(seg.first)
        return os.pread(fd, length, off), seg.path, off

    def _open_segment(self, seg: SegmentInfo) -> int:
        """A read descriptor of ``seg``, checked to be the file that was indexed, cached."""
        try:
            fd = open_read(seg.path)
        except FileNotFoundError:
            raise self._changed(seg.path, "the segment was removed") from None
        st = os.fstat(fd)
        if seg.ino is not None and (st.st_dev, st.st_ino) != seg.ino:
            os.close(fd)
            raise self._changed(seg.path, "the segment was replaced by another file")
        self._cache_fd(seg.first, fd)
        return fd

    def _cache_fd(self, first: int, fd: int) -> None:
        """Keep a read descriptor, closing the least recently used one past ``MAX_READ_FDS``."""
        fds = self._read_fds
        old = fds.pop(first, None)
        if old is not None and old != fd:
            os.close(old)
        fds[first] = fd
        while len(fds) > MAX_READ_FDS:
            _, victim = fds.popitem(last=False)
            os.close(victim)

    def _entry_from_raw(self, raw: tuple[RawRecord, RawRecord | None]) -> WALEntry:
        """Build the entry with its current status from ``_raw_entry`` (no lock needed)."""
        rec = self._decode_raw(raw[0])
        try:
            entry = WALEntry.from_dict(rec)
        except (KeyError, ValueError, TypeError, AttributeError, ArithmeticError) as exc:
            _, path, off, lsn, _ = raw[0]
            raise WALCorruptionError(path, 0, off, f"LSN {lsn}: malformed entry: {exc}") from None
        if raw[1] is not None:
            st = self._decode_raw(raw[1])
            path, off = raw[1][1], raw[1][2]
            if st.get("of") != entry.lsn or st.get("entry_id") != str(entry.entry_id):
                raise self._changed(path, f"the status record at offset {off} is another entry's")
            try:
                at = st.get("at")
                entry = entry.with_status(
                    WALEntryStatus(st["status"]),
                    at=None if at is None else datetime.fromisoformat(at),
                    error=st.get("error"),
                    attempts=st.get("attempts"),
                )
            except (KeyError, ValueError, TypeError) as exc:
                raise WALCorruptionError(path, 0, off, f"malformed status record: {exc}") from None
        return entry

    def _load_entry(self, lsn: int) -> WALEntry:
        return self._entry_from_raw(self._raw_entry(lsn))

    def get_entry(self, entry_id: uuid.UUID | str) -> WALEntry:
        """The entry with its current status; ``WALEntryNotFoundError`` if it is not here."""
        return self._locked(lambda: self._load_entry(self._resolve(entry_id)[0]))

    def find_by_idempotency_key(self, key: str) -> WALEntry | None:
        """The entry appended with this explicit idempotency key, if it is still in the log."""

        def find() -> WALEntry | None:
            lsn = self._keys.get(key_hash(key))
            if lsn is None:
                return None
            try:
                entry = self._load_entry(lsn)
            except WALEntryNotFoundError:
                return None
            if entry.idempotency_key == key:
                return entry
            return self._find_key_slowly(key)  # a 64-bit hash collision

        return self._locked(find)

    def _find_key_slowly(self, key: str) -> WALEntry | None:
        """Every entry read in turn (lock held): for a hash collision, practically never."""
        for i in range(self._n):
            if self._status[i] != CODE_NONE:
                e = self._load_entry(i + self._base)
                if e.idempotency_key == key:
                    return e
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise WALClosedError("the log is closed")
        if self._forked:
            raise WALForkedError(
                f"the log in {self.directory} was opened by another process (this one was "
                "forked from it)"
            )

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

            def batch(pos_lsn: int = pos_lsn, want: int = want) -> list[Any]:
                lsns = []
                start = max(pos_lsn - self._base, 0)
                for m in UNFINISHED_CODES.finditer(self._status, start):
                    lsns.append(m.start() + self._base)
                    if len(lsns) == want:
                        break
                return self._raw_entries(lsns)

            raws = self._locked(batch)  # only the index search and the preads hold the lock
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

        def step() -> WALEntry | None:
            n = self._n
            i = max(next_lsn - self._base, 0)
            while i < n:
                code = self._status[i]
                if code != CODE_NONE and (wanted is None or code in wanted):
                    break
                i += 1
            if i >= n:
                return None
            return self._load_entry(i + self._base)

        while True:
            entry = self._locked(step)
            if entry is None:
                return
            assert entry.lsn is not None
            next_lsn = entry.lsn + 1
            yield entry

    def count(self, status: WALEntryStatus) -> int:
        with self._cond:
            self._check_open()
            return self._counts[STATUS_CODE[WALEntryStatus(status)]]
