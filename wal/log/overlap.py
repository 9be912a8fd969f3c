"""A later segment that starts inside a compacted segment's range: the one rule.

A compacted segment's header fixes its range, ``first..last`` (:mod:`wal.log.record`). When
the next segment starts at or before that ``last``, two things can be true, and only one rule
tells them apart; recovery (every open), ``verify`` and ``repair`` all ask
``overlap_problem``:

* **a copy**: every record of the later segment is in the earlier one (the same LSN, the same
  bytes, so the same record checksum and the same content), and the later one claims no LSN
  past the earlier's range. It holds nothing the log does not hold already (what a compaction
  that merged segments leaves when it dies before removing the later one). A writing open
  removes it; a read-only open, ``verify`` and ``repair`` skip it.
* **a header that lies**: anything else (a record of the later segment the earlier lacks or
  holds differently, a line that cannot be compared, a later header claiming more). The
  earlier header claims LSNs its segment does not hold, and the later segment's records exist
  nowhere else. An open refuses the log (``WALCorruptionError`` naming the earlier segment's
  header: its claim, and what the records hold); ``verify`` reports it; ``repair`` corrects the
  header to what the records hold (``last`` up to the LSN before the later segment) and
  removes no segment.
"""

from __future__ import annotations

import os
from pathlib import Path

from wal.log.filescan import pread_all, scan_file
from wal.log.record import FORMAT_VERSION, KIND_SEGMENT
from wal.log.segment import Defect, data_end, open_read
from wal.log.validate import record_lsn

__all__ = ["overlap_problem"]


def _span(lsns: list[int]) -> str:
    if len(lsns) == 1:
        return f"LSN {lsns[0]}"
    if lsns == list(range(lsns[0], lsns[0] + len(lsns))):
        return f"LSNs {lsns[0]}..{lsns[-1]}"
    return f"{len(lsns)} LSNs from {lsns[0]} to {lsns[-1]}"


def overlap_problem(earlier: Path, claimed: int, later: Path, later_first: int) -> str | None:
    """None when segment ``later`` (named for LSN ``later_first``), which starts inside the
    range ``..claimed`` that the compacted segment ``earlier``'s header claims, is a copy of
    records ``earlier`` holds (see the module's rule); else the defect of ``earlier``'s header,
    in words: its claim, what its records hold, and what ``later`` holds that it does not.

    Reads both files a chunk at a time (``FileNotFoundError`` propagates: a writer's
    compaction removed one); never through a symlink.
    """
    fd = open_read(earlier)
    try:
        fd_later = open_read(later)
    except BaseException:
        os.close(fd)
        raise
    try:
        return _judge(earlier, fd, claimed, later, fd_later, later_first)
    finally:
        os.close(fd_later)
        os.close(fd)


def _judge(
    earlier: Path, fd: int, claimed: int, later: Path, fd_later: int, later_first: int
) -> str | None:
    held: dict[int, tuple[int, int]] = {}  # LSN -> (offset, length) of the earlier's record
    top: int | None = None  # the highest LSN among the earlier segment's records
    for item in scan_file(earlier, fd, os.fstat(fd).st_size):
        if isinstance(item, Defect) or item.record.get("t") == KIND_SEGMENT:
            continue
        lsn = record_lsn(item.record)
        if lsn is not None:
            held[lsn] = (item.offset, item.length)
            top = lsn if top is None else max(top, lsn)

    size = os.fstat(fd_later).st_size
    zeros_from: int | None = None  # where the later segment's zero rest starts
    header_seen = False
    header_ok = False
    later_claim: int | None = None
    missing: list[int] = []
    differ: list[int] = []
    unreadable = 0
    for item in scan_file(later, fd_later, size):
        if isinstance(item, Defect):
            if zeros_from is None:
                zeros_from = data_end(fd_later, size)
            if zeros_from <= item.offset < size:
                break  # a preallocated segment's unused rest
            unreadable += 1
            continue
        rec = item.record
        if not header_seen:
            header_seen = True
            if rec.get("t") == KIND_SEGMENT:
                last = rec.get("last")
                header_ok = (
                    rec.get("first") == later_first
                    and rec.get("version") == FORMAT_VERSION
                    and (last is None or type(last) is int)
                )
                later_claim = last if type(last) is int else None
                continue
        lsn = record_lsn(rec)
        if lsn is None:
            unreadable += 1
            continue
        if lsn not in held:
            missing.append(lsn)
        else:
            off, n = held[lsn]  # the same bytes? (read again: both are verified lines)
            if n != item.length or pread_all(fd, n, off) != pread_all(fd_later, n, item.offset):
                differ.append(lsn)
    copy = header_ok and not (missing or differ or unreadable)
    if copy and (later_claim is None or later_claim <= claimed):
        return None  # a copy: every record of it is in the earlier segment
    holds = f"its records end at LSN {top}" if top is not None else "it holds no record"
    what: list[str] = []
    if missing:
        what.append(f"{_span(missing)}, which this segment does not hold")
    if differ:
        what.append(f"{_span(differ)} written differently from this segment's")
    if unreadable:
        what.append(f"{unreadable} line(s) that cannot be compared with this segment's")
    if not header_ok:
        what.append("no valid header of its own")
    elif later_claim is not None and later_claim > claimed:
        what.append(f"a header claiming LSNs up to {later_claim}")
    return (
        f"the header says last={claimed}, but {holds}, and {later.name}, which starts at "
        f"LSN {later_first} inside that range, holds {'; '.join(what) or 'nothing'}: the "
        "header claims LSNs this segment does not hold (`atb wal repair` corrects it to "
        f"last={later_first - 1}, what the records hold; no segment is removed)"
    )
