"""A segment file judged in bounded memory: what recovery, ``verify``, ``repair`` and the
overlap rule read, a piece at a time.

A segment file can be anything: made huge (``truncate -s 3G`` on a segment), a planted file
of gigabytes of zeros under a segment's name, one line of a gigabyte. No reader of the log
holds a whole file in memory, nor a whole line longer than ``LINE_CAP`` (8 MiB) unless its
checksum verifies (a record a writer wrote, at most ``MAX_LINE``): memory holds a chunk
(1 MiB) and such a record. Holes of a sparse file (zeros never written) are skipped with
``SEEK_DATA``, never read.

Every line is judged exactly as the functions over bytes of :mod:`wal.log.segment` and
:mod:`wal.log.record` judge it when the whole file is in memory (the same defect, at the same
line and byte offset, in the same words): a short line (or tail) *is* handed to them; only a
longer one is judged here in pieces. ``tests/log/test_filescan.py`` checks both ways agree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import xxhash

from wal.log.record import (
    BAD_CHECKSUM,
    NOT_A_RECORD,
    NOT_HEX,
    ZERO_FILLED,
    RecordError,
    decode_line,
)
from wal.log.segment import (
    INCOMPLETE,
    LINE_CAP,
    PAGE,
    ZERO_TAIL,
    Defect,
    Line,
    LongLine,
    Tail,
    classify_tail,
    data_end,
    find_newline,
    looks_like_record,
    read_chunks,
    regions,
    scan,
)

__all__ = [
    "CHUNK",
    "GUESS_BYTES",
    "MAX_LINE",
    "classify_tail_at",
    "judge_long",
    "line_head",
    "looks_like_record_at",
    "pread_all",
    "rstrip_end",
    "scan_file",
    "zeros_only",
]

CHUNK = 1 << 20  # bytes read at a time
# The longest line a writer writes: an entry of max_entry_bytes (at most 1 GiB, see
# StorageOptions) in its record's envelope. A longer line is never read whole, even with a
# checksum that verifies: no writer wrote it.
MAX_LINE = (1 << 30) + (1 << 20)
GUESS_BYTES = 64 << 10  # of a bad line, what is searched for its LSN and entry id
_HEX = frozenset(b"0123456789abcdef")
_ZERO_RUN = re.compile(rb"\x00+")
_ZEROS = bytes(CHUNK)


def pread_all(fd: int, n: int, at: int) -> bytes:
    """``n`` bytes from ``at`` (fewer only at the end of the file), whatever one read returns."""
    pieces = []
    while n > 0:
        piece = os.pread(fd, n, at)
        if not piece:
            break
        pieces.append(piece)
        n -= len(piece)
        at += len(piece)
    return b"".join(pieces)


def rstrip_end(fd: int, start: int, stop: int) -> int:
    """Where the file's bytes ``start..stop`` end once their trailing zeros are stripped
    (``bytes.rstrip(b"\\x00")``), found backwards from ``stop``, holes unread."""
    return max(start, data_end(fd, stop))


def zeros_only(fd: int, start: int, stop: int) -> bool:
    """True when every byte from ``start`` to ``stop`` is a zero (holes are, unread)."""
    for _, piece in regions(fd, start, stop, CHUNK):
        if isinstance(piece, bytes) and piece.count(0) != len(piece):
            return False
    return True


def _checksum_of(fd: int, start: int, stop: int) -> int:
    """xxh3-64 of the bytes from ``start`` to ``stop``, read a piece at a time."""
    h = xxhash.xxh3_64()
    for _, piece in regions(fd, start, stop, CHUNK):
        if isinstance(piece, int):
            while piece > 0:
                n = min(piece, len(_ZEROS))
                h.update(_ZEROS[:n] if n < len(_ZEROS) else _ZEROS)
                piece -= n
        else:
            h.update(piece)
    return h.intdigest()


def _framing(fd: int, start: int, body: int) -> tuple[str | None, int]:
    """A line of ``body`` bytes (without its newline) at ``start``: what is wrong with its
    framing (``decode_line``'s words, None: framed as a record) and its checksum field."""
    head = os.pread(fd, 17, start)
    if body < 19 or head[16:17] != b" ":
        return (ZERO_FILLED if body and zeros_only(fd, start, start + body) else NOT_A_RECORD), 0
    if not _HEX.issuperset(head[:16]):
        return NOT_HEX, 0
    return None, int(head[:16], 16)


def judge_long(path: Path, fd: int, line_no: int, line: LongLine) -> Line | Defect:
    """A line too long to gather (``read_chunks``'s ``LongLine``), judged from the file as
    ``scan`` judges it in memory: the same ``Line`` or ``Defect``, the same words. It is read
    whole only when its checksum verifies and it is no longer than ``MAX_LINE``."""
    start = line.offset
    if not line.complete:  # the end of the file, no newline
        what = ZERO_TAIL if zeros_only(fd, start, start + line.length) else INCOMPLETE
        return Defect(path, line_no, start, what)
    body = line.length - 1
    problem, want = _framing(fd, start, body)
    if problem is None and _checksum_of(fd, start + 17, start + body) != want:
        problem = BAD_CHECKSUM
    if problem is None and line.length > MAX_LINE:
        problem = (
            f"a line of {line.length} bytes whose checksum verifies: longer than any record "
            f"a writer writes ({MAX_LINE} bytes)"
        )
    if problem is not None:
        return Defect(path, line_no, start, problem)
    try:
        rec = decode_line(pread_all(fd, body, start))
    except RecordError as exc:
        return Defect(path, line_no, start, exc.problem)
    return Line(start, line.length, line_no, rec)


def scan_file(
    path: Path,
    fd: int,
    stop: int,
    start: int = 0,
    line_no: int = 0,
    chunk: int = CHUNK,
    cap: int = LINE_CAP,
) -> Iterator[Line | Defect]:
    """``scan`` over an open segment file from ``start`` to ``stop`` (read as if it ended
    there): every line as a ``Line`` or a ``Defect``, a chunk in memory at a time."""
    for piece in read_chunks(fd, chunk, start, stop, cap):
        if isinstance(piece, LongLine):
            line_no += 1
            yield judge_long(path, fd, line_no, piece)
            continue
        data, end, base = piece
        for item in scan(path, data, 0, line_no, base, stop=end):
            line_no = item.line
            yield item


def line_head(fd: int, offset: int, stop: int, limit: int = GUESS_BYTES) -> bytes:
    """The bytes of the line at ``offset`` up to its newline (or ``stop``), at most ``limit``."""
    n = min(4096, limit, stop - offset)
    data = os.pread(fd, max(n, 0), offset)
    if b"\n" not in data and len(data) < min(limit, stop - offset):
        data = pread_all(fd, min(limit, stop - offset), offset)
    nl = data.find(b"\n")
    return data if nl == -1 else data[:nl]


def looks_like_record_at(fd: int, offset: int, size: int, cap: int = LINE_CAP) -> bool:
    """``looks_like_record`` of the file's bytes from ``offset``: its first line complete and
    framed like a record although it does not verify (a line over ``cap`` bytes: judged from
    its first bytes and its last, never read whole)."""
    nl = find_newline(fd, offset, size)
    if nl == -1:
        return False
    if nl + 1 - offset <= cap:
        return looks_like_record(pread_all(fd, nl + 1 - offset, offset))
    head = os.pread(fd, 23, offset)
    return (
        head[16:17] == b" "
        and head[17:23] == b'{"t":"'
        and os.pread(fd, 1, nl - 1) == b"}"
        and _HEX.issuperset(head[:16])
    )


def _lost_page_in(fd: int, pos: int, end: int, size: int) -> bool:
    """``lost_page_at`` over the file: a zero run in the line ``pos..end`` that ends on a page
    boundary, or at the end of the file (``size``)."""

    def lost(r: int) -> bool:
        return r % PAGE == 0 or r == size

    running = False  # the byte before this piece was a zero of a run
    for at, piece in regions(fd, pos, end, CHUNK):
        if isinstance(piece, int):
            running = True  # a hole: zeros
            continue
        if running and piece[0] != 0 and lost(at):
            return True
        for m in _ZERO_RUN.finditer(piece):
            if m.end() < len(piece) and lost(at + m.end()):
                return True
        running = piece[-1] == 0
    return running and lost(end)


def _checksum_ok(data: bytes, start: int, nl: int) -> bool:
    """The line ``data[start:nl]`` verifies (``_verified_ends``'s check)."""
    line = data[start:nl]
    return (
        len(line) >= 19
        and line[16:17] == b" "
        and _HEX.issuperset(line[:16])
        and int(line[:16], 16) == xxhash.xxh3_64_intdigest(line[17:])
    )


def classify_tail_at(
    fd: int, offset: int, size: int, bound: int | None, cap: int = LINE_CAP
) -> Tail:
    """``classify_tail`` of the file's bytes from ``offset`` (its first bad line) to its end
    (``size``): bytes up to ``cap`` are read and handed to it; a longer tail is judged here a
    piece at a time, by the same rule."""
    if size - offset <= cap:
        return classify_tail(pread_all(fd, size - offset, offset), offset, bound)
    nl = find_newline(fd, offset, size)
    hole = _lost_page_in(fd, offset, size if nl == -1 else nl, size)
    valid = 0
    last_end = 0  # file offset after the last line that verifies
    if nl != -1:
        for piece in read_chunks(fd, CHUNK, nl + 1, size, cap):
            if isinstance(piece, LongLine):
                if piece.complete:
                    body = piece.length - 1
                    bad, want = _framing(fd, piece.offset, body)
                    if (
                        bad is None
                        and _checksum_of(fd, piece.offset + 17, piece.offset + body) == want
                    ):
                        valid += 1
                        last_end = piece.offset + piece.length
                continue
            data, end, base = piece
            start = 0
            while start < end:
                line_end = data.find(b"\n", start, end)
                if line_end == -1:
                    break  # the end of the file without a newline: not a record
                if _checksum_ok(data, start, line_end):
                    valid += 1
                    last_end = base + line_end + 1
                start = line_end + 1
    if not valid:
        return Tail(True, hole, 0, 0)
    span = last_end - offset
    torn = hole and (bound is None or span <= bound)
    return Tail(torn, hole, valid, span)
