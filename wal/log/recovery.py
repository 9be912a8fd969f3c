"""Recovery: what opening a log does with the segments it finds.

``recover(store)`` reads every segment back in LSN order, indexes each record and decides what
each defect means under ``StorageOptions.recovery`` (RocksDB's recovery modes are the
reference):

* A crash can only tear the last record of the last segment (bytes written after the last
  fsync). Unless the mode is ``"strict"``, that tail is cut: the torn bytes are first kept in
  a ``.broken`` file (synced, and its directory entry too), then the segment is truncated
  before them. A last segment without a durable header (a rotation cut short) is removed.
* Anything else (a bad record before the end, an LSN gap between segments, a record out of
  order) raises ``WALCorruptionError`` with file, line and offset; ``"strict"`` raises on the
  torn tail too, and ``"skip_corrupt"`` skips and counts instead (an explicit salvage).
* ``*.wal.tmp`` files are an interrupted compaction's unfinished output; the segment they were
  to replace is intact, so they are removed.

Every record's checksum is verified and every record indexed. Records in the layout our
writers produce take a fast path (:mod:`wal.log.fastindex`) that does both without parsing them
into dicts; any other line is decoded and checked as below, one at a time.

A read-only open (``WALStorage.open_readonly``) changes nothing on disk: it stops at a torn
tail instead of cutting it (a writer may still be writing that record). What was found and
done is the ``RecoveryReport`` in ``WALStorage.recovery_report``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wal.errors import WALCorruptionError
from wal.log.fastindex import Cursor, index_chunk
from wal.log.fileops import write_all
from wal.log.reading import LogReader
from wal.log.record import KIND_SEGMENT
from wal.log.report import RecoveryReport
from wal.log.segment import (
    BROKEN_SUFFIX,
    FILE_MODE,
    TMP_SUFFIX,
    Defect,
    SegmentInfo,
    list_segments,
    read_chunks,
    read_from,
    scan,
    valid_record_after,
)

__all__ = ["RecoveryReport", "recover"]

log = logging.getLogger("wal")


def recover(store: LogReader) -> None:
    """Index every segment of ``store``'s directory and set its next LSN (while it opens)."""
    rep = store.recovery_report
    if not store.readonly:
        for tmp in store.directory.glob("*" + TMP_SUFFIX):
            # an interrupted compaction's unfinished output: the original is intact
            store._fs.unlink(str(tmp))
            rep.removed_tmp_files += 1
    segments = list_segments(store.directory)
    store._base = segments[0][0] if segments else 1
    prev_end = 0
    changed_dir = rep.removed_tmp_files > 0
    for i, (first, path) in enumerate(segments):
        last_segment = i == len(segments) - 1
        try:
            seg = _recover_segment(store, path, first, last_segment, prev_end)
        except FileNotFoundError:
            if store.readonly:  # a writer's compaction removed it meanwhile
                continue
            raise
        if seg is None:
            changed_dir = True
            continue
        prev_end = seg.end
        store._segments.append(seg)
        rep.segments += 1
    if changed_dir and not store.readonly:
        # removals and truncations above must not come back after a crash
        store._fs.fsync_dir(str(store.directory))
    store._next_lsn = prev_end + 1 if store._segments else store._base
    store._durable_lsn = store._written_lsn = store._next_lsn - 1


def _recover_segment(
    store: LogReader, path: Path, first: int, last_segment: bool, prev_end: int
) -> SegmentInfo | None:
    """Index one segment; cut a torn tail; raise on corruption. None: segment removed.

    Records in the writer's layout are verified and indexed in bulk by :mod:`wal.log.fastindex`;
    every other line comes to ``slow`` below, one at a time and in order.
    """
    rep = store.recovery_report
    mode = store.options.recovery
    cur = Cursor(first)
    size = path.stat().st_size

    def corrupt(d: Defect) -> None:
        text = f"{d.path.name}: line {d.line}, offset {d.offset}: {d.problem}"
        if mode == "skip_corrupt":
            rep.defects.append(text)
            rep.skipped_records += 1
            log.warning("skipped a bad record: %s", text)
            return
        raise WALCorruptionError(d.path, d.line, d.offset, d.problem)

    if store._segments and first != prev_end + 1:
        problem = (
            f"LSN gap: the previous segment ends at LSN {prev_end}, this one starts at "
            f"{first} (a segment is missing or was reordered)"
        )
        if mode != "skip_corrupt":
            raise WALCorruptionError(path, 0, 0, problem)
        rep.lsn_gaps += 1
        rep.defects.append(f"{path.name}: {problem}")

    def slow(data: bytes, base: int, pos: int) -> int:
        """Take the line at ``data[pos]``; return where the next one starts, -1 to stop."""
        nonlocal size
        item = next(scan(path, data, pos, cur.line_no, base))
        cur.line_no = item.line
        nl = data.find(b"\n", pos)
        after = len(data) if nl < 0 else nl + 1
        if isinstance(item, Defect):
            rest = read_from(path, item.offset) if last_segment and mode != "strict" else b""
            if rest and valid_record_after(rest, 0) is None:
                # a torn tail: only bytes written after the last fsync can be here
                size = _cut_tail(store, path, rest, item)
                return -1
            corrupt(item)
            return after
        rec = item.record
        kind = rec["t"]
        if cur.header is None:
            if kind != KIND_SEGMENT:
                corrupt(Defect(path, item.line, item.offset, "segment has no header record"))
                cur.header = {"first": first, "last": None}
            else:
                cur.header = rec
                if rec.get("first") != first:
                    corrupt(
                        Defect(
                            path,
                            item.line,
                            item.offset,
                            f"header says first LSN {rec.get('first')}, name says {first}",
                        )
                    )
                if rec.get("last") is not None:
                    cur.compacted = True
                    cur.end = int(rec["last"])
                return after
        if kind == KIND_SEGMENT:
            corrupt(Defect(path, item.line, item.offset, "a second segment header"))
            return after
        lsn = rec.get("lsn")
        if not isinstance(lsn, int):
            corrupt(Defect(path, item.line, item.offset, "record has no LSN"))
            return after
        expected = cur.expected
        ok = expected <= lsn <= cur.end if cur.compacted else lsn == expected
        if not ok:
            problem = f"LSN {lsn} out of order (expected {expected})"
            if mode == "skip_corrupt" and lsn > expected:
                # the records before it were skipped (and counted): a gap; keep this one
                rep.lsn_gaps += 1
                where = f"{path.name}: line {item.line}, offset {item.offset}"
                rep.defects.append(f"{where}: {problem}")
            else:
                corrupt(Defect(path, item.line, item.offset, problem))
                return after
        try:
            store._index_record(rec, item)
        except (KeyError, ValueError, TypeError) as exc:
            corrupt(Defect(path, item.line, item.offset, f"malformed record: {exc}"))
            return after
        rep.records += 1
        cur.expected = lsn + 1
        if not cur.compacted:
            cur.end = lsn
        return after

    for data, end, base in read_chunks(path, 1 << 20):  # 1 MiB: the rows of a chunk stay small
        if not index_chunk(store, cur, data, end, base, slow):
            break
    if cur.header is None:
        # nothing verifiable in the file: a segment created by a rotation whose header was
        # never made durable (only possible for the last one; earlier ones raised above)
        if not store.readonly:
            store._fs.unlink(str(path))
            rep.removed_empty_segments += 1
        return None
    return SegmentInfo(first, path, cur.end, cur.compacted, size)


def _cut_tail(store: LogReader, path: Path, torn: bytes, d: Defect) -> int:
    """Keep the torn bytes in a ``.broken`` file, then truncate the segment before them."""

    rep = store.recovery_report
    text = f"{path.name}: line {d.line}, offset {d.offset}: {d.problem}"
    rep.torn_tail_bytes += len(torn)
    if store.readonly:  # a writer may be in the middle of this very record: report, keep
        rep.defects.append(text + f" (torn tail of {len(torn)} bytes: a normal open cuts it)")
        return d.offset
    if torn.strip(b"\x00"):
        broken = path.with_name(path.name + BROKEN_SUFFIX)
        n = 1
        while broken.exists():
            broken = path.with_name(f"{path.name}{BROKEN_SUFFIX}.{n}")
            n += 1
        fd = store._fs.open(str(broken), os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            write_all(store._fs, fd, torn)
            store._fs.fdatasync(fd)  # the evidence must exist before the cut below
        finally:
            store._fs.close(fd)
        # the .broken file's name is in the directory: durable before the cut destroys the bytes
        store._fs.fsync_dir(str(path.parent))
        rep.broken_files.append(broken.name)
    store._fs.truncate(str(path), d.offset)  # fsyncs: the cut is durable before new appends
    rep.truncated_bytes += len(torn)
    rep.defects.append(text + " (torn tail cut)")
    log.warning("cut a torn tail of %d bytes: %s", len(torn), text)
    return d.offset
