"""``verify_log``: a read-only scan of every segment that lists every defect.

Where opening a log stops at the first defect it may not repair, ``verify_log`` reads every
line of every segment and reports each defect with its file, line (1-based) and byte offset:
bad checksums, torn lines, zero-filled regions, missing or wrong headers, LSNs out of order,
missing segments (an LSN gap between two files), malformed records, entries whose content
checksum does not match and entry ids that appear twice. It applies the same rules as
recovery (see ``WALStorage._recover``), so a log without defects opens in any mode.

It reads each segment a chunk at a time (:mod:`wal.log.filescan`, the same judgement as over
the whole file's bytes) and keeps a few fields of each good record, never a file: a segment
made huge costs it no memory. Unfinished backups a killed ``repair`` left beside the log
are named in its notes (:mod:`wal.log.backups`).

It never writes, truncates, renames or locks anything: it is safe while a trading process
appends to the log. The last line of the last segment may then be a record in flight; it is
reported as a torn tail (``torn_tail=True``), which is also what a crash leaves behind and
what a normal open cuts off (keeping the bytes in a ``.broken`` file).

>>> import tempfile
>>> from wal import WALEntry, WALStorage
>>> d = tempfile.mkdtemp()
>>> with WALStorage(d) as log:
...     _ = log.append(WALEntry.create("log_trade", kwargs={"qty": 1}))
>>> report = verify_log(d)
>>> report.ok, report.entries, report.defects
(True, 1, [])
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wal.errors import WALCorruptionError, WALUnsafeFileError, printable
from wal.log.backups import partial_backup_notes
from wal.log.fileops import file_kind
from wal.log.filescan import classify_tail_at, line_head, looks_like_record_at, scan_file
from wal.log.lock import LOCK_NAME, lock_file_problem
from wal.log.manifest import MANIFEST_NAME, MANIFEST_TMP, read_manifest
from wal.log.overlap import overlap_problem
from wal.log.record import FORMAT_VERSION, KIND_ENTRY, KIND_SEGMENT
from wal.log.segment import (
    BROKEN_SUFFIX,
    PREPARED_NAME,
    SUSPECT_SUFFIX,
    TEAR_BOUND,
    TMP_SUFFIX,
    Defect,
    Line,
    data_end,
    list_segments,
    open_read,
    segment_header,
    tear_bound,
)
from wal.log.validate import CONTENT_MISMATCH, record_lsn, record_problem

__all__ = ["VerifyDefect", "VerifyReport", "record_problem", "verify_log"]


@dataclass(frozen=True, slots=True)
class VerifyDefect:
    """One defect: where it is and what is wrong.

    ``line`` and ``offset`` are 0 for a defect of the whole file (an LSN gap before it).
    ``torn_tail``: the defect is the end of the last segment with no good record after it,
    which a crash can leave (a normal open cuts it). Anything else is real corruption that
    a normal open refuses. ``lsn`` and ``entry_id`` are a best guess read from the raw bytes
    of a bad line (None when they cannot be read), to look the record up in a backup.
    ``verify_only``: a defect only ``verify`` checks (an entry's content checksum, an entry id
    written twice): a normal open accepts the record, decided by the same validator it applies
    (``wal.log.validate.record_problem(rec, content=False)`` passes).
    """

    file: str
    line: int
    offset: int
    problem: str
    torn_tail: bool = False
    lsn: int | None = None
    entry_id: str | None = None
    verify_only: bool = False

    def __str__(self) -> str:
        where = f"line {self.line}, byte offset {self.offset}" if self.line else "whole file"
        tail = " [torn tail: a normal open cuts it]" if self.torn_tail else ""
        if self.verify_only:
            tail = " [only verify checks this: a normal open accepts the record]"
        return printable(f"{self.file}: {where}: {self.problem}{tail}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "offset": self.offset,
            "problem": self.problem,
            "torn_tail": self.torn_tail,
            "lsn": self.lsn,
            "entry_id": self.entry_id,
            "verify_only": self.verify_only,
        }


@dataclass
class VerifyReport:
    """What ``verify_log`` found. ``ok``: no defect at all."""

    directory: str
    segments: int = 0
    records: int = 0  # good records (entries and status records), headers not counted
    entries: int = 0
    bytes: int = 0
    first_lsn: int | None = None
    last_lsn: int | None = None
    defects: list[VerifyDefect] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things a normal open tidies up itself

    @property
    def ok(self) -> bool:
        return not self.defects

    @property
    def opens(self) -> bool:
        """True when a normal (``tolerate_tail``) open accepts the log: at most a torn tail
        (which it cuts) and defects only ``verify`` checks."""
        return all(d.torn_tail or d.verify_only for d in self.defects)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "ok": self.ok,
            "opens": self.opens,
            "segments": self.segments,
            "records": self.records,
            "entries": self.entries,
            "bytes": self.bytes,
            "first_lsn": self.first_lsn,
            "last_lsn": self.last_lsn,
            "defects": [d.to_dict() for d in self.defects],
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- the scan

_LSN_RE = re.compile(rb'"lsn":(\d{1,19})')
_ID_RE = re.compile(rb'"entry_id":"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"')


def _guess(raw: bytes) -> tuple[int | None, str | None]:
    """LSN and entry id of a damaged line, read from its bytes when they are still legible."""
    m = _LSN_RE.search(raw)
    i = _ID_RE.search(raw)
    return (int(m.group(1)) if m else None), (i.group(1).decode() if i else None)


# what ``SegmentScan.good`` keeps of each record: enough to chain LSNs, count entries, follow
# statuses and name a dropped one (never its payload: a log's records are not held in memory)
_KEPT = ("t", "lsn", "entry_id", "status", "of")


@dataclass
class SegmentScan:
    """One segment as ``scan_log`` read it (used by ``verify_log`` and ``repair_log``).

    It holds where each good record is and a few of its fields, never the file's bytes:
    ``repair`` reads the records it keeps from the file again, a piece at a time.
    """

    first: int
    path: Path
    size: int  # the file's size when it was read
    header: dict[str, Any] | None = None
    compacted: bool = False  # the header declares a fixed range first..end
    end: int = 0  # last LSN it covers (first - 1 when empty)
    # usable records, in increasing LSN order (each ``record``: only the fields of _KEPT):
    # every record a normal open indexes, those only verify flags included
    good: list[Line] = field(default_factory=list)
    # offsets of the records in ``good`` that only verify flags (``verify_only`` defects: an
    # entry's content checksum, an entry id written twice): the open accepts and replays
    # them, so repair keeps them (dropping one could lose an acknowledged entry)
    flagged: set[int] = field(default_factory=set)
    defects: list[VerifyDefect] = field(default_factory=list)
    header_ok: bool = False  # a header that is the first line and matches the name
    data_end: int | None = None  # where the zeros of a preallocated last segment start


@dataclass
class LogScan:
    segments: list[SegmentScan] = field(default_factory=list)  # the LSN chain, in order
    leftovers: list[Path] = field(default_factory=list)  # interrupted-compaction leftovers
    notes: list[str] = field(default_factory=list)
    manifest_first: int | None = None  # the first LSN the manifest owes (None: no manifest)
    missing_front: VerifyDefect | None = None  # the manifest owes LSNs no segment holds
    # segments before the manifest's first LSN hold entries not completed: never removed
    manifest_behind: VerifyDefect | None = None
    manifest_bad: VerifyDefect | None = None  # MANIFEST does not read back: open refuses
    unsafe: list[Path] = field(default_factory=list)  # not regular files under the log's names
    unsafe_defects: list[VerifyDefect] = field(default_factory=list)


def scan_log(directory: Path) -> LogScan:
    """Read every segment and classify every line, like recovery but without changing anything."""
    if not directory.is_dir():
        raise WALCorruptionError(directory, 0, 0, "no log directory here")
    out = LogScan()
    for p in sorted(directory.iterdir()):
        if p.name in (MANIFEST_TMP, PREPARED_NAME) or p.name.endswith(TMP_SUFFIX):
            what = _not_regular(p)
            if what is not None:  # an open refuses to remove it (never follows or rmdirs)
                out.unsafe.append(p)
                out.unsafe_defects.append(
                    VerifyDefect(
                        p.name,
                        0,
                        0,
                        f"{what} where the log keeps a temporary file: an open refuses the log; "
                        "`atb wal repair` moves it into its backup",
                    )
                )
                continue
        if p.name.endswith(TMP_SUFFIX):
            out.notes.append(f"{p.name}: unfinished compaction output; the next open removes it")
        elif BROKEN_SUFFIX in p.name:
            out.notes.append(f"{p.name}: bytes cut from a torn tail earlier, kept for inspection")
        elif SUSPECT_SUFFIX in p.name:
            out.notes.append(
                f"{p.name}: a complete record with a bad checksum cut from the end of the log "
                "earlier: an acknowledged entry may have been damaged; check, then delete it"
            )
    out.notes.extend(partial_backup_notes(directory))  # beside the log: a killed repair's
    lock_problem = lock_file_problem(directory)
    if lock_problem is not None:  # every writer refuses the log: a defect, that repair mends
        out.unsafe.append(directory / LOCK_NAME)
        out.unsafe_defects.append(VerifyDefect(LOCK_NAME, 0, 0, lock_problem))
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode != 0o700:
        out.notes.append(f"directory mode is {mode:o}, expected 700 (the next open fixes it)")
    segments = list_segments(directory)
    try:
        owed = read_manifest(directory)
    except (WALCorruptionError, WALUnsafeFileError) as exc:
        # an open refuses the log for it: a defect that repair mends (never only a note)
        problem = exc.problem if isinstance(exc, WALCorruptionError) else exc.message
        if _not_regular(directory / MANIFEST_NAME) is not None:
            out.unsafe.append(directory / MANIFEST_NAME)
        out.manifest_bad = VerifyDefect(
            MANIFEST_NAME,
            0,
            0,
            f"{problem}: an open refuses the log; `atb wal repair` writes a new manifest "
            "naming the first segment present",
        )
        owed = None
    out.manifest_first = owed
    front: list[tuple[int, Path]] = []
    if owed is not None:
        front = [(f, p) for f, p in segments if f < owed]
        rest = segments[len(front) :]
        if not rest or rest[0][0] != owed:
            starts = f"the first segment starts at LSN {rest[0][0]}" if rest else "no segment"
            out.missing_front = VerifyDefect(
                MANIFEST_NAME,
                0,
                0,
                f"the manifest says the log starts at LSN {owed} but {starts}: the first "
                "segment was deleted (restore it, or `atb wal repair` accepts the loss)",
            )
    seen_ids: set[bytes] = set()
    prev: SegmentScan | None = None
    for i, (first, path) in enumerate(segments):
        last_segment = i == len(segments) - 1
        if prev is not None and prev.compacted and first <= prev.end:
            # it starts inside the range prev's header claims: the one rule an open applies
            try:
                lie = overlap_problem(prev.path, prev.end, path, first)
            except FileNotFoundError:  # a running writer's compaction removed one meanwhile
                out.notes.append(f"{path.name}: removed while it was being read (a compaction)")
                continue
            if lie is None:
                out.leftovers.append(path)
                out.notes.append(
                    f"{path.name}: a copy of records {prev.path.name} holds (every record of "
                    "it is there, byte for byte); the next open removes it"
                )
                continue
            prev.header_ok = False
            prev.defects.append(VerifyDefect(prev.path.name, 1, 0, lie))
            prev.end = first - 1  # what repair corrects the header to: its records decide
            # its own records in this segment's range cannot stay there: this one's win
            for line in [x for x in prev.good if x.record["lsn"] >= first]:
                prev.good.remove(line)
                rec = line.record
                if rec["t"] == KIND_ENTRY and line.offset not in prev.flagged:
                    seen_ids.discard(uuid.UUID(rec["entry_id"]).bytes)
                prev.flagged.discard(line.offset)
                prev.defects.append(
                    VerifyDefect(
                        prev.path.name,
                        line.line,
                        line.offset,
                        f"LSN {rec['lsn']} lies in the next segment's range ({path.name} "
                        f"starts at LSN {first})",
                        lsn=rec["lsn"],
                        entry_id=rec.get("entry_id"),
                    )
                )
            prev.defects.sort(key=lambda x: (x.line != 0, x.line))  # in line order
        try:
            fd = open_read(path)  # never through a symlink
        except FileNotFoundError:  # a running writer's compaction removed it meanwhile
            out.notes.append(f"{path.name}: removed while it was being read (a compaction)")
            continue
        except WALUnsafeFileError as exc:
            out.unsafe.append(path)
            bad = SegmentScan(first, path, 0, end=first - 1)
            bad.defects.append(VerifyDefect(path.name, 0, 0, exc.message))
            out.segments.append(bad)
            continue
        try:
            fmode = stat.S_IMODE(os.fstat(fd).st_mode)
            owed_here = first == out.manifest_first
            seg = _scan_segment(path, first, fd, last_segment, prev, seen_ids, owed_here)
        finally:
            os.close(fd)
        if fmode & 0o077:
            out.notes.append(f"{path.name}: mode {fmode:o}; log files should be 600")
        if seg.header is None and not seg.defects:
            out.notes.append(f"{path.name}: empty last segment; the next open removes it")
        out.segments.append(seg)
        prev = seg
    if front:
        _settle_front(out, owed, len(front))
    return out


def _slim(rec: dict[str, Any]) -> dict[str, Any]:
    """The fields of a good record that ``SegmentScan.good`` keeps (``_KEPT``)."""
    return {k: rec[k] for k in _KEPT if k in rec}


def _not_regular(path: Path) -> str | None:
    """What ``path`` is when it exists and is not a regular file ("a symlink", ...)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    return file_kind(st.st_mode)


def _settle_front(out: LogScan, owed: int | None, n: int) -> None:
    """The segments before the manifest's first LSN (the first ``n`` scanned), as recovery
    sees them: an interrupted compaction's leftover when every entry in them is COMPLETED
    (the next open removes it), else a manifest that disagrees with the segments present."""
    front = out.segments[:n]
    final = _final_statuses(out.segments)
    unfinished = [
        line.record["lsn"]
        for seg in front
        for line in seg.good
        if line.record["t"] == KIND_ENTRY and final.get(line.record["lsn"]) != "completed"
    ]
    if not unfinished:
        del out.segments[:n]
        for seg in front:
            out.leftovers.append(seg.path)
            out.notes.append(
                f"{seg.path.name}: wholly before the manifest's first LSN {owed} (an interrupted "
                "compaction); the next open removes it"
            )
        return
    names = ", ".join(seg.path.name for seg in front)
    out.manifest_behind = VerifyDefect(
        MANIFEST_NAME,
        0,
        0,
        f"the manifest says the log starts at LSN {owed}, but {names} before it hold(s) "
        f"{len(unfinished)} entries not completed (PENDING or FAILED, e.g. LSN "
        f"{unfinished[0]}): the manifest disagrees with the segments present; an open refuses "
        f"the log (it never deletes them); `atb wal repair` moves the manifest back to LSN "
        f"{front[0].first}",
        lsn=unfinished[0],
    )


def _final_statuses(segments: list[SegmentScan]) -> dict[int, str]:
    """Each entry's newest status (by LSN), from its record and the status records after."""
    final: dict[int, str] = {}
    for seg in segments:
        for line in seg.good:
            rec = line.record
            if rec["t"] == KIND_ENTRY:
                final[rec["lsn"]] = rec.get("status", "pending")
            elif rec["of"] in final:
                final[rec["of"]] = rec["status"]
    return final


def _lines(
    path: Path, fd: int, size: int, last_segment: bool, seg: SegmentScan
) -> Iterator[Line | Defect]:
    """The lines of a segment file, a chunk in memory at a time (:mod:`wal.log.filescan`).

    The last segment is read up to its data end (found backwards from the end of the file,
    as recovery does): zeros from there to the end, after a whole line, are the preallocated
    rest when the segment has a header (``data_end`` set, nothing more read) and are read
    and judged as lines when it has none. Zeros that end a line are part of that line.
    """
    if not last_segment:
        yield from scan_file(path, fd, size)
        return
    stop = data_end(fd, size)
    line_no = 0
    for item in scan_file(path, fd, stop):
        line_no = item.line
        yield item
    if stop == size or (stop > 0 and os.pread(fd, 1, stop - 1) != b"\n"):
        return  # nothing after the last line, or zeros that belong to it (judged above)
    if seg.header is not None:
        seg.data_end = stop  # the preallocated rest: the normal end of the log
        return
    yield from scan_file(path, fd, size, stop, line_no)


def _scan_segment(
    path: Path,
    first: int,
    fd: int,
    last_segment: bool,
    prev: SegmentScan | None,
    seen_ids: set[bytes],
    owed: bool = False,
) -> SegmentScan:
    size = os.fstat(fd).st_size
    seg = SegmentScan(first, path, size, end=first - 1)
    name = path.name

    def defect(
        line: int, offset: int, problem: str, *, torn: bool = False, only: bool = False
    ) -> None:
        lsn, eid = (None, None)
        if line:
            lsn, eid = _guess(line_head(fd, offset, size))
        seg.defects.append(VerifyDefect(name, line, offset, problem, torn, lsn, eid, only))

    if prev is not None and first != prev.end + 1:
        defect(
            0,
            0,
            f"LSN gap: {prev.path.name} ends at LSN {prev.end}, this segment starts at {first} "
            "(a segment is missing or was reordered)",
        )
    expected = first
    bad_lines = 0  # unreadable lines since the last good record: each may hide one LSN
    past: list[tuple[int, int, int]] = []  # (line, offset, LSN) of records past the header's last
    claimed = 0  # a compacted header's last
    for item in _lines(path, fd, size, last_segment, seg):
        if isinstance(item, Defect):
            torn = (last_segment and seg.header is not None) or (
                last_segment and size <= len(segment_header(first, None))
            )
            what = item.problem
            if torn:  # the rule recovery applies (wal.log.segment.classify_tail)
                bound = tear_bound(seg.header)[0] if seg.header is not None else TEAR_BOUND
                tail = classify_tail_at(fd, item.offset, size, bound)
                torn = tail.torn
                if torn and not tail.hole and looks_like_record_at(fd, item.offset, size):
                    what += (
                        " (a complete record that does not verify: a damaged acknowledged "
                        "entry, not what a crash leaves; a normal open cuts it into a .suspect "
                        "file and `atb wal status` warns while that file is there)"
                    )
                if tail.hole and not torn:
                    what += (
                        f" (a hole: {tail.valid} records with good checksums follow it, "
                        f"reaching {tail.span} bytes past it, more than one unacknowledged "
                        f"write can span ({bound} bytes): acknowledged entries; a normal open "
                        "cuts them into a .suspect file, `atb wal repair` keeps them)"
                    )
            defect(item.line, item.offset, what, torn=torn)
            if torn:
                break  # the rest of the file is the torn tail itself
            bad_lines += 1
            continue
        rec = item.record
        kind = rec["t"]
        if seg.header is None:
            if kind != KIND_SEGMENT:
                if not any(x.line == 1 for x in seg.defects):  # else: reported, unreadable
                    defect(item.line, item.offset, "segment has no header record")
                seg.header = {"first": first, "last": None}
            else:
                seg.header = rec
                seg.header_ok = item.line == 1
                if rec.get("first") != first:
                    seg.header_ok = False
                    defect(
                        item.line,
                        item.offset,
                        f"header says first LSN {rec.get('first')}, the file name says {first}",
                    )
                if rec.get("version") != FORMAT_VERSION:
                    seg.header_ok = False
                    defect(item.line, item.offset, f"unknown format version {rec.get('version')!r}")
                last = rec.get("last")
                if last is not None:
                    if type(last) is int and last >= first - 1:  # as recovery: not a bool
                        seg.compacted = True
                        seg.end = claimed = last
                    else:
                        seg.header_ok = False
                        defect(item.line, item.offset, f"header has a bad 'last': {last!r}")
                bad_tear = tear_bound(rec)[1]
                if bad_tear is not None:
                    seg.header_ok = False
                    defect(item.line, item.offset, bad_tear)
                continue
        if kind == KIND_SEGMENT:
            defect(item.line, item.offset, "a second segment header")
            continue
        lsn = record_lsn(rec)
        if lsn is None:
            defect(item.line, item.offset, "record has no LSN")
            continue
        ok = expected <= lsn <= seg.end if seg.compacted else lsn == expected
        if not ok and not seg.compacted and expected < lsn <= expected + bad_lines:
            ok = True  # the LSNs of the unreadable lines just reported: not a second defect
        bad_lines = 0
        if not ok and seg.compacted and lsn > seg.end and lsn >= expected:
            # in order, past the range the header claims: the header is wrong, not the
            # record (the open refuses, naming both; repair extends the header over it)
            past.append((item.line, item.offset, lsn))
            seg.end = lsn
            ok = True
        if not ok:
            defect(item.line, item.offset, f"LSN {lsn} out of order (expected {expected})")
            if lsn < expected or (seg.compacted and lsn > seg.end):
                continue  # a duplicate, or beyond the declared range: never usable
        problem = record_problem(rec)  # the open's check (content=False), then the content
        only = problem == CONTENT_MISMATCH  # only verify checks it: the open accepts it
        if problem is None and kind == KIND_ENTRY:
            eid = uuid.UUID(rec["entry_id"]).bytes
            if eid in seen_ids:  # the open indexes it (it keeps no set of every id)
                problem = f"entry id {rec['entry_id']} appears a second time in the log"
                only = True
            seen_ids.add(eid)
        expected = lsn + 1
        if not seg.compacted:
            seg.end = lsn
        if problem is not None:
            defect(item.line, item.offset, problem, only=only)
            if not only:
                continue
            seg.flagged.add(item.offset)  # the open indexes and replays it: a record kept
        seg.good.append(Line(item.offset, item.length, item.line, _slim(rec)))
    if past:
        line_no, offset, lsn = past[0]
        more = f" (and {len(past) - 1} more, up to LSN {past[-1][2]})" if len(past) > 1 else ""
        defect(
            line_no,
            offset,
            f"the header says last={claimed}, but the segment holds LSN {lsn}{more}: records "
            "past the range its header claims; an open refuses the log (`atb wal repair` "
            "extends the header over its records)",
        )
        # in line order with the others
        seg.defects.sort(key=lambda x: (x.line != 0, x.line))
    if seg.header is None and not (
        last_segment
        and not owed
        and size <= len(segment_header(first, None))
        and all(d.torn_tail for d in seg.defects)
    ):
        # recovery removes a headerless *last* segment (a rotation torn before its header was
        # durable); anywhere else an empty or headerless segment means lost records
        defect(0, 0, "segment has no verifiable header record")
    return seg


def verify_log(directory: str | os.PathLike[str]) -> VerifyReport:
    """Check every record of the log in ``directory``; never modify anything.

    Raises ``WALCorruptionError`` only when there is no log directory at all.
    """
    d = Path(directory)
    result = scan_log(d)
    rep = VerifyReport(directory=str(d), notes=list(result.notes))
    if result.missing_front is not None:
        rep.defects.append(result.missing_front)
    if result.manifest_behind is not None:
        rep.defects.append(result.manifest_behind)
    if result.manifest_bad is not None:
        rep.defects.append(result.manifest_bad)
    rep.defects.extend(result.unsafe_defects)
    for seg in result.segments:
        rep.segments += 1
        rep.bytes += seg.data_end if seg.data_end is not None else seg.size
        rep.defects.extend(seg.defects)
        good = [x for x in seg.good if x.offset not in seg.flagged]  # not a defect
        for line in good:
            rep.records += 1
            if line.record["t"] == KIND_ENTRY:
                rep.entries += 1
        if good:
            lsn0 = good[0].record["lsn"]
            if rep.first_lsn is None:
                rep.first_lsn = lsn0
            rep.last_lsn = good[-1].record["lsn"]
    for path in result.leftovers:
        rep.bytes += path.stat().st_size if path.exists() else 0
    return rep
