"""atb-wal: a crash-safe write-ahead log for a trading engine's critical database writes.

On-disk format
--------------
A log is a directory (mode 0700) of segment files (mode 0600), a ``LOCK`` file and, after a
torn-tail repair, ``*.broken`` files with the bytes that were cut.

* Segments are named by the first LSN they hold, 20 digits: ``00000000000000000001.wal``.
* Each segment is JSON lines. Every line is one self-verifying record::

      <xxh3-64 of the payload, 16 hex digits> <space> <payload: a JSON object> <newline>

* The first record of a segment is its header:
  ``{"t":"segment","version":1,"first":F,"last":null,"tear":65536}`` (``last`` is set on
  segments that compaction rewrote: they cover LSNs F..last and hold only the records that
  were kept; ``tear`` is the most bytes the writer ever left unsynced, null if it never
  fsyncs, 65536 when absent).
* ``{"t":"entry","lsn":N,...}`` is a ``WALEntry`` (``WALEntry.to_dict()`` plus ``t``).
* ``{"t":"status","lsn":N,"of":M,"entry_id":...,"status":...,"at":...,"attempts":...,
  "error":...}`` changes entry M's status. Nothing is ever rewritten in place.
* LSNs number every record (entries and status records), gap-free across segments, so a
  missing, reordered or duplicated segment or record is detected.

Layers
------
``wal.log`` (the log; knows nothing of databases), ``wal.db`` (the reference database side;
knows entries, not the storage), ``wal.sync`` (the manager and ``DurableDatabaseManager``),
``wal.tools`` (benchmarks and the demo; only ``cli`` imports it), over the foundation modules
``wal.errors``, ``wal.codec``, ``wal.entry`` and ``wal.crashpoints``. This module is the one
public face; ``docs/architecture.md`` has the tree and the layer rule (checked by
``tests/test_layers.py``).

Values inside ``args`` and ``kwargs`` keep their types through tags such as
``{"$decimal": "1.50"}`` (see :mod:`wal.codec`). ``docs/wal.md`` has the full description,
the guarantees and the recovery modes.
"""

from wal.config import WALConfig
from wal.entry import OperationType, WALEntry, WALEntryStatus
from wal.errors import (
    WALClosedError,
    WALCompactionError,
    WALConfigError,
    WALCorruptionError,
    WALDatabaseError,
    WALEntryNotFoundError,
    WALEntryTooLargeError,
    WALError,
    WALForkedError,
    WALFormatVersionError,
    WALIdempotencyConflictError,
    WALLockedError,
    WALLockLostError,
    WALLogChangedError,
    WALMissingSegmentError,
    WALSerializationError,
    WALUnsafeFileError,
    WALWriteError,
)
from wal.log.fileops import FileOps, OSFileOps
from wal.log.options import StorageOptions
from wal.log.report import RecoveryReport
from wal.log.storage import StorageStats, WALStorage
from wal.sync.durable import DurableDatabaseManager
from wal.sync.manager import Receipt, SyncResult, WALManager

__all__ = [
    "DurableDatabaseManager",
    "FileOps",
    "OSFileOps",
    "OperationType",
    "Receipt",
    "RecoveryReport",
    "StorageOptions",
    "StorageStats",
    "SyncResult",
    "WALClosedError",
    "WALCompactionError",
    "WALConfig",
    "WALConfigError",
    "WALCorruptionError",
    "WALDatabaseError",
    "WALEntry",
    "WALEntryNotFoundError",
    "WALEntryStatus",
    "WALEntryTooLargeError",
    "WALError",
    "WALForkedError",
    "WALFormatVersionError",
    "WALIdempotencyConflictError",
    "WALLockLostError",
    "WALLockedError",
    "WALLogChangedError",
    "WALManager",
    "WALMissingSegmentError",
    "WALSerializationError",
    "WALStorage",
    "WALUnsafeFileError",
    "WALWriteError",
]
