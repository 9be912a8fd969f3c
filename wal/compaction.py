"""Compaction: rewriting sealed segments without the entries the database no longer needs.

``compact(store, retention)`` seals the active segment, then rewrites each sealed segment
without its COMPLETED entries older than ``retention``; every other entry stays (never compact
away an entry the database has not durably applied). A kept entry's newest status is folded
into its entry record. A rewritten segment's header names a fixed range (``"last"`` set, see
:mod:`wal`): LSNs stay gap-free across segments although it holds only some of them.

Each rewrite is crash-safe: write a ``.wal.tmp`` file, fsync it, rename it over the segment,
fsync the directory; only then does the in-memory index forget the dropped records. An emptied
front segment is unlinked instead (then the directory is fsynced). A crash leaves each segment
old or new, never a mix; recovery removes a leftover ``.wal.tmp`` file. Segments are rewritten
oldest first; a status record is dropped only when its entry is gone, or when the entry's
newest status is folded into its record in this segment or in an older one already rewritten.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import orjson

from wal._crashpoints import crash_point
from wal.fileops import write_all
from wal.index import _COMPLETED, _NONE
from wal.reading import _Segment
from wal.record import KIND_STATUS, encode_line
from wal.segment import TMP_SUFFIX

if TYPE_CHECKING:
    from wal.storage import WALStorage

__all__ = ["compact"]


def compact(store: WALStorage, retention: timedelta | float | None = None) -> dict[str, int]:
    """``WALStorage.compact``: see its docstring (takes the storage's lock)."""
    from wal.storage import _now  # at call time: wal.storage imports this module

    if retention is None:
        keep_for = timedelta(0)
    elif isinstance(retention, timedelta):
        keep_for = retention
    else:
        keep_for = timedelta(hours=float(retention))
    cutoff = _now() - keep_for
    with store._cond:
        store._check_writable()
        while store._flushing:
            store._wait()
        before = sum(s.size for s in store._segments)
        if store._seg_size > store._header_len:
            # seal the active segment so everything written so far can be compacted; the
            # open group's records (LSNs assigned, not yet written) go to the new segment
            waiting = store._group.records
            store._flushing = True
            try:
                store._rotate(waiting[0][0] if waiting else store._next_lsn)
            except BaseException as exc:
                store._poison(exc)
                raise (store._failed or exc) from exc
            finally:
                store._flushing = False
                store._cond.notify_all()
        sealed = list(store._segments[:-1])
        dropped = rewritten = removed = 0
        folded_segments: set[int] = set()
        for seg in sealed:
            try:
                d, changed, gone = _compact_segment(store, seg, cutoff, folded_segments)
            except OSError as exc:
                store._poison(exc)
                raise (store._failed or exc) from exc
            dropped += d
            rewritten += int(changed)
            removed += int(gone)
            if changed:
                crash_point("compact-between-segments")
        after = sum(s.size for s in store._segments)
    return {
        "bytes_before": before,
        "bytes_after": after,
        "entries_dropped": dropped,
        "segments_rewritten": rewritten,
        "segments_removed": removed,
    }


def _compact_segment(
    store: WALStorage, seg: _Segment, cutoff: datetime, folded: set[int]
) -> tuple[int, bool, bool]:
    """Rewrite one sealed segment (lock held). Returns (dropped, rewritten, removed)."""
    from wal.storage import _FILE_MODE, _segment_header  # at call time: it imports this module

    keep: list[tuple[int, bytes]] = []
    dropped_status: list[tuple[int, int]] = []  # (status record LSN, its entry's LSN)
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
            gone = t < 0 or t >= store._n or store._status[t] == _NONE
            if gone or store._segment_for(target).first in folded | {seg.first}:
                droppable = True  # folded into its entry (or its entry is gone)
                dropped_status.append((lsn, int(rec["of"])))
                continue
            keep.append((lsn, encode_line(orjson.dumps(rec))))
            continue
        entry = store._load_entry(lsn)
        when = entry.synced_at or entry.created_at
        if code == _COMPLETED and when.tzinfo is not None and when <= cutoff:
            droppable = True
            dropped += 1
            continue
        if code == _COMPLETED and when.tzinfo is None and when <= cutoff.replace(tzinfo=None):
            droppable = True
            dropped += 1
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
        store._fs.unlink(str(seg.path))
        crash_point("compact-after-unlink")
        # the removal must be durable before the index forgets these LSNs
        store._fs.fsync_dir(str(store.directory))
        _forget(store, seg, [], dropped_status)
        store._segments.remove(seg)
        _drop_front(store)
        gone_fd = store._read_fds.pop(seg.first, None)
        if gone_fd is not None:
            os.close(gone_fd)  # an open fd would keep the unlinked file's space in use
        return dropped, True, True
    header = _segment_header(seg.first, seg.end)
    tmp = seg.path.with_name(seg.path.name[: -len(".wal")] + TMP_SUFFIX)
    fd = store._fs.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    try:
        write_all(store._fs, fd, header + b"".join(line for _, line in keep))
        store._fs.fdatasync(fd)  # never rename an unsynced file over good data
    finally:
        store._fs.close(fd)
    crash_point("compact-after-tmp-write")
    store._fs.rename(str(tmp), str(seg.path))
    crash_point("compact-after-rename")
    store._fs.fsync_dir(str(store.directory))  # the rename is durable only after this
    old = store._read_fds.pop(seg.first, None)
    if old is not None:
        os.close(old)
    _forget(store, seg, keep, dropped_status)
    off = len(header)
    for lsn, line in keep:
        i = lsn - store._base
        store._offsets[i] = off
        store._lengths[i] = len(line)
        off += len(line)
    seg.size = off
    seg.compacted = True
    return dropped, True, False


def _forget(
    store: WALStorage,
    seg: _Segment,
    keep: list[tuple[int, bytes]],
    dropped_status: list[tuple[int, int]],
) -> None:
    """Clear the index slots of a rewritten segment's dropped records (lock held)."""
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
        if code != _NONE:
            store._counts[code] -= 1
            store._status[i] = _NONE
        store._lengths[i] = 0
        store._offsets[i] = 0


def _drop_front(store: WALStorage) -> None:
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
