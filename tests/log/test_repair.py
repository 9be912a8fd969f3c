"""``repair_log``: every case of the corruption table ends in a log that opens, keeps every
undamaged entry, and a byte-exact backup of what was there before."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from helpers_log import check_files, lines_of, make_entry, write_at_end
from test_verify import CASES, Case, build_log, line_at, segments, snapshot

from wal import (
    WALCorruptionError,
    WALEntry,
    WALEntryStatus,
    WALLockedError,
    WALStorage,
    WALUnsafeFileError,
)
from wal.log.record import decode_line, encode_line
from wal.log.repair import repair_log
from wal.log.verify import verify_log


def entries_of(d: Path) -> dict[int, tuple[str, WALEntryStatus]]:
    with WALStorage.open_readonly(d) as log:
        return {e.lsn or 0: (str(e.entry_id), e.status) for e in log.iter_entries()}


@pytest.mark.parametrize("prealloc", ["zero", "off"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_repair_salvages_every_good_record(case: Case, prealloc: str, tmp_path: Path) -> None:
    d = tmp_path / "wal"
    ids = build_log(d, preallocate=prealloc)
    destroyed, where = case.mutate(d)
    damaged = {name: data for name, (data, _) in snapshot(d).items() if name != "LOCK"}

    rep = repair_log(d)

    # the backup is a sibling directory holding the damaged bytes exactly, owner-only
    assert rep.backup is not None
    backup = Path(rep.backup)
    assert backup.parent == d.parent and backup.name.startswith("wal.backup-")
    assert {p.name: p.read_bytes() for p in backup.iterdir()} == damaged
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in backup.iterdir())
    # every defect is reported where it was
    assert [(x.file, x.line, x.offset) for x in rep.dropped] == where
    # the repaired log opens normally, verifies clean, and passes the independent checker
    assert rep.opened
    assert verify_log(d).ok
    check_files(d)
    # exactly the undamaged entries are there, with their ids and statuses
    got = entries_of(d)
    assert set(got) == set(ids) - destroyed
    assert all(got[lsn][0] == ids[lsn] for lsn in got)
    # the two status records (LSNs n+1, n+2) hold unless the case destroyed them
    n = len(ids)
    if 1 in got:
        assert got[1][1] is (
            WALEntryStatus.PENDING if n + 1 in destroyed else WALEntryStatus.COMPLETED
        )
    if 2 in got:
        assert got[2][1] is (
            WALEntryStatus.PENDING if n + 2 in destroyed else WALEntryStatus.FAILED
        )
    # and it takes appends again, LSNs continuing after everything it ever held
    top = max(ids) + 2
    with WALStorage(d) as log:
        e = log.append(make_entry(1000))
    assert e.lsn is not None and e.lsn > top - len(destroyed) - 2
    with WALStorage(d) as log:
        assert log.get_entry(e.entry_id).lsn == e.lsn
    check_files(d)


@pytest.mark.parametrize("zeros", [0, 3000])
def test_nothing_to_repair_makes_no_backup(zeros: int, tmp_path: Path) -> None:
    d = tmp_path / "wal"
    build_log(d, n=3)
    # a preallocated last segment's rest (more of it) is not a defect
    write_at_end(max(d.glob("*.wal")), bytes(zeros))
    before = snapshot(d)
    rep = repair_log(d)
    assert rep.nothing_to_do and rep.backup is None and rep.opened
    assert [p.name for p in tmp_path.iterdir()] == ["wal"]
    after = snapshot(d)
    assert {k: v[0] for k, v in after.items() if k != "LOCK"} == {
        k: v[0] for k, v in before.items() if k != "LOCK"
    }


def test_repair_twice_is_a_no_op(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    build_log(d)
    CASES[0].mutate(d)
    assert repair_log(d).backup is not None
    again = repair_log(d)
    assert again.nothing_to_do
    assert len(list(tmp_path.glob("wal.backup-*"))) == 1


def test_refused_while_a_writer_holds_the_log(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    build_log(d)
    with WALStorage(d) as log:
        seg = sorted(d.glob("*.wal"))[0]
        data = bytearray(seg.read_bytes())
        data[-30] ^= 2  # damage a sealed segment under the running writer
        seg.write_bytes(bytes(data))
        before = snapshot(d)
        with pytest.raises(WALLockedError) as info:
            repair_log(d)
        assert info.value.pid == os.getpid()
        assert snapshot(d) == before
        assert log.next_lsn > 1
    assert [p.name for p in tmp_path.iterdir()] == ["wal"]  # no backup either


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(WALCorruptionError, match="no log directory"):
        repair_log(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_repair_leaves_intact_segments_alone_and_their_gaps_detected(tmp_path: Path) -> None:
    """Repairing one defect rewrites only the segment that holds it: an intact sealed
    segment keeps its bytes and its open range (a fixed range would make any later missing
    record in it pass as a compaction's gap), so removing a record from it afterwards is
    still found, by the open and by ``verify``."""
    d = tmp_path / "wal"
    build_log(d)
    sealed = segments(d)[:-1]
    assert len(sealed) >= 2
    before = {p.name: p.read_bytes() for p in sealed}
    CASES[3].mutate(d)  # torn_tail: in the last segment only
    rep = repair_log(d)
    assert rep.opened and rep.segments_rewritten == [segments(d)[-1].name], rep
    assert {p.name: p.read_bytes() for p in sealed} == before
    victim = sealed[1]
    off, raw = line_at(victim, 3)  # a whole record removed from a sealed segment
    data = victim.read_bytes()
    victim.write_bytes(data[:off] + data[off + len(raw) :])
    with pytest.raises(WALCorruptionError):
        WALStorage(d).close()
    assert not verify_log(d).ok


def test_a_segment_symlinked_from_elsewhere_is_refused_and_nothing_changes(
    tmp_path: Path,
) -> None:
    """A sealed segment moved to another disk and linked back: an open refuses the link; a
    repair must not move it aside (its entries, acknowledged ones, would be dropped as a
    gap): refused, no backup, the link and its target as they were, the way out named."""
    d = tmp_path / "wal"
    ids = build_log(d)
    seg = segments(d)[1]
    elsewhere = tmp_path / "other-disk" / seg.name
    elsewhere.parent.mkdir()
    os.rename(seg, elsewhere)
    seg.symlink_to(elsewhere)
    kept = elsewhere.read_bytes()
    with pytest.raises(WALUnsafeFileError, match="symlink") as info:
        repair_log(d)
    assert "mv TARGET LINK" in str(info.value) and "changed nothing" in str(info.value)
    assert seg.is_symlink() and elsewhere.read_bytes() == kept
    assert not list(tmp_path.glob("wal.backup-*"))
    os.unlink(seg)  # the operator puts the file back
    os.rename(elsewhere, seg)
    assert verify_log(d).ok
    assert set(entries_of(d)) == set(ids)


def test_a_backup_that_cannot_be_written_leaves_no_partial_backup(tmp_path: Path) -> None:
    """The disk fills while repair copies the log (RLIMIT_FSIZE: each write past it fails
    with EFBIG, as a full disk fails with ENOSPC): one error naming the file, no directory
    left that looks like a backup, and the log exactly as it was."""
    d = tmp_path / "wal"
    build_log(d)
    CASES[0].mutate(d)  # a defect: repair would back the log up, then rewrite
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.name != "LOCK"}
    child = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
        "from wal.log.repair import repair_log\n"
        "try:\n"
        "    repair_log(sys.argv[1])\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", child, str(d)], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.startswith("WALWriteError"), out.stdout + out.stderr
    assert ".wal" in out.stdout and "partial backup was removed" in out.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["wal"]  # no backup, partial or not
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.name != "LOCK"} == before


def _acknowledged_with_a_stale_checksum(d: Path) -> WALEntry:
    """An entry appended (and acknowledged) whose content checksum no longer matches its
    content: built with ``dataclasses.replace`` from another one. The writer takes it; only
    ``verify`` checks the content checksum, and a normal open indexes and replays it."""
    original = make_entry(777)
    forged = dataclasses.replace(original, kwargs={**original.kwargs, "qty": Decimal("9.50")})
    assert not forged.verify()
    with WALStorage(d) as log:
        return log.append(forged)


def _planted_duplicate(d: Path) -> int:
    """A second record of an entry already in the log, written at the end of the log."""
    first = lines_of(segments(d)[0])
    rec = decode_line(first[1][1].rstrip(b"\n"))  # the first entry
    with WALStorage.open_readonly(d) as log:
        lsn = log.next_lsn
    write_at_end(segments(d)[-1], encode_line(orjson.dumps(dict(rec, lsn=lsn))))
    return lsn


def test_records_a_normal_open_accepts_are_never_dropped(tmp_path: Path) -> None:
    """An entry whose content checksum does not match and an entry id written twice are
    defects only verify reports: the open indexes both and replays them (the first was
    appended and acknowledged). Repair keeps them, with or without a real defect to mend,
    and says so; it never drops an acknowledged entry the open would have applied."""
    d = tmp_path / "wal"
    ids = build_log(d)
    forged = _acknowledged_with_a_stale_checksum(d)
    dup_lsn = _planted_duplicate(d)
    with WALStorage.open_readonly(d) as log:  # what the open accepts and replays
        assert forged.entry_id in {e.entry_id for e in log.get_pending_entries()}
        assert log.recovery_report.records == verify_log(d).records + 2

    # only such records: nothing to repair, no backup, nothing changed
    before = snapshot(d)
    rep = repair_log(d)
    assert rep.nothing_to_do and rep.dropped == [] and not list(tmp_path.glob("wal.backup-*"))
    assert sorted(x.lsn or 0 for x in rep.kept) == [forged.lsn, dup_lsn]
    assert {k: v for k, v in snapshot(d).items() if k != "LOCK"} == {
        k: v for k, v in before.items() if k != "LOCK"
    }

    # with a real defect beside them: that one is dropped, they stay
    destroyed, where = CASES[0].mutate(d)  # a bit flipped in a sealed segment
    rep = repair_log(d)
    assert rep.backup is not None and rep.opened
    assert [(x.file, x.line, x.offset) for x in rep.dropped] == where
    assert sorted(x.lsn or 0 for x in rep.kept) == [forged.lsn, dup_lsn]
    assert all(x.verify_only for x in rep.kept) and not any(x.verify_only for x in rep.dropped)
    left = verify_log(d)
    assert left.opens and all(x.verify_only for x in left.defects) and len(left.defects) == 2
    with WALStorage(d) as log:
        entry = log.get_entry(forged.entry_id)
        assert entry.lsn == forged.lsn and entry.kwargs["qty"] == Decimal("9.50")
        assert entry.status is WALEntryStatus.PENDING
        assert forged.entry_id in {e.entry_id for e in log.get_pending_entries()}
    assert set(entries_of(d)) == set(ids) - destroyed | {forged.lsn or 0, dup_lsn}


def test_the_cli_keeps_what_only_verify_flags(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    build_log(d, n=3)
    forged = _acknowledged_with_a_stale_checksum(d)
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "wal", "--dir", str(d), "repair", "--yes"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "nothing to repair: 1 record(s) only verify flags stay" in out.stdout
    assert f"kept     {segments(d)[-1].name}" in out.stdout
    with WALStorage(d) as log:
        assert log.get_entry(forged.entry_id).lsn == forged.lsn
