"""The corruption table: every defect a log directory can show, and the ONE outcome of each.

etcd's ``repair_test.go`` is the reference. "Raises" means ``WALCorruptionError`` naming the
segment file, the 1-based line and the byte offset of the bad record's first byte (line 0 and
offset 0 for a defect of a whole segment); the tests assert the exact line and offset. N is the
number of lines of the segment; "T" is tolerate_tail (the default), "S" strict, "K"
skip_corrupt.

 1  Last line of the last segment cut at byte k, for EVERY 0 < k < len (k = len - 1: only the
    final newline is missing).
    T, K: opens; only the cut entry is missing; the k cut bytes are kept in
    ``<segment>.broken``; ``truncated_bytes == k``.  S: raises at the cut line.
 2  Last line cut at k = 0 (a whole record gone).
    T, S, K: opens, that entry is missing, nothing reported (undetectable; it was never
    acknowledged, since the newline is written with the record and fsynced before the ack).
 3  Zeros after the last newline.
    T, S, K: opens, every entry present, nothing cut or reported: zeros after the last record
    of the last segment are the end of the log (a preallocated segment's rest, or an unsynced
    write whose data never reached the disk: nothing acknowledged); ``spare_bytes`` counts
    them and they stay (the next append overwrites them).
 4  Last line cut, then zero-extended.
    T, K: as 1; ``.broken`` holds the cut bytes (not the zeros after them).  S: raises at
    the cut line.
 5  Garbage tail (random bytes and newlines).
    T, K: opens, every entry present, the garbage kept in ``.broken``.  S: raises at N + 1.
 6  One bit flipped in a middle record of the last segment (EVERY bit, the newline too).
    T, S: raises (a good record follows it: not a torn tail).
    K: opens; the record is skipped (``skipped_records == 1``, ``lsn_gaps == 1``, ``defects``).
 7  One bit flipped in the LAST record of the last segment.
    T, K: cut like a torn tail and kept in ``.broken`` (after a power loss, unsynced garbage
    looks the same).  S: raises.
 8  A bad record in a non-last segment (a middle one, its last one, or a cut or zero-extended
    tail of a non-last segment).
    T, S: raises (only the last segment may have a torn tail).  K: skipped.
 9  A middle segment deleted.
    T, S: raises for the next segment: "LSN gap".  K: opens, ``lsn_gaps == 1``.
10  Two segments' names swapped.
    T, S: raises at line 1 of the first: its header and its name disagree.
11  A segment renamed to a later first LSN.
    T: raises: "LSN gap".
12  The last segment holds only a torn header (a rotation died before the header was durable).
    T: the segment is removed (``removed_empty_segments``), the torn bytes kept in ``.broken``;
    the log goes on in the previous segment.  S: raises.
13  An empty (0-byte) last segment.
    T, S, K: removed (``removed_empty_segments``).
14  A leftover ``*.wal.tmp`` (compaction died before its rename).
    T, S, K: removed (``removed_tmp_files``); nothing else changes.
15  The FIRST or the LAST segment deleted as a whole.
    T, S, K: NOT DETECTABLE: opens as a shorter log (compaction removes front segments, and a
    sealed segment does not name its successor). Backups are the defence.
16  A second open after a repair.
    T: changes no byte and reports nothing ("we never repair twice"); a later torn tail of
    the same segment is kept in ``<segment>.broken.1``, the first evidence stays.

Preallocation is on by default (``preallocate="zero"``): a last segment is its records, then
zeros up to its preallocated size. Every defect "at the end of the file" (1-5, 7, 16) is
therefore tested twice (the ``one_segment`` fixture's ``zero`` and ``off`` images): planted at
the logical end of a preallocated segment (after its last record, the zero rest after it), and
at the end of a segment that grows. The outcome is the same, except that a cut then also
removes the zero rest after the torn bytes (``truncated_bytes`` counts them; the ``.broken``
file keeps only the non-zero bytes).
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers_log import check_files, data_end, lines_of, make_entry, write_at_end

from wal import StorageOptions, WALCorruptionError, WALEntry, WALEntryStatus, WALStorage
from wal.errors import WALMissingSegmentError
from wal.log.segment import list_segments

Snapshot = dict[str, bytes]
Pad = Callable[[bytes], bytes]  # a segment's bytes as the fixture's layout stores them
SPACE = 16384  # a preallocated segment's size in the "zero" images


def preallocated(data: bytes) -> bytes:
    """A segment's bytes as a preallocated segment holds them: then zeros up to SPACE (byte
    for byte what the writer leaves, see test_prealloc.py)."""
    return data + bytes(max(0, SPACE - len(data)))


def grows(data: bytes) -> bytes:
    """A segment's bytes as a segment that grows holds them (preallocate="off")."""
    return data


def snapshot(d: Path) -> Snapshot:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != "LOCK"}


def restore(d: Path, snap: Snapshot) -> None:
    for p in d.iterdir():
        if p.name != "LOCK":
            p.unlink()
    for name, data in snap.items():
        (d / name).write_bytes(data)
        (d / name).chmod(0o600)


def first_lsn(p: Path) -> int:
    return int(p.name[:20])


def build(d: Path, n: int, max_segment_bytes: int = 64 * 1024 * 1024) -> list[WALEntry]:
    with WALStorage(d, max_segment_bytes=max_segment_bytes) as log:
        return [log.append(make_entry(i)) for i in range(n)]


def open_ids(d: Path, mode: str) -> tuple[list[str], WALStorage]:
    log = WALStorage(d, StorageOptions(recovery=mode))  # type: ignore[arg-type]
    ids = [str(e.entry_id) for e in log.iter_entries()]
    return ids, log


def assert_raises_at(d: Path, mode: str, seg: Path, line: int, offset: int, words: str) -> None:
    with pytest.raises(WALCorruptionError) as ei:
        WALStorage(d, StorageOptions(recovery=mode))  # type: ignore[arg-type]
    err = ei.value
    assert (err.path, err.line, err.offset) == (seg, line, offset), err
    assert words in err.problem, err.problem
    assert f"{seg}: line {line}, byte offset {offset}:" in str(err)


@pytest.fixture(params=["zero", "off"])
def one_segment(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Path, list[WALEntry], Path, Snapshot, Pad]:
    """One segment of 5 entries; ``pad`` lays a segment's bytes out as a preallocated segment
    (``zero``: the snapshot's segment is its records, then zeros) or one that grows (``off``).
    Tests plant their defect in the records part (``whole``) and restore ``pad(...)`` of it."""
    d = tmp_path / "log"
    es = build(d, 5)
    seg = list_segments(d)[0][1]
    pad: Pad = preallocated if request.param == "zero" else grows
    seg.write_bytes(pad(seg.read_bytes()))
    return d, es, seg, snapshot(d), pad


@pytest.fixture
def segments(tmp_path: Path) -> tuple[Path, list[WALEntry], list[Path], Snapshot]:
    d = tmp_path / "log"
    es = build(d, 40, max_segment_bytes=4096)
    segs = [p for _, p in list_segments(d)]
    assert len(segs) >= 4
    return d, es, segs, snapshot(d)


# ---------------------------------------------------------------- 1, 2: the cut last line


def test_1_2_last_line_cut_at_every_offset(
    one_segment: tuple[Path, list[WALEntry], Path, Snapshot, Pad],
) -> None:
    d, es, seg, snap, pad = one_segment
    ids = [str(e.entry_id) for e in es]
    start, last = lines_of(seg)[-1]
    whole = snap[seg.name][: data_end(snap[seg.name])]  # the records (no zero rest)
    assert len(lines_of(seg)) == 6  # header + 5 entries
    for k in range(len(last)):
        for mode in ("tolerate_tail", "strict", "skip_corrupt"):
            image = pad(whole[: start + k])  # the rest of the last record lost (zeros, or cut)
            restore(d, {**snap, seg.name: image})
            if mode == "strict" and k > 0:
                assert_raises_at(d, mode, seg, 6, start, "incomplete record")
                continue
            got, log = open_ids(d, mode)
            rep = log.recovery_report
            log.close()
            assert got == ids[:-1], (k, mode)  # only the cut entry is missing
            if k == 0:
                assert rep.truncated_bytes == 0 and rep.broken_files == [] and rep.defects == []
                assert rep.spare_bytes == len(image) - start  # the zero rest: the end
                assert seg.read_bytes() == image  # its space stays
            else:
                assert seg.read_bytes() == whole[:start]
                assert rep.truncated_bytes == len(image) - start  # the zero rest goes too
                assert rep.broken_files == [seg.name + ".broken"]
                assert (d / (seg.name + ".broken")).read_bytes() == last[:k]
                assert rep.defects == [
                    f"{seg.name}: line 6, offset {start}: incomplete record (no newline at the "
                    "end) (torn tail cut)"
                ]
    # after a repair the log takes appends and keeps them
    restore(d, {**snap, seg.name: pad(whole[: start + 100])})
    with WALStorage(d) as log:
        new = log.append(make_entry(99))
        assert new.lsn == es[-1].lsn  # the cut record's LSN is reused: it was never acked
    with WALStorage(d) as log:
        assert [str(e.entry_id) for e in log.iter_entries()] == [*ids[:-1], str(new.entry_id)]
    check_files(d)


# ---------------------------------------------------------------- 3, 4, 5: tails


def test_3_zero_extended_tail(
    one_segment: tuple[Path, list[WALEntry], Path, Snapshot, Pad],
) -> None:
    d, es, seg, snap, pad = one_segment
    whole = snap[seg.name][: data_end(snap[seg.name])]
    for n in (1, 17, 4096, 40000):
        image = pad(whole + b"\x00" * n)
        restore(d, {**snap, seg.name: image})
        for mode in ("strict", "tolerate_tail", "skip_corrupt"):
            got, log = open_ids(d, mode)
            rep = log.recovery_report
            log.close()
            assert got == [str(e.entry_id) for e in es]
            assert rep.spare_bytes == len(image) - len(whole) >= n
            assert rep.truncated_bytes == 0 and rep.defects == [] and rep.broken_files == []
            assert seg.read_bytes() == image  # the space stays


def test_4_cut_then_zero_extended(
    one_segment: tuple[Path, list[WALEntry], Path, Snapshot, Pad],
) -> None:
    d, es, seg, snap, pad = one_segment
    whole = snap[seg.name][: data_end(snap[seg.name])]
    start, last = lines_of(seg)[-1]
    image = pad(whole[:start] + last[:50] + b"\x00" * 4000)
    torn = image[start:]
    restore(d, {**snap, seg.name: image})
    assert_raises_at(d, "strict", seg, 6, start, "incomplete record")
    got, log = open_ids(d, "tolerate_tail")
    rep = log.recovery_report
    log.close()
    assert got == [str(e.entry_id) for e in es[:-1]]
    assert rep.truncated_bytes == len(torn)
    assert (d / (seg.name + ".broken")).read_bytes() == last[:50]


def test_5_garbage_tail(one_segment: tuple[Path, list[WALEntry], Path, Snapshot, Pad]) -> None:
    d, es, seg, snap, pad = one_segment
    whole = snap[seg.name][: data_end(snap[seg.name])]
    rnd = random.Random(5)
    for trial in range(20):
        garbage = bytes(
            rnd.choice(b'\n{}"0123456789abcdef :x\x00\xff') for _ in range(rnd.randint(1, 3000))
        )
        image = pad(whole + garbage)  # garbage after the last record, zeros after it
        restore(d, {**snap, seg.name: image})
        if garbage.strip(b"\x00") == b"":
            continue  # only zeros: the end of the log (case 3)
        assert_raises_at(d, "strict", seg, 7, len(whole), "")
        got, log = open_ids(d, "tolerate_tail")
        rep = log.recovery_report
        log.close()
        assert got == [str(e.entry_id) for e in es], trial
        assert rep.truncated_bytes == len(image) - len(whole)
        kept = d / (seg.name + ".broken")
        assert kept.read_bytes() == garbage.rstrip(b"\x00")
        assert seg.read_bytes() == whole


# ---------------------------------------------------------------- 6, 7: flipped bits


def test_6_every_bit_of_a_middle_record(
    one_segment: tuple[Path, list[WALEntry], Path, Snapshot, Pad],
) -> None:
    d, es, seg, snap, _ = one_segment
    whole = snap[seg.name]
    lines = lines_of(seg)
    start, middle = lines[3]  # line 4: the third entry; lines 5 and 6 follow
    for pos in range(start, start + len(middle)):
        for bit in range(8):
            data = bytearray(whole)
            data[pos] ^= 1 << bit
            restore(d, {**snap, seg.name: bytes(data)})
            assert_raises_at(d, "tolerate_tail", seg, 4, start, "")
            if bit == 0:
                assert_raises_at(d, "strict", seg, 4, start, "")
    # skip_corrupt salvages: the bad record is skipped, everything else is there
    for pos in (start, start + 20, start + len(middle) // 2, start + len(middle) - 2):
        data = bytearray(whole)
        data[pos] ^= 0x04
        restore(d, {**snap, seg.name: bytes(data)})
        got, log = open_ids(d, "skip_corrupt")
        rep = log.recovery_report
        log.close()
        assert got == [str(e.entry_id) for i, e in enumerate(es) if i != 2]
        assert rep.skipped_records == 1 and rep.lsn_gaps == 1
        assert rep.defects[0].startswith(f"{seg.name}: line 4, offset {start}: ")


def test_7_bit_flip_in_the_last_record_is_cut_loudly(
    one_segment: tuple[Path, list[WALEntry], Path, Snapshot, Pad],
) -> None:
    """A complete last line with a bad checksum is not what a crash leaves: strict refuses it,
    tolerate_tail cuts it but keeps it in a .suspect file and warns (issue 11, section 3)."""
    d, es, seg, snap, _ = one_segment
    whole = snap[seg.name]
    start, last = lines_of(seg)[-1]
    data = bytearray(whole)  # the zero rest after it, in the preallocated layout
    data[start + 40] ^= 0x01
    restore(d, {**snap, seg.name: bytes(data)})
    assert_raises_at(d, "strict", seg, 6, start, "checksum mismatch")
    got, log = open_ids(d, "tolerate_tail")
    rep = log.recovery_report
    log.close()
    assert got == [str(e.entry_id) for e in es[:-1]]
    assert rep.truncated_bytes == len(whole) - start  # the record, and any zero rest
    assert (d / (seg.name + ".suspect")).read_bytes() == bytes(data[start : start + len(last)])
    assert not (d / (seg.name + ".broken")).exists()
    assert rep.warnings and "checksum fails" in rep.warnings[0]
    # every later open (a read-only status too) keeps warning while the evidence is there
    ro = WALStorage.open_readonly(d)
    assert any(seg.name + ".suspect" in w for w in ro.recovery_report.warnings)
    ro.close()


# ---------------------------------------------------------------- 8: non-last segments


def test_8_bad_record_in_a_non_last_segment(
    segments: tuple[Path, list[WALEntry], list[Path], Snapshot],
) -> None:
    d, es, segs, snap = segments
    seg = segs[1]
    lines = lines_of(seg)
    n = len(lines)
    for line_no in (2, n):  # a middle record, and the segment's LAST record
        start, _ = lines[line_no - 1]
        data = bytearray(snap[seg.name])
        data[start + 30] ^= 0x10
        restore(d, {**snap, seg.name: bytes(data)})
        for mode in ("tolerate_tail", "strict"):
            assert_raises_at(d, mode, seg, line_no, start, "checksum mismatch")
        got, log = open_ids(d, "skip_corrupt")
        assert log.recovery_report.skipped_records == 1
        log.close()
        assert len(got) == len(es) - 1
    # a torn tail is only possible in the last segment: a cut sealed segment is corruption
    start, last = lines[-1]
    restore(d, {**snap, seg.name: snap[seg.name][: start + len(last) // 2]})
    assert_raises_at(d, "tolerate_tail", seg, n, start, "incomplete record")
    restore(d, {**snap, seg.name: snap[seg.name] + b"\x00" * 512})
    assert_raises_at(d, "tolerate_tail", seg, n + 1, len(snap[seg.name]), "zero-filled")


# ---------------------------------------------------------------- 9, 10, 11: whole segments


def test_9_middle_segment_deleted(
    segments: tuple[Path, list[WALEntry], list[Path], Snapshot],
) -> None:
    d, es, segs, _ = segments
    gone, nxt = segs[1], segs[2]
    gone.unlink()
    for mode in ("tolerate_tail", "strict"):
        assert_raises_at(d, mode, nxt, 0, 0, "LSN gap")
    got, log = open_ids(d, "skip_corrupt")
    assert log.recovery_report.lsn_gaps == 1
    log.close()
    lo, hi = first_lsn(gone), first_lsn(nxt)
    assert got == [str(e.entry_id) for e in es if not lo <= (e.lsn or 0) < hi]
    assert len(got) < len(es)


def test_10_segment_names_swapped(
    segments: tuple[Path, list[WALEntry], list[Path], Snapshot],
) -> None:
    d, _, segs, snap = segments
    a, b = segs[1], segs[2]
    restore(d, {**snap, a.name: snap[b.name], b.name: snap[a.name]})
    for mode in ("tolerate_tail", "strict"):
        assert_raises_at(d, mode, a, 1, 0, "header says first LSN")


def test_11_segment_renamed_to_a_later_lsn(
    segments: tuple[Path, list[WALEntry], list[Path], Snapshot],
) -> None:
    d, _, segs, _ = segments
    last = segs[-1]
    later = last.with_name(f"{first_lsn(last) + 5:020d}.wal")
    last.rename(later)
    assert_raises_at(d, "tolerate_tail", later, 0, 0, "LSN gap")


# ---------------------------------------------------------------- 12, 13, 14, 15


@pytest.mark.parametrize("prealloc", ["zero", "off"])
def test_12_torn_header_of_a_new_segment(
    prealloc: str, segments: tuple[Path, list[WALEntry], list[Path], Snapshot]
) -> None:
    """Off: a new segment that grows is created under its name, then its header is written
    (a crash between them tears it). Zero: the prepared segment gets its name only after its
    header is durable: a torn header in front of a zero rest is no crash's doing, and refused
    in every mode but skip_corrupt."""
    d, es, _, _ = segments
    new = d / f"{(es[-1].lsn or 0) + 1:020d}.wal"
    with WALStorage(d, max_segment_bytes=4096, preallocate=prealloc) as log:  # type: ignore[arg-type]
        log.compact()  # seals the active segment: a new one holding only its header is created
    assert list_segments(d)[-1][1] == new
    raw = new.read_bytes()
    header_line = raw[: data_end(raw)]
    assert (len(raw) == 4096) is (prealloc == "zero")
    snap = snapshot(d)
    if prealloc == "zero":
        for k in range(1, len(header_line)):
            restore(d, {**snap, new.name: header_line[:k] + bytes(len(raw) - k)})
            for mode in ("strict", "tolerate_tail"):
                assert_raises_at(d, mode, new, 1, 0, "")
        return
    for k in range(1, len(header_line)):
        restore(d, {**snap, new.name: header_line[:k]})
        assert_raises_at(d, "strict", new, 1, 0, "incomplete record")
        got, log = open_ids(d, "tolerate_tail")
        rep = log.recovery_report
        nxt = log.next_lsn
        log.close()
        assert len(got) == len(es) and nxt == first_lsn(new)
        assert rep.removed_empty_segments == 1 and rep.truncated_bytes == k
        assert (d / (new.name + ".broken")).read_bytes() == header_line[:k]
        assert not new.exists()  # appends go on in the previous segment
        check_files(d)


def test_13_empty_last_segment(segments: tuple[Path, list[WALEntry], list[Path], Snapshot]) -> None:
    d, es, segs, _ = segments
    # a rotation cuts the sealed segment back to its last record (its zero rest goes) before
    # the next segment exists: that is what the empty segment follows
    raw = segs[-1].read_bytes()
    assert len(raw) > data_end(raw), "the last segment was preallocated"
    segs[-1].write_bytes(raw[: data_end(raw)])
    empty = d / f"{(es[-1].lsn or 0) + 1:020d}.wal"
    empty.write_bytes(b"")
    for mode in ("strict", "tolerate_tail", "skip_corrupt"):
        empty.write_bytes(b"")
        got, log = open_ids(d, mode)
        assert log.recovery_report.removed_empty_segments == 1
        assert log.next_lsn == (es[-1].lsn or 0) + 1
        log.close()
        assert len(got) == len(es)


def test_14_leftover_tmp_file(
    one_segment: tuple[Path, list[WALEntry], Path, Snapshot, Pad],
) -> None:
    d, es, seg, snap, _ = one_segment
    (d / (seg.name[:-4] + ".wal.tmp")).write_bytes(b"half a compaction")
    got, log = open_ids(d, "strict")
    assert log.recovery_report.removed_tmp_files == 1
    log.close()
    assert got == [str(e.entry_id) for e in es]
    assert snapshot(d) == snap


def test_15_first_segment_deleted_is_detected_last_is_not(
    segments: tuple[Path, list[WALEntry], list[Path], Snapshot],
) -> None:
    d, es, segs, snap = segments
    restore(d, snap)
    segs[0].unlink()
    for mode in ("strict", "tolerate_tail"):  # the manifest owes LSN 1: never a shorter log
        with pytest.raises(WALMissingSegmentError, match="was deleted"):
            WALStorage(d, StorageOptions(recovery=mode))  # type: ignore[arg-type]
    restore(d, snap)
    segs[-1].unlink()
    got, log = open_ids(d, "strict")  # a known limitation, documented in the table
    log.close()
    assert 0 < len(got) < len(es)


# ---------------------------------------------------------------- 16


def test_16_we_never_repair_twice(
    one_segment: tuple[Path, list[WALEntry], Path, Snapshot, Pad],
) -> None:
    d, _, seg, snap, pad = one_segment
    whole = snap[seg.name][: data_end(snap[seg.name])]
    start, last = lines_of(seg)[-1]
    image = pad(whole[: start + 33])
    restore(d, {**snap, seg.name: image})
    with WALStorage(d) as log:
        assert log.recovery_report.truncated_bytes == len(image) - start
    after_first = snapshot(d)
    with WALStorage(d) as log:
        rep = log.recovery_report
        assert rep.truncated_bytes == 0 and rep.defects == [] and rep.broken_files == []
        assert log.count(WALEntryStatus.PENDING) == 4
    assert snapshot(d) == after_first
    # a second torn tail later keeps the first evidence and adds a numbered file
    write_at_end(seg, last[:10])
    with WALStorage(d) as log:
        assert log.recovery_report.broken_files == [seg.name + ".broken.1"]
    assert (d / (seg.name + ".broken")).read_bytes() == last[:33]
    shutil.rmtree(d)


# ------------------------------------------------- 17, 18: the zero rest, read backwards

BIG = 3 * (1 << 20) + 12345  # a preallocated segment several backward reads (1 MiB) long


def _outcome(d: Path, mode: str) -> tuple[object, ...]:
    """What an open does with ``d``: its report (without timing) or its error, and the files."""
    try:
        log = WALStorage(d, StorageOptions(recovery=mode))  # type: ignore[arg-type]
    except WALCorruptionError as exc:
        result: object = (type(exc).__name__, exc.path, exc.line, exc.offset, exc.problem)
    else:
        rep = log.recovery_report.to_dict()
        rep.pop("seconds")
        result = (rep, [str(e.entry_id) for e in log.iter_entries()], log.next_lsn)
        log.close()
    return result, snapshot(d)


def _images(whole: bytes, start: int, last: bytes) -> dict[str, bytes]:
    """Defects at the logical end of a big preallocated segment, and deep in its zero rest."""
    deep = BIG - 5000  # near the file's end, several MiB of zeros before it
    garbage = b'0123456789abcdef {"t":"entry","lsn":9'

    def at(image: bytes, offset: int, data: bytes) -> bytes:
        return image[:offset] + data + image[offset + len(data) :]

    clean = whole + bytes(BIG - len(whole))
    return {
        "clean": clean,
        "torn-record-then-zeros": whole[: start + 40] + bytes(BIG - start - 40),
        "garbage-deep-in-the-zeros": at(clean, deep, garbage),
        "garbage-line-deep-in-the-zeros": at(clean, deep, garbage + b"}\n"),
        "a-good-record-deep-in-the-zeros": at(clean, deep, last),
        "garbage-in-the-last-byte": at(clean, BIG - 1, b"x"),
        "torn-record-and-garbage-deep": at(
            whole[: start + 40] + bytes(BIG - start - 40), deep, b"x"
        ),
        "a-zero-gap-then-garbage-near-the-records": at(clean, len(whole) + 100, garbage),
    }


@pytest.mark.parametrize("mode", ["tolerate_tail", "strict", "skip_corrupt"])
def test_17_18_the_zero_rest_is_read_backwards_and_judged_as_before(
    mode: str,
    one_segment: tuple[Path, list[WALEntry], Path, Snapshot, Pad],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """17: zeros after the last record, or after a torn record, of a big preallocated
    segment. 18: non-zero bytes deep in the zero rest (garbage, a stray line, a good record
    after a hole beyond the tear bound, one byte at the very end). Each image is opened
    twice: with the data end found backwards (what an open does) and with every byte read
    forwards (``data_end`` patched out: the reading before the backward scan existed). The
    outcome (report, entries, error, every file's bytes) is the same."""
    d, _, seg, snap, _ = one_segment
    whole = snap[seg.name][: data_end(snap[seg.name])]
    start, last = lines_of(seg)[-1]
    import wal.log.recovery as recovery

    for name, image in _images(whole, start, last).items():
        restore(d, {**snap, seg.name: image})
        backwards = _outcome(d, mode)
        restore(d, {**snap, seg.name: image})
        with monkeypatch.context() as m:
            m.setattr(recovery, "data_end", lambda fd, size: size)  # read every byte forwards
            forwards = _outcome(d, mode)
        assert backwards == forwards, name
    # what the outcomes are (both ways): the clean rest is the end; the rest is a defect
    restore(d, {**snap, seg.name: _images(whole, start, last)["clean"]})
    (rep, *_), _ = _outcome(d, mode)
    assert isinstance(rep, dict) and rep["spare_bytes"] == BIG - len(whole), rep
    assert rep["defects"] == [] and rep["truncated_bytes"] == 0
    restore(d, {**snap, seg.name: _images(whole, start, last)["garbage-deep-in-the-zeros"]})
    result, files = _outcome(d, mode)
    if mode == "strict":
        assert result[0] == "WALCorruptionError"  # type: ignore[index]
    else:
        rep = result[0]  # type: ignore[index]
        assert rep["defects"] and rep["torn_tail_bytes"] == BIG - len(whole)
        assert files[seg.name] == whole  # cut back to the last record: nothing acknowledged lost
