"""Segment files: their names, and reading one line by line with every defect located.

A segment is named by the first LSN it holds, zero-padded to 20 digits so that names sort in
LSN order: ``00000000000000000001.wal``. Its first line is a ``segment`` header record (see
:mod:`wal.log.record`). ``*.wal.tmp`` files are unfinished compaction output; ``*.broken`` files
hold bytes that recovery cut from a torn tail, kept for the operator.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from wal.log.record import FORMAT_VERSION, KIND_SEGMENT, RecordError, decode_line, encode_line

__all__ = [
    "BROKEN_SUFFIX",
    "DIR_MODE",
    "FILE_MODE",
    "SegmentInfo",
    "segment_header",
    "Defect",
    "Line",
    "SEGMENT_SUFFIX",
    "TMP_SUFFIX",
    "list_segments",
    "read_chunks",
    "read_from",
    "scan",
    "segment_name",
    "valid_record_after",
]

SEGMENT_SUFFIX = ".wal"
TMP_SUFFIX = ".wal.tmp"
BROKEN_SUFFIX = ".broken"
_NAME = re.compile(r"^(\d{20})\.wal$")
DIR_MODE = 0o700  # the log directory: owner only (balances and trades)
FILE_MODE = 0o600  # every file of the log: owner read/write only


def segment_header(first: int, last: int | None) -> bytes:
    """The framed header line of a segment covering ``first`` (..``last`` when compacted)."""
    return encode_line(
        orjson.dumps({"t": KIND_SEGMENT, "version": FORMAT_VERSION, "first": first, "last": last})
    )


@dataclass
class SegmentInfo:
    """A segment file as the open log knows it."""

    first: int
    path: Path
    end: int  # last LSN it covers (first - 1 when empty)
    compacted: bool  # header declares a fixed range: records are a subset of first..end
    size: int


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """``(first_lsn, path)`` of every segment in the directory, in LSN order."""
    out = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
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
    path: Path, data: bytes, start: int = 0, line_no: int = 0, base: int = 0
) -> Iterator[Line | Defect]:
    """Every line of ``data`` (a segment's bytes) from ``start``, as a ``Line`` or a ``Defect``.

    ``base`` is the file offset of ``data[0]`` (offsets reported are file offsets).
    """
    pos = start
    end = len(data)
    find = data.find
    while pos < end:
        line_no += 1
        nl = find(b"\n", pos)
        if nl == -1:
            if data[pos:].strip(b"\x00") == b"":
                yield Defect(path, line_no, base + pos, "zero-filled tail (no complete record)")
            else:
                yield Defect(path, line_no, base + pos, "incomplete record (no newline at the end)")
            return
        try:
            rec = decode_line(data[pos:nl])
        except RecordError as exc:
            yield Defect(path, line_no, base + pos, exc.problem)
        else:
            yield Line(base + pos, nl + 1 - pos, line_no, rec)
        pos = nl + 1


def read_chunks(path: Path, chunk_size: int = 1 << 22) -> Iterator[tuple[bytes, int, int]]:
    """A segment file in pieces ``(data, end, base)``: ``data[:end]`` is whole lines (the last
    piece: the rest of the file, which may end without a newline), ``base`` its file offset.

    Memory holds one chunk, not the file; a piece's bytes after ``end`` are read again with
    the next one (a seek instead of a copy of the chunk).
    """
    base = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk_size)
            if not data:
                return
            cut = data.rfind(b"\n") + 1
            while cut == 0:  # no newline: a line longer than a chunk, or the end of the file
                more = f.read(chunk_size)
                if not more:
                    yield data, len(data), base
                    return
                data += more
                cut = data.rfind(b"\n") + 1
            yield data, cut, base
            base += cut
            if cut < len(data):
                f.seek(base)


def read_from(path: Path, offset: int) -> bytes:
    """The bytes of a file from ``offset`` to its end."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


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
