"""wal.log.filescan: a segment file judged a piece at a time says exactly what the functions
over the whole file's bytes say (the same items, tails, data ends), whatever the chunk size
and the longest line gathered; a sparse file's holes are never read."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from helpers_log import make_entry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wal import WALCorruptionError, WALStorage
from wal.log.filescan import (
    classify_tail_at,
    judge_long,
    looks_like_record_at,
    rstrip_end,
    scan_file,
    zeros_only,
)
from wal.log.record import encode_line, encode_record
from wal.log.repair import repair_log
from wal.log.segment import (
    LINE_CAP,
    PAGE,
    Defect,
    Line,
    LongLine,
    classify_tail,
    data_end,
    list_segments,
    looks_like_record,
    read_chunks,
    regions,
    scan,
)
from wal.log.verify import verify_log


def _status(lsn: int) -> bytes:
    return encode_record(
        {"t": "status", "lsn": lsn, "of": 1, "entry_id": "0" * 8, "status": "completed"}
    )


def _entry(lsn: int, blob: int) -> bytes:
    return encode_record({"t": "entry", "lsn": lsn, "kwargs": {"blob": "x" * blob}})


def _flipped(line: bytes, at: int) -> bytes:
    i = 17 + at % (len(line) - 18)  # inside the payload: a record that does not verify
    return line[:i] + bytes([line[i] ^ 1]) + line[i + 1 :]


# the pieces a damaged segment is made of: good lines, damaged ones, zeros, garbage
PART = st.one_of(
    st.integers(1, 50).map(_status),
    st.tuples(st.integers(1, 50), st.integers(0, 600)).map(lambda t: _entry(*t)),
    st.tuples(st.integers(1, 50), st.integers(0, 500)).map(lambda t: _flipped(_status(t[0]), t[1])),
    st.integers(1, 9000).map(bytes),  # a zero run, maybe over a page boundary
    st.binary(max_size=40),
    st.just(b"\n"),
    st.just(encode_line(b"[1]")),  # a good checksum over a payload that is no record
    st.just(b"0123456789abcdeg {}\n"),  # a checksum field that is not hex
    st.integers(20, 5000).map(lambda n: b"0123456789abcdef " + bytes(n) + b"\n"),
    st.integers(1, 50).map(lambda n: _status(n)[:-1]),  # a complete record, no newline
)


def _file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "00000000000000000001.wal"
    p.write_bytes(data)
    return p


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(PART, max_size=12),
    chunk=st.sampled_from([7, 64, 4096, 1 << 20]),
    cap=st.sampled_from([16, 100, 5000, 1 << 20]),
    bound=st.sampled_from([None, PAGE, 64 * 1024]),
)
def test_a_file_read_in_pieces_is_judged_as_in_memory(
    tmp_path: Path, parts: list[bytes], chunk: int, cap: int, bound: int | None
) -> None:
    data = b"".join(parts)
    path = _file(tmp_path, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = len(data)
        items = list(scan_file(path, fd, size, chunk=chunk, cap=cap))
        assert items == list(scan(path, data))
        for k, item in enumerate(items):
            o = item.offset
            assert classify_tail_at(fd, o, size, bound, cap=cap) == classify_tail(
                data[o:], o, bound
            ), k
            assert looks_like_record_at(fd, o, size, cap=cap) == looks_like_record(data[o:])
            assert rstrip_end(fd, o, size) == o + len(data[o:].rstrip(b"\x00"))
        assert data_end(fd, size) == len(data.rstrip(b"\x00"))
        # from a line's start, as verify and recovery read on after a stop
        if items:
            mid = items[len(items) // 2]
            later = list(scan_file(path, fd, size, mid.offset, mid.line - 1, chunk, cap))
            assert later == list(scan(path, data, mid.offset, mid.line - 1))
    finally:
        os.close(fd)


def _sparse(path: Path, pieces: list[tuple[int, bytes]], size: int) -> bytes:
    """A sparse file of ``size`` bytes with ``pieces`` written at their offsets (holes
    elsewhere); returns its bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for at, data in pieces:
            os.pwrite(fd, data, at)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    image = bytearray(size)
    for at, data in pieces:
        image[at : at + len(data)] = data
    return bytes(image)


def _hole_aware(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < os.fstat(fd).st_size
    except OSError:
        return False
    finally:
        os.close(fd)


MiB = 1 << 20
LAYOUTS = {
    # records, then a hole to the end (a preallocated or `truncate -s` segment)
    "records-then-hole": ([(0, _status(1) + _status(2))], 40 * MiB),
    # a record cut short by the hole
    "torn-then-hole": ([(0, _status(1) + _status(2)[:30])], 40 * MiB),
    # garbage after gigabytes of nothing, with and without a newline
    "hole-then-garbage": ([(0, _status(1)), (30 * MiB, b"garbage")], 30 * MiB + 7),
    "hole-then-line": ([(0, _status(1)), (30 * MiB, b"garbage\n" + _status(3))], 31 * MiB),
    # a good record deep past a hole: beyond any tear bound
    "hole-then-record": ([(0, _status(1)), (20 * MiB, b"\n" + _status(2))], 21 * MiB),
    # a planted file of nothing at all
    "all-hole": ([], 40 * MiB),
    # a framed line whose payload is a hole: its checksum is computed over the zeros
    "framed-hole": ([(0, b"0123456789abcdef "), (12 * MiB, b"}\n")], 12 * MiB + 2),
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
def test_a_sparse_file_is_judged_as_its_bytes(tmp_path: Path, layout: str) -> None:
    pieces, size = LAYOUTS[layout]
    path = tmp_path / "00000000000000000001.wal"
    data = _sparse(path, pieces, size)
    fd = os.open(path, os.O_RDONLY)
    try:
        # the holes are skipped, the data read: the pieces give the bytes back
        got = bytearray()
        for at, piece in regions(fd, 0, size, MiB):
            assert at == len(got)
            got += bytes(piece) if isinstance(piece, int) else piece
        assert got == data
        if _hole_aware(path):
            assert any(isinstance(p, int) and p >= MiB for _, p in regions(fd, 0, size))
        items = list(scan_file(path, fd, size))
        assert items == list(scan(path, data))
        for item in items:
            o = item.offset
            assert classify_tail_at(fd, o, size, 64 * 1024) == classify_tail(data[o:], o, 64 * 1024)
            assert looks_like_record_at(fd, o, size) == looks_like_record(data[o:])
        assert data_end(fd, size) == len(data.rstrip(b"\x00"))
        assert zeros_only(fd, len(data.rstrip(b"\x00")), size)
    finally:
        os.close(fd)


def test_a_long_line_comes_as_where_it_is_and_is_judged_from_the_file(tmp_path: Path) -> None:
    big = _entry(7, 3 * MiB)  # a record longer than the cap: read whole, its checksum good
    bad = _flipped(big, 99)
    data = _status(1) + big + bad + bytes(2 * MiB)
    path = _file(tmp_path, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces = list(read_chunks(fd, 4096, 0, len(data), cap=MiB))
        longs = [p for p in pieces if isinstance(p, LongLine)]
        assert [(x.offset, x.length, x.complete) for x in longs] == [
            (len(_status(1)), len(big), True),
            (len(_status(1)) + len(big), len(bad), True),
            (len(_status(1)) + 2 * len(big), 2 * MiB, False),
        ]
        judged = [judge_long(path, fd, 2 + i, x) for i, x in enumerate(longs)]
        assert isinstance(judged[0], Line) and judged[0].record["lsn"] == 7
        assert isinstance(judged[1], Defect) and "checksum mismatch" in judged[1].problem
        assert isinstance(judged[2], Defect) and "zero-filled tail" in judged[2].problem
        assert list(scan_file(path, fd, len(data), chunk=4096, cap=MiB)) == list(scan(path, data))
    finally:
        os.close(fd)


def test_a_good_checksum_over_a_non_record_in_a_long_line(tmp_path: Path) -> None:
    line = encode_line(orjson.dumps(["x" * (2 * MiB)]))
    path = _file(tmp_path, line)
    fd = os.open(path, os.O_RDONLY)
    try:
        (item,) = scan_file(path, fd, len(line), chunk=4096, cap=MiB)
        assert item == next(scan(path, line))
        assert isinstance(item, Defect) and "not a record object" in item.problem
    finally:
        os.close(fd)


def test_a_record_longer_than_the_cap_is_indexed_verified_and_repaired(tmp_path: Path) -> None:
    """A 10 MiB entry (max_entry_bytes raised): longer than LINE_CAP, so every reader judges
    it from the file in pieces, then reads it whole for its checksum verifies. The open
    indexes it, verify passes it; damaged, both name the same line and offset."""
    d = tmp_path / "wal"
    with WALStorage(d, max_entry_bytes=16 * MiB, preallocate="off") as log:
        small = log.append(make_entry(1))
        big = log.append(make_entry(2, blob=10 * MiB))
        after = log.append(make_entry(3))
    with WALStorage(d, max_entry_bytes=16 * MiB) as log:
        assert len(log.get_entry(big.entry_id).kwargs["blob"]) == 10 * MiB
        assert log.get_entry(after.entry_id).lsn == after.lsn
    assert verify_log(d).ok and verify_log(d).entries == 3
    (_, seg), *_ = list_segments(d)
    raw = bytearray(seg.read_bytes())
    start = raw.index(b"\n", raw.index(b"\n") + 1) + 1  # the big entry's line (line 3)
    assert raw.index(b"\n", start) - start > LINE_CAP
    raw[start + 5 * MiB] ^= 1
    seg.write_bytes(bytes(raw))
    rep = verify_log(d)
    assert [(x.line, x.offset) for x in rep.defects] == [(3, start)]
    assert "checksum mismatch" in rep.defects[0].problem and rep.defects[0].lsn == big.lsn
    with pytest.raises(WALCorruptionError) as err:
        WALStorage(d)
    assert (err.value.line, err.value.offset) == (3, start)
    fixed = repair_log(d)
    assert [(x.line, x.offset) for x in fixed.dropped] == [(3, start)] and fixed.opened
    with WALStorage(d) as log:
        assert {e.lsn for e in log.iter_entries()} == {small.lsn, after.lsn}
