"""Issue 21, items 2 and 3: the manifest never costs a PENDING entry, and repair mends it.

2. A MANIFEST naming a later segment made a writable open delete the earlier segments with
   their PENDING entries (14 of 40 lost), with ``verify`` and ``status`` silent. Rule: an open
   never deletes a segment that holds an entry not completed; a manifest that disagrees with
   the segments present is a reported defect (``verify``, ``status``), and ``repair`` moves
   it back. A segment before the manifest whose entries are all COMPLETED is what an
   interrupted compaction leaves: the open still removes it.
3. A corrupt MANIFEST (garbage, a bad first LSN, a symlink, a directory, an unknown version)
   made open and ``status`` refuse the log while ``atb wal repair`` said "no defects, nothing
   to repair": repair mends everything open refuses.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from helpers_log import make_entry

from cli.main import atb
from wal import WALCorruptionError, WALEntryStatus, WALStorage
from wal.errors import WALMissingSegmentError
from wal.log.fileops import OSFileOps
from wal.log.manifest import MANIFEST_NAME, read_manifest, write_manifest
from wal.log.record import encode_line
from wal.log.repair import repair_log
from wal.log.segment import list_segments
from wal.log.verify import verify_log

N = 40


def _log(d: Path, completed: int = 0, failed: int = 0) -> list[str]:
    """40 entries over several segments; the first ``completed`` COMPLETED, then ``failed``
    FAILED, the rest PENDING."""
    with WALStorage(d, max_segment_bytes=4096) as log:
        got = [log.append(make_entry(i, blob=300)) for i in range(N)]
        for e in got[:completed]:
            log.update_status(e, WALEntryStatus.COMPLETED)
        for e in got[completed : completed + failed]:
            log.update_status(e, WALEntryStatus.FAILED, "refused")
    assert len(list_segments(d)) >= 4
    return [str(e.entry_id) for e in got]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name != "LOCK"}


def _entries(d: Path) -> list[str]:
    with WALStorage.open_readonly(d) as log:
        return [str(e.entry_id) for e in log.iter_entries()]


def _cli(d: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(atb, ["wal", "--dir", str(d), *args])
    return res.exit_code, res.output


def test_a_manifest_naming_a_later_segment_never_deletes_pending_entries(tmp_path: Path) -> None:
    d = tmp_path / "log"
    ids = _log(d)
    segs = list_segments(d)
    write_manifest(OSFileOps(), d, segs[2][0])  # names the third segment
    before = {k: v for k, v in _files(d).items() if k.endswith(".wal")}
    with pytest.raises(WALCorruptionError, match="manifest") as info:
        WALStorage(d)
    assert "PENDING" in str(info.value) and "repair" in str(info.value)
    assert {k: v for k, v in _files(d).items() if k.endswith(".wal")} == before  # all there
    # verify and status say so beforehand
    rep = verify_log(d)
    assert not rep.ok and any(x.file == MANIFEST_NAME for x in rep.defects)
    code, out = _cli(d, "verify")
    assert code == 1 and "manifest" in out
    code, out = _cli(d, "status")
    assert code != 0 and "manifest" in out
    # repair moves the manifest back; every entry is there
    code, out = _cli(d, "repair", "--yes")
    assert code == 0, out
    assert read_manifest(d) == 1
    assert _entries(d) == ids
    with WALStorage(d) as log:
        assert len(list(log.iter_entries())) == N


def test_failed_entries_count_as_owed_too(tmp_path: Path) -> None:
    d = tmp_path / "log"
    _log(d, completed=N - 1, failed=1)  # everything COMPLETED but one dead letter
    segs = list_segments(d)
    write_manifest(OSFileOps(), d, segs[-1][0])
    with pytest.raises(WALCorruptionError, match="manifest"):
        WALStorage(d)
    assert len(list_segments(d)) == len(segs)


def test_repair_then_restore_the_first_segment_from_a_backup(tmp_path: Path) -> None:
    """The documented path: the first segment is lost, repair accepts it, then a backup of
    that segment turns up and is put back: its PENDING entries must not be deleted."""
    d = tmp_path / "log"
    ids = _log(d)
    first = list_segments(d)[0][1]
    backup = tmp_path / first.name
    shutil.copy(first, backup)
    first.unlink()
    with pytest.raises(WALMissingSegmentError):
        WALStorage(d)
    report = repair_log(d)
    assert report.opened and read_manifest(d) == list_segments(d)[0][0]
    shutil.copy(backup, first)  # the segment comes back
    with pytest.raises(WALCorruptionError, match="manifest"):
        WALStorage(d)
    assert first.exists()
    assert not verify_log(d).ok
    report = repair_log(d)
    assert report.opened and read_manifest(d) == 1
    assert _entries(d) == ids


def test_skip_corrupt_keeps_them_and_moves_the_manifest_back(tmp_path: Path) -> None:
    d = tmp_path / "log"
    ids = _log(d)
    write_manifest(OSFileOps(), d, list_segments(d)[1][0])
    with WALStorage(d, recovery="skip_corrupt") as log:
        assert [str(e.entry_id) for e in log.iter_entries()] == ids
        assert any("manifest" in x for x in log.recovery_report.defects)
    assert read_manifest(d) == 1
    with WALStorage(d) as log:
        assert len(list(log.iter_entries())) == N


def test_an_interrupted_compactions_completed_front_segment_is_still_removed(
    tmp_path: Path,
) -> None:
    d = tmp_path / "log"
    ids = _log(d, completed=N)
    segs = list_segments(d)
    with WALStorage.open_readonly(d) as log:
        in_first = [
            str(e.entry_id) for e in log.iter_entries() if e.lsn is not None and e.lsn < segs[1][0]
        ]
    assert in_first
    write_manifest(OSFileOps(), d, segs[1][0])  # the compaction moved it, then crashed
    assert verify_log(d).ok  # a note: the next open removes it
    with WALStorage(d) as log:
        left = [str(e.entry_id) for e in log.iter_entries()]
        assert log.recovery_report.removed_front_segments == 1
        assert log.get_stats().entries["completed"] == len(left)
        log.append(make_entry(99))
    assert left == [i for i in ids if i not in in_first]
    assert not segs[0][1].exists()


# ---------------------------------------------------------------- 3: a corrupt MANIFEST


def _plant(d: Path, how: str) -> None:
    m = d / MANIFEST_NAME
    m.unlink()
    if how == "garbage":
        m.write_bytes(b"not a manifest\n")
    elif how == "empty":
        m.write_bytes(b"")
    elif how == "bad-checksum":
        m.write_bytes(b"0000000000000000 " + orjson.dumps({"t": "manifest", "first": 1}) + b"\n")
    elif how == "bad-first":
        m.write_bytes(encode_line(orjson.dumps({"t": "manifest", "version": 1, "first": True})))
    elif how == "wrong-kind":
        m.write_bytes(encode_line(orjson.dumps({"t": "entry", "version": 1, "first": 1})))
    elif how == "two-records":
        line = encode_line(orjson.dumps({"t": "manifest", "version": 1, "first": 1}))
        m.write_bytes(line + line)
    elif how == "symlink":
        victim = d.parent / "victim"
        victim.write_bytes(b"precious")
        m.symlink_to(victim)
    elif how == "directory":
        m.mkdir()
    elif how == "tmp-directory":
        write_manifest(OSFileOps(), d, 1)
        (d / "MANIFEST.tmp").mkdir()
    elif how == "tmp-symlink":
        write_manifest(OSFileOps(), d, 1)
        victim = d.parent / "victim"
        victim.write_bytes(b"precious")
        (d / "MANIFEST.tmp").symlink_to(victim)


CORRUPT = [
    "garbage",
    "empty",
    "bad-checksum",
    "bad-first",
    "wrong-kind",
    "two-records",
    "symlink",
    "directory",
    "tmp-directory",
    "tmp-symlink",
]


@pytest.mark.parametrize("how", CORRUPT)
def test_repair_mends_a_manifest_that_open_refuses(tmp_path: Path, how: str) -> None:
    d = tmp_path / "log"
    ids = _log(d)
    _plant(d, how)
    with pytest.raises(Exception) as refused:
        WALStorage(d)
    assert "Traceback" not in str(refused.value)
    assert not verify_log(d).ok  # verify says so
    code, out = _cli(d, "verify")
    assert code == 1, out
    code, out = _cli(d, "repair", "--yes")
    assert code == 0, out
    assert "nothing to repair" not in out
    with WALStorage(d) as log:
        assert [str(e.entry_id) for e in log.iter_entries()] == ids
    assert read_manifest(d) == 1
    assert verify_log(d).ok
    victim = d.parent / "victim"
    if victim.exists():
        assert victim.read_bytes() == b"precious"
    code, out = _cli(d, "repair", "--yes")
    assert code == 0 and "nothing to repair" in out
    assert os.listdir(d)
