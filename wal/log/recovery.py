"""Recovery: what opening a log does with the segments it finds.

``recover(store)`` reads every segment back in LSN order, indexes each record and decides what
each defect means under ``StorageOptions.recovery`` (RocksDB's recovery modes are the
reference):

* The last segment may end in zeros: the rest of its preallocated space
  (``StorageOptions.preallocate``). Zeros from the end of the last record to the end of the
  file are the normal end of the log in every mode: no defect, nothing cut, nothing kept, and
  the space stays for the next appends (``RecoveryReport.spare_bytes``). Zeros followed by
  anything else are not: that is a torn tail or corruption, as below.
* A crash can only tear the last record of the last segment (bytes written after the last
  fsync). Unless the mode is ``"strict"``, that tail is cut: the torn bytes are first kept in
  a ``.broken`` file (synced, and its directory entry too), then the segment is truncated
  before them. A torn tail is an incomplete last line, a zero-filled tail, or a lost page (a
  zero run up to a page boundary) of a multi-page write with later pages kept, which the
  writer bounds: good records after a hole are a torn tail only when they end within the
  segment header's ``tear`` bound of it (``wal.log.segment.classify_tail``, the rule
  ``verify`` applies too). Beyond it they are acknowledged entries: ``tolerate_tail`` cuts
  them into a ``.suspect`` file with a warning (``status`` exits 1), ``strict`` refuses,
  ``skip_corrupt`` skips the hole and keeps them. Every cut of good records is reported
  (``RecoveryReport.cut_records``). A tail that is a *complete* line with a bad checksum can
  be a damaged acknowledged record: it is cut too (the bytes kept in a ``.suspect`` file),
  with a warning in the report that ``atb wal status`` shows while the file is there.
* A last segment without a valid header is removed only when it is no longer than a header
  (a rotation cut short: records are written only after the header is durable); a longer
  one, or any other segment without a header (empty, zero-filled), is corruption.
* The manifest (:mod:`wal.log.manifest`) names the first LSN the log owes: no segment there
  is ``WALMissingSegmentError``, never a shorter log. Segments wholly before it are indexed:
  when every entry in them is COMPLETED they are an interrupted compaction's leftovers and
  are removed; one holding an entry not completed is never deleted: the manifest disagrees
  with the segments (``WALCorruptionError``; ``repair`` moves the manifest back).
* A segment that starts inside the range a compacted segment's header claims (``last``) is
  judged by the one rule of :mod:`wal.log.overlap`, which ``verify`` and ``repair`` apply too:
  a copy of records the compacted segment holds (every one, byte for byte) is removed (a
  read-only open skips it); anything else is that header claiming LSNs it does not hold:
  ``WALCorruptionError`` naming it. A record past a compacted header's ``last`` is that
  header's defect too, named as such.
* Anything else (a bad record before the end, an LSN gap between segments, a record out of
  order, a record whose checksum matches but whose contents do not decode) raises
  ``WALCorruptionError`` with file, line and offset; ``"strict"`` raises on the torn tail too,
  and ``"skip_corrupt"`` skips and counts instead (an explicit salvage). A segment of an
  unknown format version raises ``WALFormatVersionError`` in every mode.
* ``*.wal.tmp`` files are an interrupted compaction's unfinished output; the segment they were
  to replace is intact, so they are removed (``MANIFEST.tmp`` likewise, and a next segment
  whose preparation was left unfinished, ``next.wal.prep``: it holds no record).
* Every file is checked to be a regular file (``WALUnsafeFileError`` for a symlink or a
  directory) and read through ``O_NOFOLLOW`` descriptors.

The zeros of a preallocated last segment are never parsed: its data end (after the last
non-zero byte) is found by reading backwards from the end of the file in large chunks, and
records are read forwards up to there; the zeros after it are the ``spare_bytes``. Memory
holds a chunk (1 MiB), never a whole file: a line longer than ``LINE_CAP`` is judged from the
file in pieces (:mod:`wal.log.filescan`), and so are a tail to classify and the bytes a cut
keeps in its ``.broken`` file; a segment made gigabytes long (even a sparse one) opens, or is
refused, in a few MiB.

Every record's checksum is verified and every record indexed. Records in the layout our
writers produce take a fast path (:mod:`wal.log.fastindex`) that does both without parsing them
into dicts; any other line is decoded and checked as below, one at a time.

A read-only open (``WALStorage.open_readonly``) changes nothing on disk: it stops at a torn
tail instead of cutting it (a writer may still be writing that record), and keeps the
descriptors it read each segment with, so its later reads see the files it indexed. What was
found and done is the ``RecoveryReport`` in ``WALStorage.recovery_report``.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

from wal.errors import (
    WALCorruptionError,
    WALFormatVersionError,
    WALLogChangedError,
    WALMissingSegmentError,
)
from wal.log.compaction import drop_front
from wal.log.fastindex import Cursor, index_chunk
from wal.log.fileops import write_all
from wal.log.filescan import (
    CHUNK,
    classify_tail_at,
    judge_long,
    looks_like_record_at,
    pread_all,
    rstrip_end,
)
from wal.log.index import CODE_COMPLETED, CODE_NONE
from wal.log.manifest import MANIFEST_NAME, MANIFEST_TMP, read_manifest, write_manifest
from wal.log.overlap import overlap_problem
from wal.log.reading import LogReader
from wal.log.record import FORMAT_VERSION, KIND_SEGMENT
from wal.log.report import RecoveryReport
from wal.log.segment import (
    BROKEN_SUFFIX,
    FILE_MODE,
    LINE_CAP,
    PREPARED_NAME,
    SUSPECT_SUFFIX,
    TEAR_BOUND,
    TMP_SUFFIX,
    ZERO_TAIL,
    Defect,
    Line,
    LongLine,
    SegmentInfo,
    check_regular,
    data_end,
    list_segments,
    open_read,
    read_chunks,
    scan,
    segment_header,
    segment_name,
    tear_bound,
    zero_rest,
)
from wal.log.validate import record_lsn, record_problem

__all__ = ["RecoveryReport", "recover"]

log = logging.getLogger("wal")


def recover(store: LogReader) -> None:
    """Index every segment of ``store``'s directory and set its next LSN (while it opens)."""
    rep = store.recovery_report
    d = store.directory
    if not store.readonly:
        leftovers = [*d.glob("*" + TMP_SUFFIX), *d.glob(MANIFEST_TMP), *d.glob(PREPARED_NAME)]
        for tmp in leftovers:
            check_regular(tmp)  # never unlink a directory or follow anything here
            # an interrupted compaction's (or manifest write's) unfinished output: the
            # original is intact
            store._fs.unlink(str(tmp))
            rep.removed_tmp_files += 1
    owed = read_manifest(d)
    rep.manifest_first = owed
    segments = list_segments(d)
    for _, path in segments:
        check_regular(path)
    for kept in sorted(d.glob("*" + SUSPECT_SUFFIX + "*")):
        rep.warnings.append(
            f"{kept.name}: an earlier open cut bytes that may hold acknowledged entries from "
            "the end of the log (a complete record with a bad checksum, or good records after "
            "a hole): check them against the database, then delete the file"
        )
    changed_dir = rep.removed_tmp_files > 0
    if owed is not None:
        front = [(f, p) for f, p in segments if f < owed]
        rest = segments[len(front) :]
        if not rest or rest[0][0] != owed:
            where = (
                f"segment {rest[0][1].name} starts at LSN {rest[0][0]}"
                if rest
                else "no segment is left"
            )
            problem = (
                f"the manifest says the log starts at LSN {owed} but {where}: the first "
                f"segment ({segment_name(owed)}) was deleted"
            )
            if store.options.recovery != "skip_corrupt":
                raise WALMissingSegmentError(d / segment_name(owed), 0, 0, problem)
            rep.lsn_gaps += 1
            rep.defects.append(problem)
            owed = None
            segments = rest
        # segments wholly before the manifest's first LSN are indexed like the others:
        # removed below only if nothing in them is still owed (_settle_front)
    store._base = segments[0][0] if segments else 1
    prev_end = 0
    # the parse allocates many small objects and frees none of them in cycles: the cyclic
    # GC would scan them again and again for nothing; paused (process-wide) while it runs,
    # its previous state restored after
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for i, (first, path) in enumerate(segments):
            last_segment = i == len(segments) - 1
            prev = store._segments[-1] if store._segments else None
            inside = prev is not None and prev.compacted and first <= prev.end
            # it starts inside the range the previous segment's header claims
            if inside and prev is not None and _overlap(store, prev.path, prev.end, path, first):
                changed_dir = changed_dir or not store.readonly
                continue  # a copy of records the previous segment holds: never read
            try:
                seg = _recover_segment(store, path, first, last_segment, prev_end, first == owed)
            except FileNotFoundError:
                if store.readonly:  # a writer's compaction removed it meanwhile: read again
                    raise WALLogChangedError(path, "removed while it was read") from None
                raise
            if seg is None:
                changed_dir = True
                continue
            prev_end = seg.end
            store._segments.append(seg)
            rep.segments += 1
    finally:
        if gc_was_on:
            gc.enable()
    if owed is not None and store._segments and store._segments[0].first < owed:
        changed_dir = _settle_front(store, owed) or changed_dir
    if changed_dir and not store.readonly:
        # removals and truncations above must not come back after a crash
        store._fs.fsync_dir(str(store.directory))
    store._next_lsn = prev_end + 1 if store._segments else store._base
    store._durable_lsn = store._written_lsn = store._next_lsn - 1


def _overlap(store: LogReader, earlier: Path, claimed: int, later: Path, first: int) -> bool:
    """Segment ``later`` starts inside the range ``..claimed`` of the compacted segment before
    it (the one rule, :mod:`wal.log.overlap`). True: ``later`` is a copy of records that
    segment holds (every one of them, byte for byte): a writing open removes it, a read-only
    one skips it. Else the earlier header claims LSNs it does not hold:
    ``WALCorruptionError`` naming it (``skip_corrupt``: reported, and the later segment read,
    its LSN overlap counted as a gap)."""
    try:
        problem = overlap_problem(earlier, claimed, later, first)
    except FileNotFoundError:
        if store.readonly:  # a writer's compaction removed one meanwhile: read again
            raise WALLogChangedError(later, "removed while it was read") from None
        raise
    rep = store.recovery_report
    if problem is None:
        if not store.readonly:
            store._fs.unlink(str(later))
            rep.removed_copy_segments += 1
        log.warning("%s: a copy of records %s holds: skipped", later.name, earlier.name)
        return True
    if store.options.recovery != "skip_corrupt":
        raise WALCorruptionError(earlier, 1, 0, problem)
    rep.defects.append(f"{earlier.name}: line 1, offset 0: {problem}")
    return False


def _settle_front(store: LogReader, owed: int) -> bool:
    """Segments before the manifest's first LSN ``owed`` (indexed): remove them when every
    entry in them is COMPLETED (an interrupted compaction's leftover: it removes only such a
    segment, after moving the manifest); never when one is not. True: a file was removed.

    A segment holding a PENDING (or FAILED) entry before the manifest's first LSN is a
    manifest that disagrees with the segments present (a restored backup of the first
    segment, say): ``WALCorruptionError`` naming both; ``skip_corrupt`` keeps the segments
    and moves the manifest back to them.
    """
    rep = store.recovery_report
    front = [seg for seg in store._segments if seg.first < owed]
    i1 = front[-1].end + 1 - store._base
    codes = bytes(store._status[:i1])
    unfinished = len(codes) - codes.count(CODE_NONE) - codes.count(CODE_COMPLETED)
    if unfinished:
        # never delete a segment that holds an entry not yet applied
        names = ", ".join(seg.path.name for seg in front)
        problem = (
            f"the manifest says the log starts at LSN {owed}, but {names} before it "
            f"hold(s) {unfinished} entries not completed (PENDING or FAILED): the manifest "
            f"disagrees with the segments present; an open never deletes them. `atb wal "
            f"repair` moves the manifest back to LSN {front[0].first}"
        )
        if store.options.recovery != "skip_corrupt":
            raise WALCorruptionError(store.directory / MANIFEST_NAME, 0, 0, problem)
        rep.defects.append(problem)
        if not store.readonly:
            write_manifest(store._fs, store.directory, front[0].first)
            rep.manifest_first = front[0].first
        return False
    store._counts[CODE_COMPLETED] -= codes.count(CODE_COMPLETED)
    for seg in front:
        # wholly before the manifest's first LSN and nothing in it owed: an interrupted
        # compaction had still to remove it (the manifest is moved first)
        store._segments.remove(seg)
        rep.segments -= 1
        fd = store._read_fds.pop(seg.first, None)
        if fd is not None:
            os.close(fd)
        if not store.readonly:
            store._fs.unlink(str(seg.path))
            rep.removed_front_segments += 1
    base = store._segments[0].first  # the manifest's segment (recover checked it is there)
    for kh, lsn in list(store._keys.items()):
        if lsn < base:
            del store._keys[kh]  # explicit keys of the removed entries leave with them
    drop_front(store)
    return not store.readonly


def _recover_segment(
    store: LogReader, path: Path, first: int, last_segment: bool, prev_end: int, owed: bool
) -> SegmentInfo | None:
    """Index one segment; cut a torn tail; raise on corruption. None: segment removed.

    ``owed``: the manifest names this segment as the log's first. A read-only reader keeps
    the descriptor it read the segment with (its later reads see this very file).
    """
    fd = open_read(path)
    keep_fd = False
    try:
        seg = _index_segment(store, fd, path, first, last_segment, prev_end, owed)
        keep_fd = seg is not None and store.readonly
        if keep_fd:
            store._cache_fd(first, fd)
        return seg
    finally:
        if not keep_fd:
            os.close(fd)


def _index_segment(
    store: LogReader,
    fd: int,
    path: Path,
    first: int,
    last_segment: bool,
    prev_end: int,
    owed: bool,
) -> SegmentInfo | None:
    """``_recover_segment`` on an open descriptor.

    Records in the writer's layout are verified and indexed in bulk by :mod:`wal.log.fastindex`;
    every other line comes to ``slow`` below, one at a time and in order.
    """
    rep = store.recovery_report
    mode = store.options.recovery
    cur = Cursor(first)
    st = os.fstat(fd)
    size = st.st_size
    header_len = len(segment_header(first, None))
    # a last segment with no valid header is a rotation cut short only if it holds no more
    # than a header (records are written after the header is durable); else records are lost
    headless_ok = last_segment and size <= header_len and not owed

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
        item = next(scan(path, data, pos, cur.line_no, base))
        nl = data.find(b"\n", pos)
        after = len(data) if nl < 0 else nl + 1
        zeros = len(data) - pos if isinstance(item, Defect) and zero_rest(data, pos) else 0
        return take(item, after, zeros)

    def long(line: LongLine) -> int:
        """Take a line too long to gather (judged from the file in pieces, as ``slow``
        judges one in memory); return where the next one starts, -1 to stop."""
        item = judge_long(path, fd, cur.line_no + 1, line)
        zeros = line.length if isinstance(item, Defect) and item.problem == ZERO_TAIL else 0
        return take(item, line.offset + line.length, zeros)

    def take(item: Line | Defect, after: int, zeros: int) -> int:
        """The line read (``zeros``: it and the rest of what was read are zero bytes)."""
        nonlocal size
        cur.line_no = item.line
        if isinstance(item, Defect):
            if last_segment and cur.header is not None and zeros:
                # the preallocated rest of the last segment: where the next append goes
                rep.spare_bytes += zeros
                size = item.offset
                return -1
            torn_ok = last_segment and mode != "strict" and (cur.header is not None or headless_ok)
            end = os.fstat(fd).st_size if torn_ok else 0  # the rest of the file: its tail
            if end > item.offset:
                bound = tear_bound(cur.header)[0] if cur.header is not None else TEAR_BOUND
                tail = classify_tail_at(fd, item.offset, end, bound)
                if tail.torn:
                    # a torn tail: only bytes written after the last fsync can be here (a
                    # lost page of one unacknowledged write, with later pages of it kept)
                    suspect = not tail.hole and looks_like_record_at(fd, item.offset, end)
                    size = _cut_tail(store, path, fd, end, item, suspect=suspect, valid=tail.valid)
                    return -1
                if tail.hole and mode == "tolerate_tail":
                    # good records after a hole, beyond what one unacknowledged write can
                    # span: acknowledged entries. Never cut silently: kept in a .suspect file,
                    # warned (status exits 1 while it is there); strict refuses instead
                    size = _cut_tail(
                        store, path, fd, end, item, suspect=True, valid=tail.valid, beyond=bound
                    )
                    return -1
            if cur.header is None and owed and mode != "skip_corrupt":
                raise WALMissingSegmentError(
                    path,
                    item.line,
                    item.offset,
                    f"the log's first segment is unreadable: {item.problem}",
                )
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
                version = rec.get("version")
                if version != FORMAT_VERSION:
                    # a newer writer's log: never salvaged by dropping what we cannot read
                    raise WALFormatVersionError(path, item.line, item.offset, version)
                if rec.get("first") != first:
                    corrupt(
                        Defect(
                            path,
                            item.line,
                            item.offset,
                            f"header says first LSN {rec.get('first')!r}, name says {first}",
                        )
                    )
                last = rec.get("last")
                if last is not None:
                    if type(last) is int and last >= first - 1:
                        cur.compacted = True
                        cur.end = last
                    else:
                        corrupt(
                            Defect(
                                path, item.line, item.offset, f"header has a bad 'last': {last!r}"
                            )
                        )
                bad_tear = tear_bound(rec)[1]
                if bad_tear is not None:
                    corrupt(Defect(path, item.line, item.offset, bad_tear))
                return after
        if kind == KIND_SEGMENT:
            corrupt(Defect(path, item.line, item.offset, "a second segment header"))
            return after
        lsn = record_lsn(rec)
        if lsn is None:  # the one validator (a bool is not an LSN): verify says the same
            corrupt(Defect(path, item.line, item.offset, "record has no LSN"))
            return after
        expected = cur.expected
        ok = expected <= lsn <= cur.end if cur.compacted else lsn == expected
        if not ok:
            problem = f"LSN {lsn} out of order (expected {expected})"
            past = cur.compacted and lsn > cur.end and lsn >= expected
            if past:  # in order, but past the range the header claims: the header is wrong
                problem = (
                    f"the header says last={cur.end}, but the segment holds LSN {lsn}: a "
                    "record past the range its header claims (`atb wal repair` extends the "
                    "header over its records)"
                )
            if mode == "skip_corrupt" and past:
                where = f"{path.name}: line {item.line}, offset {item.offset}"
                rep.defects.append(f"{where}: {problem}")
                cur.end = lsn  # the records decide: it is kept
            elif mode == "skip_corrupt" and lsn > expected:
                # the records before it were skipped (and counted): a gap; keep this one
                rep.lsn_gaps += 1
                where = f"{path.name}: line {item.line}, offset {item.offset}"
                rep.defects.append(f"{where}: {problem}")
            else:
                corrupt(Defect(path, item.line, item.offset, problem))
                return after
        bad = record_problem(rec, content=False)
        if bad is not None:
            # a good checksum over bad contents: never indexed, so never read, replayed or
            # drained (every later read of it would fail)
            corrupt(Defect(path, item.line, item.offset, f"{bad} (LSN {lsn})"))
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

    # the last segment may be preallocated: its records, then zeros to its end. Its data end
    # is found backwards from the end of the file (large reads, the zeros never parsed);
    # records are read up to there. Whatever lies before it (a torn record, a zero gap and
    # garbage) is read and judged exactly as before; only the zeros after it are skipped
    stop = data_end(fd, size) if last_segment else size
    stopped = False
    # 1 MiB: a chunk's rows stay small; a line longer than LINE_CAP is never gathered
    for piece in read_chunks(fd, CHUNK, 0, stop, LINE_CAP):
        if isinstance(piece, LongLine):
            if long(piece) < 0:
                stopped = True
                break
        elif not index_chunk(store, cur, *piece, slow):
            stopped = True
            break
    if not stopped and stop < size:
        if stop > 0 and os.pread(fd, 1, stop - 1) != b"\n":
            pass  # the zeros end a line already judged above (its defect took them in before)
        elif cur.header is not None:
            # only zeros after the last record: the preallocated rest of the last segment,
            # where the next append goes (the normal end of the log, nothing cut)
            rep.spare_bytes += size - stop
            size = stop
        else:
            # no header before the zeros (a zero-filled or headless file): read the zeros
            # too, as before, so the defect is located and judged the same way
            for piece in read_chunks(fd, CHUNK, stop, None, LINE_CAP):
                if isinstance(piece, LongLine):
                    if long(piece) < 0:
                        break
                elif not index_chunk(store, cur, *piece, slow):
                    break
    if cur.header is None:
        if headless_ok:
            # a segment created by a rotation whose header was never made durable: it held
            # nothing (records are only written once the header is durable)
            if not store.readonly:
                store._fs.unlink(str(path))
                rep.removed_empty_segments += 1
            return None
        problem = (
            f"segment has no valid header ({size} bytes): it is empty, zero-filled or "
            "overwritten, and the records it held are lost"
        )
        if owed and mode != "skip_corrupt":
            raise WALMissingSegmentError(path, 0, 0, f"the log's first segment: {problem}")
        if mode != "skip_corrupt":
            raise WALCorruptionError(path, 0, 0, problem)
        rep.lsn_gaps += 1
        rep.defects.append(f"{path.name}: {problem}")
        return None
    return SegmentInfo(first, path, cur.end, cur.compacted, size, (st.st_dev, st.st_ino))


def _cut_tail(
    store: LogReader,
    path: Path,
    src: int,
    end: int,
    d: Defect,
    *,
    suspect: bool,
    valid: int = 0,
    beyond: int | None = None,
) -> int:
    """Keep the torn bytes (from ``d``'s offset to ``end``, the end of the segment open as
    ``src``) in a ``.broken`` file, then truncate the segment before them.

    ``suspect``: the tail is a complete line whose checksum fails (not what a crash leaves
    in practice: possibly a damaged acknowledged record), or (``beyond``: the tear bound)
    good records lie after a hole further than one unacknowledged write reaches: the bytes
    go to a ``.suspect`` file and the report carries a warning that status shows. ``valid``:
    records with a good checksum in the cut bytes; a cut that removes any is reported.
    """

    rep = store.recovery_report
    text = f"{path.name}: line {d.line}, offset {d.offset}: {d.problem}"
    torn = end - d.offset
    rep.torn_tail_bytes += torn
    rep.cut_records += valid
    if beyond is not None:
        warning = (
            f"{text}: a hole (a lost page) is followed by {valid} records with good checksums "
            f"reaching further than one unacknowledged write can ({beyond} bytes): "
            "acknowledged entries may be among them"
        )
        if store.readonly:
            rep.warnings.append(warning + "; a normal open cuts them into a .suspect file")
        else:
            rep.warnings.append(
                warning + "; they were cut and kept in a .suspect file: check them against "
                "the database (`atb wal repair` on the backup of the log salvages them)"
            )
            log.error("cut %d good records after a hole, beyond the tear bound: %s", valid, text)
    if store.readonly:  # a writer may be in the middle of this very record: report, keep
        rep.defects.append(text + f" (torn tail of {torn} bytes: a normal open cuts it)")
        return d.offset
    if suspect and beyond is None:
        rep.warnings.append(
            f"{text}: the last record was complete but its checksum fails; it was cut as a "
            "torn tail (kept in a .suspect file): an acknowledged entry may have been damaged"
        )
        log.error("cut a complete record with a bad checksum from the tail: %s", text)
    # zeros after a torn record: preallocated space, nothing lost (found backwards, unread)
    kept = rstrip_end(src, d.offset, end) - d.offset
    if kept:
        suffix = SUSPECT_SUFFIX if suspect else BROKEN_SUFFIX
        broken = path.with_name(path.name + suffix)
        n = 1
        while os.path.lexists(broken):
            broken = path.with_name(f"{path.name}{suffix}.{n}")
            n += 1
        fd = store._fs.open(str(broken), os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            for at in range(d.offset, d.offset + kept, CHUNK):  # a chunk in memory at a time
                write_all(store._fs, fd, pread_all(src, min(CHUNK, d.offset + kept - at), at))
            store._fs.fdatasync(fd)  # the evidence must exist before the cut below
        finally:
            store._fs.close(fd)
        # the .broken file's name is in the directory: durable before the cut destroys the bytes
        store._fs.fsync_dir(str(path.parent))
        rep.broken_files.append(broken.name)
    store._fs.truncate(str(path), d.offset)  # fsyncs: the cut is durable before new appends
    rep.truncated_bytes += torn
    cut = f" (torn tail cut, with {valid} records whose checksums are good)" if valid else ""
    rep.defects.append(text + (cut or " (torn tail cut)"))
    if valid and beyond is None:
        # within the tear bound: one unacknowledged write's later pages, never acknowledged
        log.warning("cut a torn tail holding %d good records after a lost page: %s", valid, text)
    log.warning("cut a torn tail of %d bytes: %s", torn, text)
    return d.offset
