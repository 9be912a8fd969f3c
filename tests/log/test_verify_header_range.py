"""A compacted header's range against the records: one rule for every open, verify and repair.

A segment's header may fix its range (``last``, set by compaction). When it claims LSNs that
the next segment holds, or when it ends below its own records, the header is wrong, not the
records: every open refuses the log naming the header (its claim and what the records hold),
``verify`` reports the same defect at the same place, and ``repair`` corrects the header to
what the records hold, keeping every entry and removing no segment. Only a later segment that
is a byte-for-byte copy of records the earlier one holds is skipped, and a writing open
removes it (``wal.log.overlap``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers_log import check_files, lines_of, make_entry
from test_verify import build_log, segments, snapshot

from wal import StorageOptions, WALCorruptionError, WALStorage
from wal.log.record import decode_line, encode_line
from wal.log.repair import repair_log
from wal.log.verify import verify_log


def records(path: Path) -> list[dict[str, Any]]:
    return [decode_line(raw.rstrip(b"\n")) for _, raw in lines_of(path)]


def set_header_last(path: Path, last: int | None) -> None:
    """Rewrite a segment's header with another ``last`` and a good checksum (written wrong,
    not damaged on disk: nothing but the claim is off)."""
    lines = [raw for _, raw in lines_of(path)]
    header = decode_line(lines[0].rstrip(b"\n"))
    header["last"] = last
    path.write_bytes(encode_line(orjson.dumps(header)) + b"".join(lines[1:]))


def end_of(path: Path) -> int:
    return max(r["lsn"] for r in records(path) if "lsn" in r)


def entries_of(d: Path) -> dict[int, str]:
    with WALStorage.open_readonly(d) as log:
        return {e.lsn or 0: str(e.entry_id) for e in log.iter_entries()}


def test_a_header_claiming_the_next_segments_records_is_its_defect(tmp_path: Path) -> None:
    """The review's case: segment B's header says last=25 while segment C (from 19 on) holds
    PENDING entries B does not. Verify used to call C "already merged into B" (it is not),
    repair rewrote B's header with a larger last and failed its own check, and afterwards
    verify said OK while every open refused."""
    d = tmp_path / "wal"
    ids = build_log(d, preallocate="off")
    b, c = segments(d)[1], segments(d)[2]
    c_first = int(c.name[:-4])
    b_end = end_of(b)
    assert b_end == c_first - 1
    claim = c_first + 3
    set_header_last(b, claim)
    c_bytes = c.read_bytes()

    rep = verify_log(d)
    assert [(x.file, x.line, x.offset) for x in rep.defects] == [(b.name, 1, 0)]
    problem = rep.defects[0].problem
    assert f"last={claim}" in problem and f"end at LSN {b_end}" in problem
    assert c.name in problem and "does not hold" in problem
    assert not rep.opens and not any("merged" in n or "copy" in n for n in rep.notes)

    # every open refuses, naming the header and its claim (never "LSN gap", never a removal)
    for open_log in (WALStorage, WALStorage.open_readonly):
        with pytest.raises(WALCorruptionError) as err:
            open_log(d)
        assert (err.value.path, err.value.line, err.value.offset) == (b, 1, 0)
        assert f"last={claim}" in err.value.problem and "LSN gap" not in err.value.problem
    assert c.read_bytes() == c_bytes

    fixed = repair_log(d)
    assert fixed.backup is not None and fixed.opened and fixed.error is None
    assert fixed.segments_rewritten == [b.name]
    kept = len(records(b)) - 1
    assert fixed.ranges == [f"{b.name}: LSN {int(b.name[:-4])}..{b_end}, {kept} records kept"]
    assert records(b)[0]["last"] == b_end  # what the records hold
    assert c.read_bytes() == c_bytes  # the segment of unapplied entries is untouched
    # verify, a read-only open (status) and a writable open agree: every entry is there
    assert verify_log(d).ok
    assert entries_of(d) == ids
    with WALStorage(d) as log:
        e = log.append(make_entry(500))
    assert e.lsn == max(ids) + 3
    check_files(d)
    assert repair_log(d).nothing_to_do


def test_a_later_segment_that_differs_from_the_earlier_one_is_no_copy(tmp_path: Path) -> None:
    """The earlier segment holds the later one's LSNs, but one of them written differently:
    the later segment is not a copy (its record exists nowhere else): never skipped."""
    d = tmp_path / "wal"
    ids = build_log(d, preallocate="off")
    b, c = segments(d)[1], segments(d)[2]
    c_lines = [raw for _, raw in lines_of(c)][1:]
    changed = decode_line(c_lines[0].rstrip(b"\n"))
    changed["attempts"] = 3
    merged = b.read_bytes() + encode_line(orjson.dumps(changed)) + b"".join(c_lines[1:])
    b.write_bytes(merged)
    set_header_last(b, end_of(c))

    rep = verify_log(d)
    assert {x.file for x in rep.defects} == {b.name} and not rep.opens
    assert rep.defects[0].line == 1 and "written differently" in rep.defects[0].problem
    # its copies of the later segment's LSNs cannot stay in its range: the later one's win
    assert all("next segment's range" in x.problem for x in rep.defects[1:])
    assert [x.lsn for x in rep.defects[1:]] == [r["lsn"] for r in records(c)[1:]]
    with pytest.raises(WALCorruptionError) as err:
        WALStorage.open_readonly(d)
    assert err.value.path == b and "written differently" in err.value.problem
    assert c.exists()
    fixed = repair_log(d)
    assert fixed.opened and verify_log(d).ok and c.exists()
    assert entries_of(d) == ids


def test_a_byte_for_byte_copy_is_skipped_and_removed_by_a_writing_open(tmp_path: Path) -> None:
    """Every record of the later segment is in the earlier one, byte for byte (what a merging
    compaction leaves when it dies before removing the later one): nothing is only there."""
    d = tmp_path / "wal"
    ids = build_log(d, preallocate="off")
    b, c = segments(d)[1], segments(d)[2]
    b.write_bytes(b.read_bytes() + b"".join(raw for _, raw in lines_of(c)[1:]))
    set_header_last(b, end_of(c))

    rep = verify_log(d)
    assert rep.ok and rep.opens
    assert any(c.name in n and "copy" in n for n in rep.notes)
    before = snapshot(d)
    assert entries_of(d) == ids  # a read-only open skips it and changes nothing
    assert snapshot(d) == before
    with WALStorage(d) as log:
        assert log.recovery_report.removed_copy_segments == 1
    assert not c.exists()
    assert verify_log(d).ok and entries_of(d) == ids
    assert repair_log(d).nothing_to_do
    check_files(d)


@pytest.mark.parametrize("mode", ["tolerate_tail", "strict"])
def test_a_header_ending_below_its_records_says_so(mode: str, tmp_path: Path) -> None:
    """F12: a header whose last is smaller than its records used to give "LSN 13 out of order
    (expected 13)". The message says what is wrong; repair extends the header."""
    d = tmp_path / "wal"
    ids = build_log(d, preallocate="off")
    b = segments(d)[1]
    first = int(b.name[:-4])
    claim = first + 1
    set_header_last(b, claim)
    at = [decode_line(raw.rstrip(b"\n")).get("lsn") for _, raw in lines_of(b)].index(claim + 1)
    off, line = lines_of(b)[at][0], at + 1

    rep = verify_log(d)
    assert [(x.file, x.line, x.offset) for x in rep.defects] == [(b.name, line, off)]
    problem = rep.defects[0].problem
    assert f"the header says last={claim}, but the segment holds LSN {claim + 1}" in problem
    assert "out of order" not in problem and rep.defects[0].lsn == claim + 1
    with pytest.raises(WALCorruptionError) as err:
        WALStorage(d, options=StorageOptions(recovery=mode))  # type: ignore[arg-type]
    assert (err.value.path, err.value.line, err.value.offset) == (b, line, off)
    assert f"the header says last={claim}, but the segment holds LSN {claim + 1}" in str(err.value)
    assert "out of order" not in str(err.value)

    fixed = repair_log(d)
    assert fixed.opened and verify_log(d).ok
    assert records(b)[0]["last"] == end_of(b)  # extended over its records: none dropped
    assert entries_of(d) == ids
