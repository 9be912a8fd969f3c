"""``WALStorage``: the append-only, segmented, crash-safe log.

The class is built in layers, one concept and one module each, every layer a base of the next:

* :mod:`wal.log.index` (``LogIndex``): the compact per-LSN arrays, about 29 bytes per LSN;
* :mod:`wal.log.reading` (``LogReader``): entries read back from disk on demand, so memory
  stays bounded however many are pending;
* :mod:`wal.log.segwriter` (``SegmentWriter``): the active segment, written a batch at a time,
  rotated, and the next one preallocated (:mod:`wal.log.prealloc`) while it fills;
* :mod:`wal.log.groupcommit` (``GroupCommit``): one ``write`` and one ``fdatasync`` for the
  records of concurrent appenders, a failed write or fsync poisons the log, ``sync``;
* :mod:`wal.log.writing` (``LogWriter``): ``append``, ``append_many``, status records;
* :mod:`wal.log.asyncappend` (``AsyncAppender``): ``append_async``, its flush thread;
* this module: opening (the directory, the writer lock, recovery; a read-only open re-reads a
  log a running writer changes under it), compaction, stats, closing, fork safety.

Opening a log runs recovery (:mod:`wal.log.recovery`, with :mod:`wal.log.fastindex`);
``compact`` seals the active segment and runs :mod:`wal.log.compaction`. Both are plain
functions that work on a ``LogReader`` (the directory, the file operations, the index), not on
the storage. The attributes each layer uses are declared on it and set up here, in
``WALStorage.__init__``.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import logging
import os
import re
import stat
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from wal.entry import WALEntryStatus, utc_now
from wal.errors import (
    WALArgumentError,
    WALCompactionError,
    WALConfigError,
    WALCorruptionError,
    WALError,
    WALForkedError,
    WALLogChangedError,
    WALWriteError,
)
from wal.log.asyncappend import AsyncAppender, Staged
from wal.log.compaction import compact_sealed
from wal.log.fileops import FileOps, OSFileOps
from wal.log.groupcommit import Group
from wal.log.index import STATUS_CODE, UNFINISHED_CODES
from wal.log.lock import WriterLock
from wal.log.options import MAX_RETENTION_HOURS, StorageOptions
from wal.log.prealloc import Preallocator
from wal.log.record import RecordError, decode_line
from wal.log.recovery import recover
from wal.log.report import RecoveryReport
from wal.log.segment import (
    DIR_MODE,
    SegmentInfo,
    list_segments,
    make_dirs,
    open_read,
)

__all__ = ["RecoveryReport", "StorageStats", "WALStorage"]

log = logging.getLogger("wal")

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


_OWN_NAMES = re.compile(  # fullmatch: "$" would also pass a name ending in a newline
    r"(?:[0-9]{20}\.wal(?:\.tmp|\.broken(?:\.[0-9]+)?|\.suspect(?:\.[0-9]+)?)?|LOCK"
    r"|MANIFEST(?:\.tmp)?|next\.wal\.prep|(?:database|manager-status|last-cli-sync)\.json"
    r"(?:\.tmp)?)"
)


def _foreign_entries(directory: Path) -> list[str]:
    """Names in an existing directory that are not files of a log: it is not (only) a log's."""
    return sorted(p.name for p in directory.iterdir() if not _OWN_NAMES.fullmatch(p.name))


def _compaction_poison(exc: OSError, directory: Path) -> WALWriteError:
    """The error that stops a log whose compaction failed after it began changing files."""
    en = exc.errno
    name = errno_mod.errorcode.get(en, str(en)) if en is not None else type(exc).__name__
    where = Path(exc.filename) if isinstance(exc.filename, str) else directory
    err = WALWriteError(
        f"compaction failed at {where} ({name}: {exc.strerror or exc}) after it began replacing "
        "files: the log refuses appends until it is reopened; every acknowledged entry is on "
        "disk and the reopen recovers it",
        path=where,
        errno=en if isinstance(en, int) else None,
        hint="fix the disk (free space, check the device), then reopen the log",
    )
    err.__cause__ = exc
    return err


class WALStorage(AsyncAppender):
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
        self._seg_prealloc = False  # the active segment was given a whole segment's space
        self._unsynced = 0  # bytes written to the active segment since its last fdatasync
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
        self._staged: list[Staged] = []
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
        try:
            # checked before anything is created or chmodded: nothing outside the log changes
            # (a regular file, or a path through one, is refused as it is)
            if d.exists() and not d.is_dir():
                raise OSError(errno_mod.ENOTDIR, "it is not a directory", str(d))
            made = make_dirs(d, DIR_MODE)  # the log dir and missing parents: 0700 each
            for new in made:
                # a new directory's own entry is in its parent: it must survive a crash
                self._fs.fsync_dir(str(new.parent))
            if stat.S_IMODE(d.stat().st_mode) != DIR_MODE:
                foreign = [] if made else _foreign_entries(d)
                if not foreign:
                    os.chmod(d, DIR_MODE)  # the log holds balances and trades: owner only
                else:  # not only the log's: never change what is not the log's own
                    log.warning(
                        "%s holds files that are not the log's (%s): its mode is left as it "
                        "is; give the log a directory of its own (mode 0700)",
                        d,
                        ", ".join(foreign[:3]),
                    )
        except OSError as exc:
            why = exc.strerror or str(exc)
            if exc.errno == errno_mod.ENOTDIR:
                why = "the path or one of its parents is not a directory"
            raise WALConfigError(
                "directory", str(d), f"a directory for the log, but {why}: nothing was changed"
            ) from None

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

    # ------------------------------------------------------------------ positions

    @property
    def file_ops(self) -> FileOps:
        """What the log writes through: a small file kept beside it (``database.json``) goes
        through it too, so a test's model of the disk (``CrashFS``) sees it like the log."""
        return self._fs

    @property
    def first_lsn(self) -> int:
        """The first LSN still in the log (1 until compaction removes front segments)."""
        return self._base

    @property
    def next_lsn(self) -> int:
        return self._next_lsn

    @property
    def last_lsn(self) -> int:
        """The highest LSN written and indexed: every record up to it can be read."""
        return self._written_lsn

    def may_have_dropped(self) -> bool:
        """True when entries may have been removed from the log (compaction or a repair: the
        log starts after LSN 1, or a segment holds a subset of its range): then a key or id
        the log does not hold may still have been acknowledged, and applied."""
        with self._cond:
            self._check_open()
            return self._base > 1 or any(s.compacted for s in self._segments)

    def only_pending_entries(self) -> bool:
        """True when the log starts at LSN 1 and every record written so far is a PENDING
        entry (no status record, nothing compacted away): no entry was ever handed to a
        database. One snapshot under the lock: appends in flight (their LSNs taken, their
        records not yet written) are not counted on either side."""
        with self._cond:
            self._check_open()
            pending = self._counts[STATUS_CODE[WALEntryStatus.PENDING]]
            return self._base == 1 and self._written_lsn == pending

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
        hours = (
            0.0
            if retention is None
            else retention.total_seconds() / 3600
            if isinstance(retention, timedelta)
            else float(retention)
        )
        if not 0 <= hours <= MAX_RETENTION_HOURS:  # NaN, infinities and the absurd too
            raise WALArgumentError(
                "compact",
                "retention",
                f"{retention!r} is not from 0 to {MAX_RETENTION_HOURS:,} hours; nothing dropped",
            )
        cutoff = utc_now() - timedelta(hours=hours)
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
                # the files and the index may disagree now (a failed rename or directory
                # fsync): stop writing, naming the compaction's file, not the active segment
                self._poison(_compaction_poison(exc, self.directory))
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

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest PENDING or SYNCING entry was created (None: none), as
        ``get_stats().oldest_pending_age_seconds`` without the rest of the stats (the sync
        thread asks after every pass: no sort of the fsync samples under the writers' lock)."""
        with self._cond:
            self._check_open()
            return self._oldest_unfinished_age()

    def _oldest_unfinished_age(self) -> float | None:
        m = UNFINISHED_CODES.search(self._status)
        if m is None:
            return None
        e = self._load_entry(m.start() + self._base)
        return max(0.0, (utc_now() - e.created_at.astimezone(UTC)).total_seconds())

    def get_stats(self) -> StorageStats:
        with self._cond:
            self._check_open()
            counts = {s.value: self._counts[c] for s, c in STATUS_CODE.items()}
            oldest = self._oldest_unfinished_age()
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
        self._close_staging()  # what coroutines staged before the close is committed
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
        try:
            if not self.readonly:
                self._prealloc.discard()  # under the lock still: the directory is ours
        finally:
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
