"""``StorageOptions``: every knob of ``WALStorage``, with its default and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wal.errors import WALConfigError

__all__ = ["FsyncMode", "PreallocateMode", "RecoveryMode", "StorageOptions"]

FsyncMode = Literal["always", "interval", "unsafe_never"]
RecoveryMode = Literal["tolerate_tail", "strict", "skip_corrupt"]
PreallocateMode = Literal["zero", "fallocate", "off"]

FSYNC_MODES: tuple[str, ...] = ("always", "interval", "unsafe_never")
RECOVERY_MODES: tuple[str, ...] = ("tolerate_tail", "strict", "skip_corrupt")
# compaction's retention: at most 100 years (a longer one keeps everything all the same, and
# its cutoff would fall before year 1)
MAX_RETENTION_HOURS = 876_000
PREALLOCATE_MODES: tuple[str, ...] = ("zero", "fallocate", "off")


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """How a ``WALStorage`` writes and recovers.

    ``fsync``
        ``"always"`` (default): ``append`` returns only after ``fdatasync`` of the entry's
        bytes; concurrent appenders share one fdatasync (group commit).
        ``"interval"``: ``append`` returns after ``write``; a background thread runs
        ``fdatasync`` at most ``fsync_interval_ms`` later. A process crash loses nothing
        (the bytes are in the page cache); a power loss or kernel crash loses the entries of
        the last ``fsync_interval_ms`` at most.
        ``"unsafe_never"``: never fsyncs. A power loss can lose anything. For tests only.
    ``fsync_interval_ms``
        The loss window of ``"interval"`` mode. Default 10 ms.
    ``max_segment_bytes``
        A new segment is started before a write that would take the current one past this
        size (a single batch larger than it gets a segment of its own). Default 64 MiB.
    ``recovery``
        What opening does with a defect (RocksDB's recovery modes are the reference):
        ``"tolerate_tail"`` (default): a torn last record of the last segment (partial line,
        no final newline, zero- or garbage-filled tail) is cut off and kept in a ``.broken``
        file; any other defect raises ``WALCorruptionError``. Nothing acknowledged is lost.
        ``"strict"``: any defect raises, the torn tail too.
        ``"skip_corrupt"``: salvage: bad records and LSN gaps are skipped and counted in the
        recovery report; for an explicit repair after a disaster.
    ``max_entry_bytes``
        The largest record an ``append`` accepts (its JSON line); a larger entry raises
        ``WALEntryTooLargeError`` and nothing is written. Default 4 MiB: a trading operation
        is a few hundred bytes, and every record is read back whole (recovery, replay).
    ``preallocate``
        How a segment gets its space before records go into it, so that an append's
        ``fdatasync`` need not also commit a new file size. A background thread prepares the
        next segment (``max_segment_bytes`` of space, under a temporary name) while the
        current one fills; a rotation renames it into place (if it is not ready then, the
        rotation waits for it or prepares it inline: where a record goes never depends on
        the thread).
        The rest of the last segment then reads as zeros: the normal end of the log.
        ``"zero"`` (default): the space is written with zeros and synced first (PostgreSQL's
        ``wal_init_zero``); appends overwrite blocks that already exist: the fastest fsync
        measured on this disk (``benchmarks/prealloc.py``).
        ``"fallocate"``: ``posix_fallocate`` (no data written, cheaper to prepare; the first
        write into each block still converts it on disk, so each fsync does more work than
        with ``"zero"``). Where the file system refuses it, zeros are written instead.
        ``"off"``: segments grow with every append (as before preallocation).
        A new log's first segment is prepared when the log is created (inline), with the
        space of its records up to ``min(1 MiB, max_segment_bytes / 2)`` and 64 KiB more
        (or a whole segment if that is smaller), so its first appends are as fast as the
        later ones; at that point it moves to a whole prepared segment. A short-lived log
        never zeroes a whole segment.
    """

    fsync: FsyncMode = "always"
    fsync_interval_ms: float = 10.0
    max_segment_bytes: int = 64 * 1024 * 1024
    recovery: RecoveryMode = "tolerate_tail"
    max_entry_bytes: int = 4 * 1024 * 1024
    preallocate: PreallocateMode = "zero"

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_MODES:
            raise WALConfigError("fsync", self.fsync, " | ".join(FSYNC_MODES))
        if self.preallocate not in PREALLOCATE_MODES:
            raise WALConfigError("preallocate", self.preallocate, " | ".join(PREALLOCATE_MODES))
        if self.recovery not in RECOVERY_MODES:
            raise WALConfigError("recovery", self.recovery, " | ".join(RECOVERY_MODES))
        if isinstance(self.max_segment_bytes, bool) or not isinstance(self.max_segment_bytes, int):
            raise WALConfigError("max_segment_bytes", self.max_segment_bytes, "an int >= 4096")
        if self.max_segment_bytes < 4096:
            raise WALConfigError("max_segment_bytes", self.max_segment_bytes, "an int >= 4096")
        me = self.max_entry_bytes
        if isinstance(me, bool) or not isinstance(me, int) or not 1024 <= me <= 1 << 30:
            raise WALConfigError("max_entry_bytes", me, "an int from 1024 to 1073741824")
        iv = self.fsync_interval_ms
        if isinstance(iv, bool) or not isinstance(iv, int | float) or not 0 < iv <= 60_000:
            raise WALConfigError("fsync_interval_ms", iv, "a number of ms in (0, 60000]")
