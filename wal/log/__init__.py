"""The log: records, segments, the writer lock, the index, reading, appends, recovery, compaction.

Layer rule: this package knows nothing of databases. It imports only the foundation modules
(``wal.errors``, ``wal.codec``, ``wal.entry``, ``wal.crashpoints``) and its own modules; the
database side, the manager and the tools are above it and never imported from here.

Modules, bottom to top:

* ``record``: one line on disk (checksum, payload, record kinds, format version).
* ``segment``: segment names and headers, file and directory modes, scanning a segment.
* ``filescan``: a segment file judged a piece at a time (no file or long line held whole).
* ``fileops``: the file operations durability depends on (the fault-injection seam).
* ``lock``: one writer per log (``flock`` on ``LOCK``).
* ``options``: ``StorageOptions`` (fsync mode, segment size, recovery mode).
* ``report``: ``RecoveryReport``, what an open found and did.
* ``manifest``: ``MANIFEST``, the first LSN the log still owes (a lost front is detected).
* ``validate``: the contents of a checksummed record checked at recovery.
* ``index``: ``LogIndex``, the per-LSN arrays, the id Bloom filter, explicit keys, counts.
* ``fastindex``: recovery's fast path over the records our writers lay out.
* ``reading``: ``LogReader``, entries read back from disk by LSN.
* ``recovery``: opening a log (index, cut a torn tail, refuse corruption), on a ``LogReader``.
* ``compaction``: rewriting sealed segments without old COMPLETED entries, on a ``LogReader``.
* ``prealloc``: ``Preallocator``, the next segment given its space in a background thread.
* ``segwriter``: ``SegmentWriter``, the active segment: written a batch at a time, rotated.
* ``groupcommit``: ``GroupCommit``, one write and one fdatasync per group; poisoning, ``sync``.
* ``writing``: ``LogWriter``, appends from threads and status records.
* ``waiters``: ``AsyncWaiters``, how a flush thread wakes coroutines on their own loops.
* ``asyncappend``: ``AsyncAppender``, ``append_async`` through one flush thread.
* ``storage``: ``WALStorage``, opening (lock, recovery), compaction, stats, closing, fork safety.
* ``verify``, ``repair``: a read-only full scan; explicit salvage with a backup.
* ``backups``: the names of repair's backups; the unfinished ones a killed repair leaves.

The on-disk format is in the ``wal`` package docstring and ``docs/wal.md``.
"""
