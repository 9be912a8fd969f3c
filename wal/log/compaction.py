"""Compaction: rewriting sealed segments without the entries the database no longer needs.

``WALStorage.compact`` seals the active segment; ``compact_sealed`` then rewrites each
sealed segment without its COMPLETED entries older than ``retention``; every other entry
stays (never compact away an entry the database has not durably applied). A kept entry's
newest status is folded into its entry record. A rewritten segment's header names a fixed
range (``"last"`` set, see :mod:`wal`): LSNs stay gap-free across segments although it holds
only some of them.

Each rewrite is crash-safe: write a ``.wal.tmp`` file, fsync it, rename it over the segment,
fsync the directory; only then does the in-memory index forget the dropped records. An emptied
front segment is unlinked instead: first the manifest (:mod:`wal.log.manifest`) is moved to
the next segment, then the file is unlinked and the directory fsynced.

Compaction is optional work. A failure while writing the temporary file (ENOSPC) removes it
and raises ``WALCompactionError``: the segment and the index are untouched and appends go on.
Only a failure from the rename on (the files and the index may then disagree) poisons the log.
Entries named in ``protected`` (targets of status records waiting to be written) are kept,
and explicit idempotency keys of dropped entries leave the index with them.

A crash leaves each segment old or new, never a mix; recovery removes a leftover ``.wal.tmp``
file. Segments are rewritten oldest first; a status record is dropped only when its entry is
gone, or when the entry's newest status is folded into its record in this segment or in an
older one already rewritten.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import orjson

from wal.crashpoints import crash_point
from wal.errors import WALCompactionError
from wal.log.fileops import write_all
from wal.log.index import CODE_COMPLETED, CODE_NONE, key_hash
from wal.log.manifest import MANIFEST_TMP, write_manifest
from wal.log.reading import LogReader
from wal.log.record import KIND_STATUS, encode_line
from wal.log.segment import FILE_MODE, TMP_SUFFIX, SegmentInfo, segment_header

__all__ = ["compact_sealed", "drop_front"]


def compact_sealed(
    store: LogReader,
    sealed: list[SegmentInfo],
    cutoff: datetime,
    protected: frozenset[int] | set[int] = frozenset(),
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int, int]:
    """Rewrite each sealed segment, oldest first (the caller holds the log's lock and has
    sealed the active segment). Returns (entries dropped, segments rewritten, removed).
    ``progress(done, total)`` is called after each segment (segments looked at, of all).

    ``WALCompactionError``: a temporary file could not be written; nothing changed. Another
    ``OSError`` propagates: the caller poisons the log, since the index and the files may
    disagree after a failed rename or directory fsync.
    """
    dropped = rewritten = removed = 0
    folded_segments: set[int] = set()
    for done, seg in enumerate(sealed, 1):
        d, changed, gone = _compact_segment(store, seg, cutoff, folded_segments, protected)
        dropped += d
        rewritten += int(changed)
        removed += int(gone)
        if changed:
            crash_point("compact-between-segments")
        if progress is not None:
            progress(done, len(sealed))
    return dropped, rewritten, removed


def _compact_segment(
    store: LogReader,
    seg: SegmentInfo,
    cutoff: datetime,
    folded: set[int],
    protected: frozenset[int] | set[int],
) -> tuple[int, bool, bool]:
    """Rewrite one sealed segment (lock held). Returns (dropped, rewritten, removed)."""
    keep: list[tuple[int, bytes]] = []
    dropped_status: list[tuple[int, int]] = []  # (status record LSN, its entry's LSN)
    dropped_keys: list[tuple[int, int]] = []  # (key hash, LSN) of dropped explicit keys
    dropped = 0
    droppable = False
    for lsn in range(seg.first, seg.end + 1):
        i = lsn - store._base
        if i < 0 or i >= store._n or store._lengths[i] == 0:
            continue
        code = store._status[i]
        rec = store._read_record(lsn)
        if rec["t"] == KIND_STATUS:
            target = int(rec["of"])
            t = target - store._base
            gone = t < 0 or t >= store._n or store._status[t] == CODE_NONE
            if gone or store._segment_for(target).first in folded | {seg.first}:
                droppable = True  # folded into its entry (or its entry is gone)
                dropped_status.append((lsn, int(rec["of"])))
                continue
            keep.append((lsn, encode_line(orjson.dumps(rec))))
            continue
        entry = store._load_entry(lsn)
        when = entry.synced_at or entry.created_at
        old = when <= (cutoff if when.tzinfo is not None else cutoff.replace(tzinfo=None))
        if code == CODE_COMPLETED and old and lsn not in protected:
            droppable = True
            dropped += 1
            if entry.has_explicit_key:
                dropped_keys.append((key_hash(entry.idempotency_key), lsn))
            continue
        if store._status_rec[i]:
            droppable = True  # fold the newest status into the entry record
        d = entry.to_dict()
        del d["lsn"]
        payload = b'{"t":"entry","lsn":%d,%s' % (lsn, orjson.dumps(d)[1:])
        keep.append((lsn, encode_line(payload)))
    front = store._segments[0] is seg
    if not droppable and not (front and not keep):  # an emptied front segment goes too
        return 0, False, False
    folded.add(seg.first)
    if not keep and front:
        # the manifest first: a crash before the unlink leaves a segment wholly before the
        # manifest's first LSN, which recovery removes; never a manifest naming a lost segment
        try:
            write_manifest(store._fs, store.directory, store._segments[1].first)
        except OSError as exc:
            # the segment is still there and the index untouched: whichever manifest a crash
            # leaves names a segment present, so the log goes on (never poisoned for this)
            raise _failed(exc, store.directory / MANIFEST_TMP, "the manifest is unchanged") from exc
        try:
            store._fs.unlink(str(seg.path))
        except OSError as exc:
            # the manifest already names the next segment; this one (nothing in it is owed)
            # stays until the next compaction or open removes it: the index still holds it
            raise _failed(exc, seg.path, "the segment is still there", "remove") from exc
        crash_point("compact-after-unlink")
        # the removal must be durable before the index forgets these LSNs
        store._fs.fsync_dir(str(store.directory))
        _forget(store, seg, [], dropped_status, dropped_keys)
        store._segments.remove(seg)
        drop_front(store)
        gone_fd = store._read_fds.pop(seg.first, None)
        if gone_fd is not None:
            os.close(gone_fd)  # an open fd would keep the unlinked file's space in use
        return dropped, True, True
    header = segment_header(seg.first, seg.end)
    tmp = seg.path.with_name(seg.path.name[: -len(".wal")] + TMP_SUFFIX)
    ino = _write_tmp(store, tmp, header + b"".join(line for _, line in keep))
    crash_point("compact-after-tmp-write")
    store._fs.rename(str(tmp), str(seg.path))
    crash_point("compact-after-rename")
    store._fs.fsync_dir(str(store.directory))  # the rename is durable only after this
    old_fd = store._read_fds.pop(seg.first, None)
    if old_fd is not None:
        os.close(old_fd)
    seg.ino = ino
    _forget(store, seg, keep, dropped_status, dropped_keys)
    off = len(header)
    for lsn, line in keep:
        i = lsn - store._base
        store._offsets[i] = off
        store._lengths[i] = len(line)
        off += len(line)
    seg.size = off
    seg.compacted = True
    return dropped, True, False


def _write_tmp(store: LogReader, tmp: os.PathLike[str], data: bytes) -> tuple[int, int]:
    """Write and fsync a compaction's temporary file; return its (st_dev, st_ino).

    A failure (ENOSPC, EIO) removes the file and raises ``WALCompactionError``: nothing else
    was touched, so the log goes on (its own descriptors never saw this error).
    """
    fd = -1
    try:
        fd = store._fs.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        write_all(store._fs, fd, data)
        store._fs.fdatasync(fd)  # never rename an unsynced file over good data
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    except OSError as exc:
        if fd >= 0:
            with contextlib.suppress(OSError):
                store._fs.close(fd)
            fd = -1
        with contextlib.suppress(OSError):
            store._fs.unlink(str(tmp))  # never leave a half-written file behind
        raise _failed(exc, Path(tmp), "it was removed") from exc
    finally:
        if fd >= 0:
            store._fs.close(fd)


def _failed(exc: OSError, path: Path, what: str, verb: str = "write") -> WALCompactionError:
    """The error of a compaction step that failed before it changed what the log holds: it
    names the file (``path``, or the one the error names) and leaves appends working."""
    en = exc.errno
    name = errno_mod.errorcode.get(en, str(en)) if en is not None else type(exc).__name__
    where = Path(exc.filename) if isinstance(exc.filename, str) else path
    return WALCompactionError(
        f"compaction could not {verb} {where} ({name}: {exc.strerror or exc}); {what} and the "
        "log is unchanged: appends go on",
        path=where,
        errno=en,
    )


def _forget(
    store: LogReader,
    seg: SegmentInfo,
    keep: list[tuple[int, bytes]],
    dropped_status: list[tuple[int, int]],
    dropped_keys: list[tuple[int, int]],
) -> None:
    """Clear the index slots of a rewritten segment's dropped records (lock held)."""
    for kh, lsn in dropped_keys:
        if store._keys.get(kh) == lsn:
            del store._keys[kh]  # the key's entry is gone: the map stays as small as the log
    for s_lsn, target in dropped_status:
        t = target - store._base
        if 0 <= t < len(store._status_rec) and store._status_rec[t] == s_lsn:
            store._status_rec[t] = 0  # that status is now folded into the entry record
    kept = {lsn for lsn, _ in keep}
    for lsn in range(seg.first, seg.end + 1):
        i = lsn - store._base
        if i < 0 or i >= store._n or lsn in kept:
            continue
        code = store._status[i]
        if code != CODE_NONE:
            store._counts[code] -= 1
            store._status[i] = CODE_NONE
        store._lengths[i] = 0
        store._offsets[i] = 0


def drop_front(store: LogReader) -> None:
    """Shrink the index when the oldest segments are gone (lock held)."""
    new_base = store._segments[0].first if store._segments else store._next_lsn
    k = new_base - store._base
    if k <= 0:
        return
    del store._status[:k]
    del store._offsets[:k]
    del store._lengths[:k]
    del store._status_rec[:k]
    del store._idh[:k]
    store._n = max(0, store._n - k)
    store._base = new_base
