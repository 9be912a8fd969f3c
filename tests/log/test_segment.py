"""wal.log.segment: names that sort by LSN, and a scanner that locates every bad line exactly."""

from __future__ import annotations

from pathlib import Path

from wal.log.record import encode_record
from wal.log.segment import Defect, Line, list_segments, scan, segment_name, valid_record_after


def rec(lsn: int) -> bytes:
    return encode_record({"t": "status", "lsn": lsn})


def test_names_sort_by_first_lsn(tmp_path: Path) -> None:
    firsts = [1, 9, 10, 100, 99999, 2**63]
    for f in reversed(firsts):
        (tmp_path / segment_name(f)).write_bytes(b"")
    for other in [
        "LOCK",
        "00000000000000000001.wal.broken",
        "00000000000000000009.wal.tmp",
        "1.wal",
        "0000000000000000000a.wal",
        "00000000000000000007.wal\n",  # "$" matched before a trailing newline
        "0000000000000000000\u0663.wal",  # ARABIC-INDIC DIGIT THREE: \d, not [0-9]
    ]:
        (tmp_path / other).write_bytes(b"")
    assert segment_name(1) == "00000000000000000001.wal"
    assert [f for f, _ in list_segments(tmp_path)] == firsts
    assert [p.name for _, p in list_segments(tmp_path)] == sorted(segment_name(f) for f in firsts)


def test_scan_locates_lines_and_defects() -> None:
    good = [rec(1), rec(2), rec(3)]
    bad = b"0123456789abcdef {}\n"
    data = good[0] + bad + good[1] + good[2][:-5]
    items = list(scan(Path("x.wal"), data))
    assert [type(i) for i in items] == [Line, Defect, Line, Defect]
    first, defect, second, torn = items
    assert isinstance(first, Line) and first.offset == 0 and first.line == 1
    assert first.length == len(good[0]) and first.record["lsn"] == 1
    assert isinstance(defect, Defect)
    assert (defect.line, defect.offset) == (2, len(good[0]))
    assert "checksum mismatch" in defect.problem
    assert isinstance(second, Line) and second.offset == len(good[0]) + len(bad)
    assert isinstance(torn, Defect) and torn.line == 4
    assert torn.offset == len(good[0]) + len(bad) + len(good[1])
    assert "no newline" in torn.problem


def test_scan_zero_tail_and_start() -> None:
    data = rec(1) + b"\x00" * 100
    items = list(scan(Path("x.wal"), data))
    assert isinstance(items[-1], Defect) and "zero-filled tail" in items[-1].problem
    assert items[-1].offset == len(rec(1))
    later = list(scan(Path("x.wal"), rec(1) + rec(2), start=len(rec(1)), line_no=1))
    assert len(later) == 1 and isinstance(later[0], Line) and later[0].line == 2


def test_valid_record_after() -> None:
    a, b = rec(1), rec(2)
    torn = b'0123456789abcdef {"t\n'
    assert valid_record_after(a + torn, len(a)) is None
    assert valid_record_after(a + torn + b, len(a)) == len(a) + len(torn)
    assert valid_record_after(a + torn + b[:-1], len(a)) is None  # the last one has no newline
    assert valid_record_after(a + torn + b"junk\n" + b, len(a)) == len(a) + len(torn) + 5
