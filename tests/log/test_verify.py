"""``verify_log``: every defect of a corruption table, located exactly, nothing modified.

The corruption cases (etcd's ``repair_test.go`` is the model) are shared with
``test_repair.py``: each mutates a real log on disk and says which LSNs it destroyed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from helpers_log import cut_at, data_end, flip_bit, lines_of, make_entry, write_at_end

from wal import WALCorruptionError, WALEntryStatus, WALStorage
from wal.log.record import decode_line, encode_line
from wal.log.segment import list_segments
from wal.log.verify import verify_log


def build_log(d: Path, n: int = 24, preallocate: str = "zero") -> dict[int, str]:
    """A log of several segments: ``n`` entries, then two status records. LSN -> entry id.

    With ``preallocate="zero"`` (the default) the last segment is a preallocated one: its
    records, then zeros up to 4096 bytes; the defects below are planted at its logical end."""
    with WALStorage(d, max_segment_bytes=4096, preallocate=preallocate) as log:  # type: ignore[arg-type]
        entries = [log.append(make_entry(i, blob=300)) for i in range(n)]
        log.update_status(entries[0], WALEntryStatus.COMPLETED)
        log.update_status(entries[1], WALEntryStatus.FAILED, "refused")
    return {e.lsn or 0: str(e.entry_id) for e in entries}


def segments(d: Path) -> list[Path]:
    return [p for _, p in list_segments(d)]


def line_at(path: Path, line_no: int) -> tuple[int, bytes]:
    """(offset, bytes with newline) of a 1-based line."""
    return lines_of(path)[line_no - 1]


def lsn_of(path: Path, line_no: int) -> int:
    _, raw = line_at(path, line_no)
    lsn: int = decode_line(raw.rstrip(b"\n"))["lsn"]
    return lsn


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in sorted(d.iterdir())}


@dataclass
class Case:
    """A corruption: ``mutate`` damages the log and returns the LSNs it destroyed, where the
    defect is (file, line, offset; line 0 = the whole file), and whether a normal open copes."""

    name: str
    mutate: Callable[[Path], tuple[set[int], list[tuple[str, int, int]]]]
    opens: bool


def _flip(path: Path, line_no: int) -> tuple[set[int], list[tuple[str, int, int]]]:
    off, raw = line_at(path, line_no)
    lsn = lsn_of(path, line_no)
    flip_bit(path, off + len(raw) - 20, 1)  # inside the JSON payload, near its end
    return {lsn}, [(path.name, line_no, off)]


def flip_sealed(d: Path) -> tuple[set[int], list[tuple[str, int, int]]]:
    return _flip(segments(d)[0], 3)


def flip_last_segment_mid(d: Path) -> tuple[set[int], list[tuple[str, int, int]]]:
    last = segments(d)[-1]
    assert len(lines_of(last)) >= 4  # good records follow the flipped one
    return _flip(last, 2)


def two_flips(d: Path) -> tuple[set[int], list[tuple[str, int, int]]]:
    a, da = _flip(segments(d)[0], 2)
    b, db = _flip(segments(d)[2], 4)
    return a | b, da + db


def torn_tail(d: Path) -> tuple[set[int], list[tuple[str, int, int]]]:
    last = segments(d)[-1]
    n = len(lines_of(last))
    off, raw = line_at(last, n)
    lsn = lsn_of(last, n)
    cut_at(last, off + len(raw) // 2)  # the rest of the record lost (zeros, or truncated)
    return {lsn}, [(last.name, n, off)]


def zero_tail(d: Path) -> tuple[set[int], list[tuple[str, int, int]]]:
    """Zeros after the last record: the end of the log (preallocated space), no defect."""
    last = segments(d)[-1]
    write_at_end(last, b"\0" * 300)
    return set(), []


def garbage_tail(d: Path) -> tuple[set[int], list[tuple[str, int, int]]]:
    last = segments(d)[-1]
    n = len(lines_of(last))
    at = write_at_end(last, b'0123456789abcdef {"t":"entry","lsn":9')
    return set(), [(last.name, n + 1, at)]


def garbage_line_mid(d: Path) -> tuple[set[int], list[tuple[str, int, int]]]:
    seg = segments(d)[1]
    off, _ = line_at(seg, 3)
    data = seg.read_bytes()
    seg.write_bytes(data[:off] + b"not a record at all\n" + data[off:])
    return set(), [(seg.name, 3, off)]


def missing_segment(d: Path) -> tuple[set[int], list[tuple[str, int, int]]]:
    segs = segments(d)
    gone = segs[1]
    lsns = {decode_line(raw.rstrip(b"\n")).get("lsn") for _, raw in lines_of(gone)}
    gone.unlink()
    return {x for x in lsns if isinstance(x, int)}, [(segs[2].name, 0, 0)]


def header_flip(d: Path) -> tuple[set[int], list[tuple[str, int, int]]]:
    seg = segments(d)[1]
    flip_bit(seg, 30, 1)
    return set(), [(seg.name, 1, 0)]


def truncated_sealed(d: Path) -> tuple[set[int], list[tuple[str, int, int]]]:
    seg = segments(d)[1]
    off, _ = line_at(seg, 4)
    lost = {lsn_of(seg, k) for k in range(4, len(lines_of(seg)) + 1)}
    os.truncate(seg, off + 10)  # a sealed segment never has a zero rest
    # the torn line, then the gap before the next segment
    return lost, [(seg.name, 4, off), (segments(d)[2].name, 0, 0)]


CASES = [
    Case("flip_sealed", flip_sealed, opens=False),
    Case("flip_last_segment_mid", flip_last_segment_mid, opens=False),
    Case("two_flips", two_flips, opens=False),
    Case("torn_tail", torn_tail, opens=True),
    Case("garbage_tail", garbage_tail, opens=True),
    Case("garbage_line_mid", garbage_line_mid, opens=False),
    Case("missing_segment", missing_segment, opens=False),
    Case("header_flip", header_flip, opens=False),
    Case("truncated_sealed", truncated_sealed, opens=False),
]


def test_clean_log(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    ids = build_log(d)
    rep = verify_log(d)
    assert rep.ok and rep.opens and rep.defects == []
    assert rep.entries == len(ids)
    assert rep.records == len(ids) + 2
    assert rep.segments == len(segments(d)) >= 4
    assert (rep.first_lsn, rep.last_lsn) == (1, len(ids) + 2)
    # data bytes: not the zero rest of the preallocated last segment
    assert rep.bytes == sum(data_end(p.read_bytes()) for p in segments(d))
    assert (
        segments(d)[-1].stat().st_size
        == 4096
        > rep.bytes - sum(p.stat().st_size for p in segments(d)[:-1])
    )
    assert rep.to_dict()["ok"] is True


def test_zeros_after_the_last_record_are_the_end_of_the_log(tmp_path: Path) -> None:
    """A preallocated last segment's rest: verify reports no defect and the data bytes."""
    d = tmp_path / "wal"
    ids = build_log(d)
    data_bytes = sum(data_end(p.read_bytes()) for p in segments(d))
    zero_tail(d)
    rep = verify_log(d)
    assert rep.ok and rep.opens and rep.defects == [] and rep.entries == len(ids)
    assert rep.bytes == data_bytes


@pytest.mark.parametrize("prealloc", ["zero", "off"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_defect_is_located_and_nothing_changes(
    case: Case, prealloc: str, tmp_path: Path
) -> None:
    d = tmp_path / "wal"
    build_log(d, preallocate=prealloc)
    assert segments(d)[-1].read_bytes().endswith(b"\0") is (prealloc == "zero")
    destroyed, where = case.mutate(d)
    before = snapshot(d)
    rep = verify_log(d)
    assert snapshot(d) == before, "verify must never modify the log"
    found = [(x.file, x.line, x.offset) for x in rep.defects]
    assert found == where, [str(x) for x in rep.defects]
    assert not rep.ok
    assert rep.opens is case.opens
    for x in rep.defects:
        assert x.torn_tail is case.opens
        assert x.file in str(x) and (x.line == 0 or f"byte offset {x.offset}" in str(x))
    # the LSN of a flipped record is still legible in its bytes: the report names it
    if case.name == "flip_sealed":
        assert rep.defects[0].lsn in destroyed
    # the same verdict as a real open
    if case.opens:
        WALStorage(d).close()
    else:
        with pytest.raises(WALCorruptionError):
            WALStorage(d)


def test_forged_record_with_a_good_line_checksum(tmp_path: Path) -> None:
    # a record written wrong (content checksum mismatch) and an entry id written twice:
    # recovery indexes both; verify reports both, and says (truly) that an open accepts them
    d = tmp_path / "wal"
    build_log(d, n=3)
    seg = segments(d)[-1]  # preallocated: the forged records go into its zero rest
    recs = [decode_line(raw.rstrip(b"\n")) for _, raw in lines_of(segments(d)[0])]
    last = [decode_line(raw.rstrip(b"\n")) for _, raw in lines_of(seg)]
    nxt = max(r.get("lsn", 0) for r in last) + 1
    changed = dict(recs[1], lsn=nxt, kwargs={"n": 999})
    again = dict(recs[2], lsn=nxt + 1)
    write_at_end(seg, encode_line(orjson.dumps(changed)) + encode_line(orjson.dumps(again)))
    rep = verify_log(d)
    problems = [x.problem for x in rep.defects]
    assert len(problems) == 2
    assert "content checksum mismatch" in problems[0]
    assert "appears a second time" in problems[1]
    assert all(x.verify_only and not x.torn_tail for x in rep.defects)
    assert rep.opens and not rep.ok
    with WALStorage.open_readonly(d) as log:  # the claim is the open's verdict
        assert log.recovery_report.records == rep.records + 2  # the two verify lists
    WALStorage(d).close()


def test_works_while_a_writer_holds_the_log(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    build_log(d, n=3)
    with WALStorage(d) as log:
        log.append(make_entry(100))
        rep = verify_log(d)
    assert rep.ok and rep.entries == 4


def test_notes_for_what_an_open_tidies(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    build_log(d, n=3)
    (d / "00000000000000000001.wal.tmp").write_bytes(b"partial")
    rep = verify_log(d)
    assert rep.ok
    assert any("unfinished compaction" in n for n in rep.notes)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(WALCorruptionError, match="no log directory"):
        verify_log(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
