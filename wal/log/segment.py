"""Segment files: their names, and reading one line by line with every defect located.

A segment is named by the first LSN it holds, zero-padded to 20 digits so that names sort in
LSN order: ``00000000000000000001.wal``. Its first line is a ``segment`` header record (see
:mod:`wal.log.record`). ``*.wal.tmp`` files are unfinished compaction output; ``*.broken`` files
hold bytes that recovery cut from a torn tail, kept for the operator. ``next.wal.prep`` is the
next segment being given its space (see ``StorageOptions.preallocate``): renamed to a segment's
name once its header is durable, removed by the next open if it is left over.

The last segment may end in zeros: its preallocated space. Our writers never write a zero byte
(JSON escapes it), so the first zero byte after a record, with only zeros to the end of the
file, is the end of the log (:func:`zero_rest`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import xxhash

from wal.errors import WALUnsafeFileError
from wal.log.fileops import file_kind, open_regular
from wal.log.record import FORMAT_VERSION, KIND_SEGMENT, RecordError, decode_line, encode_line

__all__ = [
    "BROKEN_SUFFIX",
    "DIR_MODE",
    "FILE_MODE",
    "INCOMPLETE",
    "PAGE",
    "PREPARED_NAME",
    "SUSPECT_SUFFIX",
    "SegmentInfo",
    "TEAR_BOUND",
    "Tail",
    "classify_tail",
    "looks_like_record",
    "segment_header",
    "tear_bound",
    "Defect",
    "LINE_CAP",
    "Line",
    "LongLine",
    "SEGMENT_SUFFIX",
    "TMP_SUFFIX",
    "ZERO_TAIL",
    "check_regular",
    "data_end",
    "find_newline",
    "list_segments",
    "lost_page_at",
    "make_dirs",
    "open_read",
    "read_chunks",
    "read_from",
    "regions",
    "scan",
    "segment_name",
    "valid_record_after",
    "zero_rest",
]

SEGMENT_SUFFIX = ".wal"
TMP_SUFFIX = ".wal.tmp"
BROKEN_SUFFIX = ".broken"
PREPARED_NAME = "next.wal.prep"  # the next segment being preallocated (no LSN yet)
SUSPECT_SUFFIX = ".suspect"  # a cut tail that was a complete line with a bad checksum
PAGE = 4096  # the page size of the page cache: what a power loss loses or keeps as a unit
_NAME = re.compile(r"([0-9]{20})\.wal")  # fullmatch: "$" would pass a trailing newline
_HEXB = frozenset(b"0123456789abcdef")
DIR_MODE = 0o700  # the log directory: owner only (balances and trades)
FILE_MODE = 0o600  # every file of the log: owner read/write only


ZERO_TAIL = "zero-filled tail (no complete record)"  # a last line of zeros, no newline
INCOMPLETE = "incomplete record (no newline at the end)"  # a last line of anything else

# The most bytes the writer ever leaves unsynced (TEAR_BOUND): a torn write can only span this
# much. Each segment's header records the bound it was written under (``"tear"``); a header
# without it (a segment from before) is read with the same bound; ``null``: the writer never
# fsyncs (``fsync="unsafe_never"``), so any tail may be torn.
TEAR_BOUND = 64 * 1024


def segment_header(first: int, last: int | None, tear: int | None = TEAR_BOUND) -> bytes:
    """The framed header line of a segment covering ``first`` (..``last`` when compacted),
    written by a writer that never leaves more than ``tear`` bytes unsynced."""
    return encode_line(
        orjson.dumps(
            {
                "t": KIND_SEGMENT,
                "version": FORMAT_VERSION,
                "first": first,
                "last": last,
                "tear": tear,
            }
        )
    )


def tear_bound(header: dict[str, Any]) -> tuple[int | None, str | None]:
    """The tear bound a segment header records, and what is wrong with it (None: fine)."""
    if "tear" not in header:
        return TEAR_BOUND, None  # a segment from before the bound was recorded
    tear = header["tear"]
    if tear is None or (type(tear) is int and tear >= PAGE):
        return tear, None
    return TEAR_BOUND, f"header has a bad 'tear': {tear!r}"


@dataclass(frozen=True, slots=True)
class Tail:
    """What the bytes from a bad line of the last segment to the end of the file are."""

    torn: bool  # a torn tail: only bytes of the last, unacknowledged write can be here
    hole: bool  # the bad line holds a lost page (a zero run up to a page boundary)
    valid: int  # records with a good checksum after the bad line
    span: int  # bytes from the bad line to the end of the last of them (0: none)


def classify_tail(rest: bytes, offset: int, bound: int | None) -> Tail:
    """Is ``rest`` (a file's bytes from its first bad line, at file offset ``offset``, to its
    end) a torn tail, or corruption? The one rule recovery and ``verify`` apply.

    A crash tears only what was written after the last fsync: the writer's last write, at
    the end of the file, never longer than ``bound`` bytes (:data:`TEAR_BOUND`; a single
    larger record is written alone). So a bad line with no good record after it is torn; a
    lost page with good records after it is torn only if they all end within ``bound``
    bytes of it (a later page of the same write); anything else (a bad record followed by
    good ones, or good ones beyond the bound after a hole) is corruption: acknowledged
    records follow it.
    """
    ends = _verified_ends(rest)
    hole = lost_page_at(rest, 0, offset)
    if not ends:
        return Tail(True, hole, 0, 0)
    span = ends[-1]
    torn = hole and (bound is None or span <= bound)
    return Tail(torn, hole, len(ends), span)


def _verified_ends(rest: bytes) -> list[int]:
    """End offsets (in ``rest``) of every line after the first whose checksum verifies."""
    ends = []
    nl = rest.find(b"\n")
    while nl != -1:
        start = nl + 1
        nl = rest.find(b"\n", start)
        if nl == -1:
            break
        line = rest[start:nl]
        if (
            len(line) >= 19
            and line[16:17] == b" "
            and _HEXB.issuperset(line[:16])
            and int(line[:16], 16) == xxhash.xxh3_64_intdigest(line[17:])
        ):
            ends.append(nl + 1)
    return ends


@dataclass
class SegmentInfo:
    """A segment file as the open log knows it."""

    first: int
    path: Path
    end: int  # last LSN it covers (first - 1 when empty)
    compacted: bool  # header declares a fixed range: records are a subset of first..end
    size: int
    ino: tuple[int, int] | None = None  # (st_dev, st_ino) of the file indexed: a reader
    # notices a segment replaced by compaction (same name, another file)


def _unsafe(path: Path, st_mode: int | None) -> WALUnsafeFileError:
    return WALUnsafeFileError(path, file_kind(st_mode))


def check_regular(path: Path) -> os.stat_result:
    """``lstat`` of a file of the log; ``WALUnsafeFileError`` unless it is a regular file."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _unsafe(path, st.st_mode)
    return st


def open_read(path: Path) -> int:
    """A read-only descriptor of a regular file of the log, never through a symlink, never
    blocking on a FIFO or a device (``open_regular``: ``WALUnsafeFileError`` for those).

    ``FileNotFoundError`` propagates (a writer's compaction may have removed the file).
    """
    return open_regular(path)


def make_dirs(directory: Path, mode: int = DIR_MODE) -> list[Path]:
    """Create ``directory`` and its missing parents, each with ``mode`` whatever the umask;
    return the directories created, outermost first (their parents need an fsync)."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    created = []
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue  # made meanwhile by someone else: keep its mode
        os.chmod(d, mode)  # mkdir applies the umask; the log's directories are owner only
        created.append(d)
    return created


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """``(first_lsn, path)`` of every segment in the directory, in LSN order."""
    out = []
    for p in directory.iterdir():
        m = _NAME.fullmatch(p.name)
        if m:
            out.append((int(m.group(1)), p))
    out.sort()
    return out


@dataclass(frozen=True, slots=True)
class Line:
    """A good record: where it is and what it says."""

    offset: int
    length: int  # bytes including the newline
    line: int  # 1-based
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Defect:
    """A bad line: where it starts and what is wrong with it."""

    path: Path
    line: int
    offset: int
    problem: str


def scan(
    path: Path,
    data: bytes,
    start: int = 0,
    line_no: int = 0,
    base: int = 0,
    stop: int | None = None,
) -> Iterator[Line | Defect]:
    """Every line of ``data`` (a segment's bytes) from ``start``, as a ``Line`` or a ``Defect``.

    ``base`` is the file offset of ``data[0]`` (offsets reported are file offsets); with
    ``stop``, ``data`` is read as if it ended there.
    """
    pos = start
    end = len(data) if stop is None else stop
    find = data.find
    while pos < end:
        line_no += 1
        nl = find(b"\n", pos, end)
        if nl == -1:
            if data[pos:end].strip(b"\x00") == b"":
                yield Defect(path, line_no, base + pos, ZERO_TAIL)
            else:
                yield Defect(path, line_no, base + pos, INCOMPLETE)
            return
        try:
            rec = decode_line(data[pos:nl])
        except RecordError as exc:
            yield Defect(path, line_no, base + pos, exc.problem)
        else:
            yield Line(base + pos, nl + 1 - pos, line_no, rec)
        pos = nl + 1


LINE_CAP = 8 << 20  # longer lines are never gathered in memory (unless their checksum verifies)


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line longer than ``read_chunks``'s ``cap``: where it is, never its bytes (a segment made
    huge, a zero-filled region of gigabytes, must not be read into memory to be judged;
    :func:`wal.log.filescan.judge_long` judges it from the file in pieces)."""

    offset: int
    length: int  # its bytes, with the newline when it has one
    complete: bool  # it ends with a newline (False: it runs to the end of the file, or ``stop``)


def regions(
    fd: int, start: int, stop: int, size: int = 1 << 20
) -> Iterator[tuple[int, bytes | int]]:
    """The bytes of an open file from ``start`` to ``stop`` in order, as ``(offset, piece)``:
    ``piece`` is the bytes read there (at most ``size``), or an int, the length of a hole there
    (zeros never written, never read: ``SEEK_DATA``). A sparse file of gigabytes costs a few
    ``lseek`` calls, not gigabytes of zeros read. Ends early if the file is shorter."""
    pos = start
    hole_at = -1  # where the data region pos is in ends (-1: not looked up)
    while pos < stop:
        if pos >= hole_at:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
                hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # no SEEK_DATA here: every byte is data
                    data_at, hole_at = pos, stop
                else:  # no data after pos: a hole up to the end of the file
                    data_at = hole_at = max(pos, min(stop, os.fstat(fd).st_size))
                    if data_at == pos:
                        return
            if data_at > pos:
                n = min(data_at, stop) - pos
                yield pos, n
                pos += n
                continue
        piece = os.pread(fd, min(size, stop - pos, max(hole_at - pos, 1)), pos)
        if not piece:
            return
        yield pos, piece
        pos += len(piece)


def find_newline(fd: int, pos: int, stop: int) -> int:
    """The file offset of the first newline at or after ``pos`` and before ``stop``, or -1.
    Holes are skipped (they hold no newline); memory holds one piece at a time."""
    for at, piece in regions(fd, pos, stop):
        if isinstance(piece, bytes):
            i = piece.find(b"\n")
            if i != -1:
                return at + i
    return -1


def read_chunks(
    fd: int,
    chunk_size: int = 1 << 22,
    start: int = 0,
    stop: int | None = None,
    cap: int | None = None,
) -> Iterator[tuple[bytes, int, int] | LongLine]:
    """A segment file (an open descriptor) in pieces ``(data, end, base)``: ``data[:end]`` is
    whole lines (the last piece: the rest of the file, which may end without a newline),
    ``base`` its file offset. From ``start``; with ``stop``, the file read as if it ended
    there (a preallocated segment's data part, before its zero rest: ``data_end``).

    Memory holds one chunk, not the file; a piece's bytes after ``end`` are read again with
    the next one. A line longer than a chunk is gathered as a list of pieces joined once
    (linear in its length: a growing buffer would copy it again for every chunk). With
    ``cap``, a line longer than ``cap`` bytes is never gathered: a ``LongLine`` (where it is)
    comes in its place, and reading goes on after it.
    """

    def pread(n: int, at: int) -> bytes:
        if stop is not None:
            n = min(n, stop - at)
            if n <= 0:
                return b""
        return os.pread(fd, n, at)

    base = start
    while True:
        data = pread(chunk_size, base)
        if not data:
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0 and cap is not None:  # no newline in a chunk: a long line, or the end
            end = stop if stop is not None else os.fstat(fd).st_size
            nl = find_newline(fd, base + len(data), end)
            length = (nl + 1 if nl != -1 else max(end, base + len(data))) - base
            if length > cap:
                yield LongLine(base, length, nl != -1)
                if nl == -1:
                    return
                base += length
                continue
        if cut == 0:  # no newline: a line longer than a chunk, or the end of the file
            pieces = [data]
            pos = base + len(data)
            while True:
                more = pread(max(chunk_size, pos - base), pos)
                if not more:
                    break
                pieces.append(more)
                pos += len(more)
                if b"\n" in more:
                    break
            data = b"".join(pieces)
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                yield data, len(data), base  # the end of the file without a newline
                return
        yield data, cut, base
        base += cut


def read_from(fd: int, offset: int) -> bytes:
    """The bytes of an open file from ``offset`` to its end."""
    pieces: list[bytes] = []
    while True:
        more = os.pread(fd, 1 << 22, offset)
        if not more:
            return b"".join(pieces)
        pieces.append(more)
        offset += len(more)


def lost_page_at(data: bytes, pos: int, base: int = 0) -> bool:
    """True when the bad line at ``data[pos]`` holds a run of zero bytes that ends on a page
    boundary (``base`` is the file offset of ``data[0]``).

    Our writers never write a zero byte (JSON escapes it), and a page of the page cache that
    never reached the disk reads back as zeros up to its end: so this is a lost page of a write
    that was never made durable. Whatever follows it in the file came with that same write,
    or later ones, and was never acknowledged either: it is a torn tail with a hole in it.
    """
    nl = data.find(b"\n", pos)
    end = len(data) if nl == -1 else nl
    z = data.find(b"\x00", pos, end)
    while z != -1:
        run_end = z
        while run_end < end and data[run_end] == 0:
            run_end += 1
        if (base + run_end) % PAGE == 0 or run_end == len(data):
            return True
        z = data.find(b"\x00", run_end, end)
    return False


ZERO_SCAN = 1 << 20  # bytes read per step when looking backwards for a segment's data end


def data_end(fd: int, size: int) -> int:
    """Where the zero rest of a segment file (an open descriptor, ``size`` bytes) starts: just
    after its last non-zero byte, found by reading backwards from the end in large chunks
    (``size`` when it does not end in zeros, 0 when it is all zeros). A preallocated last
    segment is mostly zeros: this is what an open reads of them, not every byte forwards.
    A hole (a sparse file's zeros never written) is skipped without being read."""
    end = size
    while end > 0:
        at = max(0, end - ZERO_SCAN)
        try:
            hole = os.lseek(fd, at, os.SEEK_DATA) >= end  # no data in at..end: zeros
        except OSError as exc:  # ENXIO: no data after at (else no SEEK_DATA here: read it)
            hole = exc.errno == errno.ENXIO
        if hole:
            end = at
            continue
        chunk = os.pread(fd, end - at, at)
        if len(chunk) < end - at:  # the file shrank meanwhile: read it all (the old way)
            return size
        kept = len(chunk.rstrip(b"\x00"))
        if kept:
            return at + kept
        end = at
    return 0


def zero_rest(data: bytes, pos: int) -> bool:
    """True when ``data[pos:]`` is one or more zero bytes and nothing else: the unused,
    preallocated rest of a segment (no record was ever written there)."""
    return pos < len(data) and data.count(0, pos) == len(data) - pos


def valid_record_after(data: bytes, pos: int) -> int | None:
    """Offset of the first line after ``pos`` that verifies, or None.

    A crash tears only what was written after the last fsync, and that is the end of the
    file: so a good record *after* a bad one means the bad one is real corruption.
    """
    nl = data.find(b"\n", pos)
    while nl != -1:
        start = nl + 1
        nl = data.find(b"\n", start)
        if nl == -1:
            return None
        try:
            decode_line(data[start:nl])
        except RecordError:
            continue
        return start
    return None


def looks_like_record(tail: bytes) -> bool:
    """True when the first line of ``tail`` is complete and framed like a record (checksum
    field, space, one JSON object) although it does not verify: a flipped bit in a written
    record, not the zeros, garbage or partial line that a crash leaves."""
    nl = tail.find(b"\n")
    if nl < 19:
        return False
    line = tail[:nl]
    return (
        line[16:17] == b" "
        and line[17:23] == b'{"t":"'
        and line.endswith(b"}")
        and all(48 <= c <= 57 or 97 <= c <= 102 for c in line[:16])
    )
