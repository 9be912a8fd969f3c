"""``WALStorage``: the append-only, segmented, crash-safe log.

The write path (group commit, after PostgreSQL's ``XLogFlush``): an appender frames its record
and takes the next LSN under one lock. If nobody is flushing or waiting, it writes the record
at once with one ``write`` and makes it durable with one ``fdatasync``: a lone appender pays
one fsync per append. Otherwise it adds the record to the open group; the group's first
writer leads its flush once the previous one ends (one ``write``, one ``fdatasync`` for the
whole group), the others wait on the group's latch and are woken once, when their records
are durable. Status records may be written without an fsync of their own (``durable=False``):
the next flush's fsync covers them.

Preallocation (``StorageOptions.preallocate``): a segment gets its space before records go
into it, so an append's ``fdatasync`` writes data without committing a new file size. A
background thread prepares the next segment (``next.wal.prep``: zeros or ``posix_fallocate``,
synced) while the current one fills; a rotation writes the header into it, syncs it, renames
it into place and syncs the directory, so appenders never wait for the zeroing. A sealed
segment is cut back to its last record before the next one exists: only the last segment ever
ends in zeros, which recovery reads as the normal end of the log.

The class is built in three layers, one concept each: :mod:`wal.log.index` (``LogIndex``: the
compact per-LSN arrays, about 29 bytes per LSN), :mod:`wal.log.reading` (``LogReader``: entries
read back from disk on demand, so memory stays bounded however many are pending) and this
module (opening, the write path, sync, stats, closing). Opening a log runs recovery
(:mod:`wal.log.recovery`, with :mod:`wal.log.fastindex`); ``compact`` seals the active segment
and runs :mod:`wal.log.compaction`. Both are plain functions that work on a ``LogReader``
(the directory, the file operations, the index), not on the storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import orjson

from wal.entry import WALEntry, WALEntryStatus, utc_now
from wal.errors import (
    WALClosedError,
    WALCompactionError,
    WALCorruptionError,
    WALEntryNotFoundError,
    WALEntryTooLargeError,
    WALError,
    WALForkedError,
    WALLogChangedError,
    WALSerializationError,
    WALWriteError,
)
from wal.log.compaction import compact_sealed
from wal.log.fileops import FileOps, OSFileOps
from wal.log.groupcommit import Group, GroupCommit
from wal.log.index import (
    CODE_NONE,
    STATUS_CODE,
    UNFINISHED_CODES,
    IndexRecord,
    key_hash,
    uuid_hash,
)
from wal.log.lock import WriterLock
from wal.log.options import StorageOptions
from wal.log.prealloc import Preallocator
from wal.log.record import RecordError, decode_line, encode_line
from wal.log.recovery import recover
from wal.log.report import RecoveryReport
from wal.log.segment import (
    DIR_MODE,
    SegmentInfo,
    list_segments,
    make_dirs,
    open_read,
)
from wal.log.waiters import AsyncWaiters

__all__ = ["RecoveryReport", "StorageStats", "WALStorage"]

READONLY_OPEN_ATTEMPTS = 8  # a read-only open re-reads a log a running writer changed under it
_live: weakref.WeakSet[WALStorage] = weakref.WeakSet()  # open storages, marked in a fork's child


def _after_fork_in_child() -> None:
    """In a forked child: every storage inherited from the parent refuses to be used.

    The lock and the descriptors are the parent's; the mutex may be held by a thread that
    does not exist here. Marking is free on the hot path: append already tests ``_failed``.
    """
    for store in list(_live):
        store._forked = True
        store._mutex = threading.Lock()
        store._cond = threading.Condition(store._mutex)
        store._failed = WALForkedError(
            f"the log in {store.directory} was opened by process {store._pid}, not this one "
            "(a forked child): it refuses to write"
        )


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class StorageStats:
    """A snapshot from ``get_stats()``; ``to_dict()`` is JSON-ready."""

    directory: str
    segments: int
    bytes: int
    next_lsn: int
    entries: dict[str, int]
    oldest_pending_age_seconds: float | None
    fsync_count: int
    fsync_p50_us: float | None
    fsync_p99_us: float | None
    fsync_mode: str
    failed_write: str | None
    recovery: RecoveryReport

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["recovery"] = self.recovery.to_dict()
        return d


# What a coroutine hands the flush thread: its loop and future, its entries, their bodies
# (serialized, no LSN yet), id hashes, explicit-key hashes and status codes.
_Staged = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[int]",
    list[WALEntry],
    list[bytes],
    list[int],
    list[int | None],
    list[int],
]


class WALStorage(GroupCommit):
    """The log. Open it with a directory; it recovers, then takes the writer lock.

    >>> import tempfile
    >>> with WALStorage(tempfile.mkdtemp()) as log:
    ...     e = log.append(WALEntry.create("log_trade", kwargs={"qty": 1}))
    ...     e.lsn
    1
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        options: StorageOptions | None = None,
        *,
        fs: FileOps | None = None,
        readonly: bool = False,
        **overrides: Any,
    ) -> None:
        opts = options or StorageOptions()
        if overrides:
            opts = replace(opts, **overrides)
        self.directory = Path(directory)
        self.options = opts
        self.readonly = readonly
        self._fs: FileOps = fs if fs is not None else OSFileOps()
        self._mutex = threading.Lock()  # guards the state below; its Condition is _cond
        self._cond = threading.Condition(self._mutex)
        self._waiting = 0  # threads in _wait(): notify only when somebody waits
        self._appenders = 0  # foreground writers between enqueue and acknowledgement
        self._yielding = 0  # background threads in yield_to_appenders()
        self._closed = False
        self._forked = False  # set in a forked child (see _after_fork_in_child)
        self._pid = os.getpid()
        self._lock: WriterLock | None = None
        self._flushes_unchecked = 0  # flushes since the last check that LOCK is still ours
        # write state
        self._fd = -1
        self._seg_size = 0
        self._header_len = 0  # the active segment's header: a segment of only this is empty
        self._alloc_end = 0  # the active segment's file size: data, then preallocated zeros
        self._seg_prealloc = False  # the active segment was given its space when created
        # the next segment, prepared in the background
        self._prealloc = Preallocator(
            self._fs,
            self.directory,
            opts.max_segment_bytes,
            opts.preallocate,
            off=opts.preallocate == "off" or opts.fsync == "unsafe_never" or readonly,
        )
        self._next_lsn = 1
        self._group = Group()  # the open group: records waiting for the next flush
        self._flushing = False
        self._durable_lsn = 0  # everything up to here is acknowledged
        self._written_lsn = 0  # everything up to here is written (not necessarily synced)
        self._failed: WALWriteError | None = None
        # index
        self._segments: list[SegmentInfo] = []
        self._init_index()
        self._read_fds: OrderedDict[int, int] = OrderedDict()
        # stats
        self._fsync_count = 0
        self._fsync_ns: deque[int] = deque(maxlen=4096)
        # called with each fsync's duration in ns (e.g. a Prometheus histogram); must not raise
        self.fsync_observers: list[Callable[[int], None]] = []
        self.recovery_report = RecoveryReport(mode=opts.recovery)
        self._syncer: threading.Thread | None = None
        self._stop_syncer = threading.Event()
        # append_async: coroutines stage their records here; one flush thread commits them
        self._stage_cond = threading.Condition(threading.Lock())  # held only to swap the list
        self._staged: list[_Staged] = []
        self._stage_closed = False
        self._flusher: threading.Thread | None = None
        self._flusher_idle = False  # the flush thread waits on _stage_cond for work
        self._open()
        _live.add(self)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open_readonly(
        cls, directory: str | os.PathLike[str], options: StorageOptions | None = None
    ) -> WALStorage:
        """Read a log without its lock, while a writer may be appending. Changes nothing."""
        return cls(directory, options, readonly=True)

    def _open(self) -> None:
        t0 = time.monotonic()
        if self.readonly:
            if not self.directory.is_dir():
                raise WALCorruptionError(self.directory, 0, 0, "no log directory here")
        elif self.directory.is_symlink() and not self.directory.exists():
            raise WALCorruptionError(self.directory, 0, 0, "a dangling symlink, not a directory")
        else:
            self._prepare_directory()
            self._lock = WriterLock(self.directory)
            self._lock.acquire()
        try:
            self._recover()
            if not self.readonly:
                self._open_for_append()
                if self.options.fsync == "interval":
                    self._syncer = threading.Thread(
                        target=self._interval_sync_loop, name="wal-fsync", daemon=True
                    )
                    self._syncer.start()
        except BaseException:
            self._close_fds()
            if self._lock is not None:
                self._lock.release()
            raise
        self.recovery_report.seconds = time.monotonic() - t0

    def _prepare_directory(self) -> None:
        d = self.directory
        for made in make_dirs(d, DIR_MODE):  # the log dir and missing parents: 0700 each
            # a new directory's own entry is in its parent: it must survive a crash
            self._fs.fsync_dir(str(made.parent))
        if stat.S_IMODE(d.stat().st_mode) != DIR_MODE:
            os.chmod(d, DIR_MODE)  # the log holds balances and trades: owner only

    def _recover(self) -> None:
        if not self.readonly:
            recover(self)
            return
        # a read-only open races a running writer: a compaction may replace or remove a
        # segment and move the manifest while we read, and the last record may be in flight.
        # Read again while what we saw has changed since; a defect that stays is reported.
        for attempt in range(READONLY_OPEN_ATTEMPTS):
            before = self._dir_state()
            try:
                recover(self)
                return
            except (WALCorruptionError, WALLogChangedError, FileNotFoundError) as exc:
                last = attempt + 1 == READONLY_OPEN_ATTEMPTS
                if last or not (self._dir_state() != before or self._settled_since(exc)):
                    if isinstance(exc, FileNotFoundError):
                        raise WALLogChangedError(
                            Path(exc.filename or self.directory), "removed while it was read"
                        ) from None
                    raise
                self._reset_index()

    def _dir_state(self) -> tuple[object, ...]:
        """What a writer's compaction or rotation changes: segment names and files, manifest."""
        state: list[object] = []
        for _, path in list_segments(self.directory):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            state.append((path.name, st.st_dev, st.st_ino))
        for name in ("MANIFEST",):
            try:
                st = os.lstat(self.directory / name)
                state.append((name, st.st_ino, st.st_mtime_ns))
            except FileNotFoundError:
                pass
        return tuple(state)

    @staticmethod
    def _settled_since(exc: BaseException) -> bool:
        """True when the line a defect was reported at reads as a good record now: it was a
        record in flight (a writer appending while we read), not damage."""
        if not isinstance(exc, WALCorruptionError) or not exc.line:
            return isinstance(exc, WALLogChangedError | FileNotFoundError)
        try:
            fd = open_read(exc.path)
        except (OSError, WALError):
            return True  # gone: a compaction removed it
        try:
            data = os.pread(fd, 1 << 20, exc.offset)
        finally:
            os.close(fd)
        nl = data.find(b"\n")
        if nl < 0:
            return False
        try:
            decode_line(data[:nl])
        except RecordError:
            return False
        return True

    def _reset_index(self) -> None:
        """Forget everything recovery built (the read-only open reads the log again)."""
        self._close_read_fds()
        self._segments = []
        self._init_index()
        self.recovery_report = RecoveryReport(mode=self.options.recovery)

    def _reindex(self) -> None:
        """A read-only reader whose files changed under it: build the index again."""
        self._reset_index()
        self._recover()

    # ------------------------------------------------------------------ writing

    def append(self, entry: WALEntry) -> WALEntry:
        """Append one entry; return it with its LSN once it is durable (see ``fsync``)."""
        if self._forked:  # a child of a fork: the parent's mutex may be held forever here
            self._check_writable()
        body = self._entry_body(entry)  # serialize outside the lock
        if len(body) > self.options.max_entry_bytes:
            raise WALEntryTooLargeError(len(body), self.options.max_entry_bytes)
        eid = entry.entry_id
        h = uuid_hash(eid)
        kh = key_hash(entry.idempotency_key) if entry.has_explicit_key else None
        code = STATUS_CODE[entry.status]
        with self._mutex:
            if self._failed is not None or self._closed or self.readonly:
                self._check_writable()
            if self._bloom_has(h) and self._has_id(eid):
                raise ValueError(f"entry {eid} is already in the log")
            lsn = self._next_lsn
            self._next_lsn = lsn + 1
            rec = (
                lsn,
                encode_line(b'{"t":"entry","lsn":%d,%s' % (lsn, body[1:])),
                code,
                h,
                kh,
                0,
                0,
            )
            if not self._flushing and not self._group.records:
                # nobody is flushing or waiting: flush this record now, without a group
                self._flushing = True
                self._appenders += 1
                group = None
            else:
                group, lead = self._enqueue([rec])
        try:
            if group is None:
                self._flush([rec])
            else:
                self._commit(group, lead)
        finally:
            self._append_done()
        return entry.with_lsn(lsn)

    def append_many(self, entries: Iterable[WALEntry]) -> list[WALEntry]:
        """Append a batch with one write and one fsync; all or none are acknowledged."""
        entries = list(entries)
        if not entries:
            return []
        if self._forked:
            self._check_writable()
        bodies = [self._entry_body(e) for e in entries]  # serialize outside the lock
        for b in bodies:
            if len(b) > self.options.max_entry_bytes:
                raise WALEntryTooLargeError(len(b), self.options.max_entry_bytes)
        hashes = [uuid_hash(e.entry_id) for e in entries]
        key_hashes = [key_hash(e.idempotency_key) if e.has_explicit_key else None for e in entries]
        if len(set(hashes)) != len(entries) and len({e.entry_id for e in entries}) != len(entries):
            raise ValueError("the batch holds the same entry twice: already in the log")
        with self._cond:
            self._check_writable()
            has = self._bloom_has
            for e, h in zip(entries, hashes, strict=True):
                if has(h) and self._has_id(e.entry_id):
                    raise ValueError(f"entry {e.entry_id} is already in the log")
            first = self._next_lsn
            self._next_lsn = first + len(entries)
            records = [
                (
                    lsn,
                    encode_line(b'{"t":"entry","lsn":%d,%s' % (lsn, body[1:])),
                    STATUS_CODE[e.status],
                    h,
                    kh,
                    0,
                    0,
                )
                for lsn, e, body, h, kh in zip(
                    range(first, first + len(entries)),
                    entries,
                    bodies,
                    hashes,
                    key_hashes,
                    strict=True,
                )
            ]
            group, lead = self._enqueue(records)
        try:
            self._commit(group, lead)
        finally:
            self._append_done()
        return [e.with_lsn(lsn) for lsn, e in enumerate(entries, first)]

    # ------------------------------------------------------------------ writing from asyncio

    async def append_async(self, entry: WALEntry) -> WALEntry:
        """``append`` for asyncio: return the entry with its LSN once it is durable.

        The entry is serialized on the loop and staged; one flush thread commits whatever
        coroutines staged meanwhile as one group (one ``write``, one ``fdatasync``) and
        resolves their futures on the loop: the loop never waits for the disk, and the next
        flush starts as soon as the previous one ends. Thread and coroutine appenders share
        one LSN order and the same group commit.

        Cancellation does not cancel the write: a cancelled ``append_async`` may still become
        durable (and be replayed). Give the entry an ``idempotency_key`` and look it up
        (``find_by_idempotency_key``) to learn whether it is in the log.
        """
        return (await self.append_many_async([entry]))[0]

    async def append_many_async(self, entries: Iterable[WALEntry]) -> list[WALEntry]:
        """``append_many`` for asyncio (see ``append_async``): all or none acknowledged."""
        entries = list(entries)
        if not entries:
            return []
        if self._failed is not None or self._closed or self.readonly or self._forked:
            self._check_writable()  # fail fast; the flush thread checks again under the lock
        bodies = [self._entry_body(e) for e in entries]  # serialize on the loop, no lock
        for b in bodies:
            if len(b) > self.options.max_entry_bytes:  # refused before anything is staged
                raise WALEntryTooLargeError(len(b), self.options.max_entry_bytes)
        hashes = [uuid_hash(e.entry_id) for e in entries]
        key_hashes = [key_hash(e.idempotency_key) if e.has_explicit_key else None for e in entries]
        codes = [STATUS_CODE[e.status] for e in entries]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        with self._stage_cond:  # held for a list append: never across I/O
            if self._stage_closed:
                raise WALClosedError("the log is closed")
            self._staged.append((loop, fut, entries, bodies, hashes, key_hashes, codes))
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_staged_loop, name="wal-async-flush", daemon=True
                )
                self._flusher.start()
            elif self._flusher_idle:
                self._flusher_idle = False
                self._stage_cond.notify()
        first = await fut  # resolved only after the fdatasync of these records returned
        return [e.with_lsn(lsn) for lsn, e in enumerate(entries, first)]

    def _flush_staged_loop(self) -> None:
        """The flush thread: commit everything staged since the last flush, as one group."""
        while True:
            with self._stage_cond:
                while not self._staged and not self._stage_closed:
                    self._flusher_idle = True
                    self._stage_cond.wait()
                self._flusher_idle = False
                items, self._staged = self._staged, []
            if not items:
                return  # closing, and nothing is left staged
            self._commit_staged(items)

    def _commit_staged(self, items: list[_Staged]) -> None:
        """Give staged appends their LSNs, join the open group, commit it (flush thread)."""
        waiters = AsyncWaiters()
        refused = AsyncWaiters()  # duplicates: refused alone, the rest of the group goes on
        records: list[IndexRecord] = []
        with self._mutex:
            error: BaseException | None = None
            try:
                self._check_writable()
            except WALError as exc:
                error = exc
            if error is not None:
                for loop, fut, *_ in items:
                    refused.add(loop, fut, None)
                refused.settle(error)
                return
            ids: set[uuid.UUID] = set()
            for loop, fut, entries, bodies, hashes, key_hashes, codes in items:
                dup = next(
                    (
                        e
                        for e, h in zip(entries, hashes, strict=True)
                        if e.entry_id in ids or (self._bloom_has(h) and self._has_id(e.entry_id))
                    ),
                    None,
                )
                if dup is not None:
                    bad = AsyncWaiters()
                    bad.add(loop, fut, None)
                    bad.settle(ValueError(f"entry {dup.entry_id} is already in the log"))
                    continue
                ids.update(e.entry_id for e in entries)
                first = self._next_lsn
                self._next_lsn = first + len(entries)
                for lsn, body, code, h, kh in zip(
                    range(first, first + len(entries)),
                    bodies,
                    codes,
                    hashes,
                    key_hashes,
                    strict=True,
                ):
                    line = encode_line(b'{"t":"entry","lsn":%d,%s' % (lsn, body[1:]))
                    records.append((lsn, line, code, h, kh, 0, 0))
                waiters.add(loop, fut, first)
            if not records:
                return
            group, lead = self._enqueue(records)
            # settled by whoever finishes the group: after its fdatasync, or with its error
            assert group.waiters is None  # this thread joins a group once, then waits for it
            group.waiters = waiters
        try:
            # the group's error, if any, reached every waiter through its future
            with contextlib.suppress(BaseException):
                self._commit(group, lead)
        finally:
            self._append_done()

    @staticmethod
    def _entry_body(e: WALEntry) -> bytes:
        if e.lsn is not None:
            raise ValueError(f"entry {e.entry_id} already has LSN {e.lsn}: it is in a log")
        a, k = e.encoded()
        # the same bytes as orjson.dumps(e.to_dict()) without "lsn": orjson writes the UUID,
        # the datetimes (isoformat) and the status enum natively, which is 4x faster
        try:
            return orjson.dumps(
                {
                    "entry_id": e.entry_id,
                    "operation": e.operation,
                    "args": a,
                    "kwargs": k,
                    "idempotency_key": e.idempotency_key,
                    "checksum": e.checksum,
                    "created_at": e.created_at,
                    "synced_at": e.synced_at,
                    "status": e.status,
                    "attempts": e.attempts,
                    "last_error": e.last_error,
                }
            )
        except orjson.JSONEncodeError as exc:  # an entry built by hand, not by create()
            raise WALSerializationError(f"entry {e.entry_id}", str(exc)) from None

    def update_status(
        self,
        entry_id: uuid.UUID | str | WALEntry,
        status: WALEntryStatus,
        error: str | None = None,
        *,
        attempts: int | None = None,
    ) -> None:
        """Append a durable status record for an entry."""
        self.update_statuses([(entry_id, status, error, attempts)])

    def update_statuses(
        self,
        changes: Iterable[
            tuple[uuid.UUID | str | WALEntry, WALEntryStatus, str | None, int | None]
        ],
        *,
        durable: bool = True,
    ) -> None:
        """Append several status records with one fsync: ``(entry, status, error, attempts)``.

        ``durable=False`` writes them without waiting for an fsync of their own: the next
        flush's fsync (any append's, ``sync()``, a rotation or ``close()``) covers them, and a
        crash before it may lose them. Only for marks whose loss is harmless: a COMPLETED
        mark behind the database's applied-ledger (the replay is skipped). Appenders then
        never wait for a drain's fsync.
        """
        changes = list(changes)
        if not changes:
            return
        if self._forked:
            self._check_writable()
        at = utc_now().isoformat()
        targets: list[tuple[int, str] | None] = []
        for ref, _, _, _ in changes:
            if isinstance(ref, WALEntry):
                if ref.lsn is None:
                    raise WALEntryNotFoundError(ref.entry_id)
                targets.append((ref.lsn, str(ref.entry_id)))
            else:
                targets.append(None)  # an id: looked up in the index below
        if any(t is None for t in targets):
            with self._cond:
                self._check_open()
                targets = [
                    t if t is not None else self._resolve(c[0])
                    for t, c in zip(targets, changes, strict=True)
                ]
        bodies = []  # serialized outside the lock; the LSN is spliced in below
        for k, (t, (_, status, error, attempts)) in enumerate(zip(targets, changes, strict=True)):
            assert t is not None
            if not durable and k % 16 == 0:
                self.yield_to_appenders()  # non-durable marks are background work
            status = WALEntryStatus(status)
            if attempts is not None and (type(attempts) is not int or attempts < 0):
                raise WALSerializationError("attempts", f"must be an int >= 0, got {attempts!r}")
            if error is not None and not isinstance(error, str):
                raise WALSerializationError("error", f"must be a str or None, got {error!r}")
            try:
                body = orjson.dumps(
                    {
                        "of": t[0],
                        "entry_id": t[1],
                        "status": status.value,
                        "at": at,
                        "attempts": attempts,
                        "error": error,
                    }
                )
            except orjson.JSONEncodeError as exc:  # a lone surrogate in the error text
                raise WALSerializationError("error", str(exc)) from None
            bodies.append((t[0], STATUS_CODE[status], body))
        with self._cond:
            self._check_writable()
            for t in targets:  # checked under the lock that compaction holds: exclusive
                assert t is not None
                self._check_target(*t)
            records: list[IndexRecord] = []
            for target, code, body in bodies:
                lsn = self._next_lsn
                self._next_lsn += 1
                payload = b'{"t":"status","lsn":%d,%s' % (lsn, body[1:])
                records.append((lsn, encode_line(payload), CODE_NONE, 0, None, target, code))
            group, lead = self._enqueue(records, durable)
        try:
            self._commit(group, lead)
        finally:
            if durable:
                self._append_done()

    def _check_target(self, lsn: int, sid: str) -> None:
        """Refuse a status record for anything but the live entry ``sid`` at ``lsn`` (lock
        held): an entry object from another log, a stale one, or one compaction dropped."""
        i = lsn - self._base
        if (
            type(lsn) is not int
            or i < 0
            or i >= self._n
            or self._status[i] == CODE_NONE
            or self._idh[i] != uuid_hash(uuid.UUID(sid))
        ):
            raise WALEntryNotFoundError(f"{sid} at LSN {lsn}")

    @property
    def next_lsn(self) -> int:
        return self._next_lsn

    @property
    def last_lsn(self) -> int:
        """The highest LSN written and indexed: every record up to it can be read."""
        return self._written_lsn

    # ------------------------------------------------------------------ compaction

    def compact(
        self,
        retention: timedelta | float | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, int]:
        """Rewrite sealed segments without COMPLETED entries older than ``retention``.

        ``progress(done, total)``, if given, is called after each sealed segment (for a
        progress bar; it runs with the log's lock held, so it must not use the log).

        ``retention`` is a ``timedelta`` or hours (default 0: drop every COMPLETED entry).
        Non-COMPLETED entries always stay. Each rewrite: temp file, fsync, rename over the
        segment, fsync the directory; an interrupted compaction's leftovers are cleaned on the
        next open. Returns ``{"bytes_before", "bytes_after", "entries_dropped",
        "segments_rewritten", "segments_removed"}``.
        """
        if retention is None:
            keep_for = timedelta(0)
        elif isinstance(retention, timedelta):
            keep_for = retention
        else:
            keep_for = timedelta(hours=float(retention))
        cutoff = utc_now() - keep_for
        with self._cond:
            self._check_writable()
            while self._flushing:
                self._wait()
            before = sum(s.size for s in self._segments)
            if self._seg_size > self._header_len:
                # seal the active segment so everything written so far can be compacted; the
                # open group's records (LSNs assigned, not yet written) go to the new segment
                waiting = self._group.records
                self._flushing = True
                try:
                    self._rotate(waiting[0][0] if waiting else self._next_lsn)
                except BaseException as exc:
                    self._poison(exc)
                    raise (self._failed or exc) from exc
                finally:
                    self._flushing = False
                    self._cond.notify_all()
            # entries that status records waiting in the open group name stay: an update and
            # the compaction that would drop its entry are exclusive
            protected = {r[5] for r in self._group.records if r[5]}
            try:
                dropped, rewritten, removed = compact_sealed(
                    self, self._segments[:-1], cutoff, protected, progress
                )
            except WALCompactionError:
                raise  # nothing changed: the log goes on as before
            except OSError as exc:
                self._poison(exc)  # the files and the index may disagree now: stop writing
                raise (self._failed or exc) from exc
            after = sum(s.size for s in self._segments)
        return {
            "bytes_before": before,
            "bytes_after": after,
            "entries_dropped": dropped,
            "segments_rewritten": rewritten,
            "segments_removed": removed,
        }

    # ------------------------------------------------------------------ stats, closing

    def get_stats(self) -> StorageStats:
        with self._cond:
            self._check_open()
            counts = {s.value: self._counts[c] for s, c in STATUS_CODE.items()}
            oldest = None
            m = UNFINISHED_CODES.search(self._status)
            if m is not None:
                e = self._load_entry(m.start() + self._base)
                oldest = max(0.0, (utc_now() - e.created_at.astimezone(UTC)).total_seconds())
            lat = sorted(self._fsync_ns)
            p50 = lat[len(lat) // 2] / 1000 if lat else None
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else None
            return StorageStats(
                directory=str(self.directory),
                segments=len(self._segments),
                bytes=sum(s.size for s in self._segments),
                next_lsn=self._next_lsn,
                entries=counts,
                oldest_pending_age_seconds=oldest,
                fsync_count=self._fsync_count,
                fsync_p50_us=p50,
                fsync_p99_us=p99,
                fsync_mode=self.options.fsync,
                failed_write=None if self._failed is None else str(self._failed),
                recovery=self.recovery_report,
            )

    def close(self) -> None:
        """Flush what was written (``interval`` mode), release the lock. Idempotent.

        In a process forked after the open, only this process's copies of the descriptors
        are closed: the parent's lock and files stay as they are."""
        if self._closed:
            return
        if self._forked:
            self._closed = True
            self._close_fds()
            if self._lock is not None:
                self._lock.release()  # closes this process's descriptors; no unlock
                self._lock = None
            return
        with self._stage_cond:
            self._stage_closed = True  # later append_async calls are refused
            flusher, self._flusher = self._flusher, None
            self._stage_cond.notify()
        if flusher is not None:
            flusher.join()  # it commits what coroutines staged before the close, then ends
        self._prealloc.close()  # a segment being prepared is abandoned (the next open removes it)
        self._stop_syncer.set()
        if self._syncer is not None:
            self._syncer.join()
        if not self.readonly and self._failed is None:
            # poisoned: nothing more can be made durable; a reopen recovers what was acknowledged
            with contextlib.suppress(WALError):
                self.sync()
        with self._cond:
            while self._flushing:  # never close the fd under a leader's write
                self._wait()
            self._closed = True
            self._close_fds()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _close_read_fds(self) -> None:
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()

    def _close_fds(self) -> None:
        self._close_read_fds()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self._fs.close(self._fd)
            self._fd = -1

    def __enter__(self) -> WALStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WALStorage({str(self.directory)!r}, next_lsn={self._next_lsn})"
