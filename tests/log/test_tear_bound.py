"""Issue 21, item 1: a zeroed page in the middle of the last segment is not a torn tail.

A lost page can only be a torn tail when what follows it belongs to the same unacknowledged
write. The writer never leaves more than ``TEAR_BOUND`` bytes unsynced (a larger record is
written alone), and each segment header records that bound (``"tear"``). So good records
after a hole that reach beyond the bound are acknowledged entries: ``strict`` refuses,
``tolerate_tail`` cuts them into a ``.suspect`` file and warns (``atb wal status`` exits 1),
``skip_corrupt`` keeps them; ``verify`` reports it; a cut that removes good records is always
reported. Real files throughout; ``CrashFS`` only to stop a write before its fsync.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from faultfs import CrashFS, SimulatedCrash
from helpers_log import data_end, make_entry

from cli.main import atb
from wal import StorageOptions, WALCorruptionError, WALStorage, WALWriteError
from wal.log.fileops import OSFileOps
from wal.log.record import encode_line
from wal.log.segment import PAGE, PREPARED_NAME, TEAR_BOUND, list_segments, segment_name
from wal.log.verify import verify_log

N = 600


def _log(d: Path, n: int = N, **opts: object) -> list[str]:
    with WALStorage(d, **opts) as log:  # type: ignore[arg-type]
        got = [log.append(make_entry(i)) for i in range(n)]
    return [str(e.entry_id) for e in got]


def _zero_page(path: Path, page: int) -> None:
    data = bytearray(path.read_bytes())
    data[page * PAGE : (page + 1) * PAGE] = bytes(PAGE)
    path.write_bytes(bytes(data))


def _ids(d: Path, **opts: object) -> tuple[list[str], WALStorage]:
    log = WALStorage(d, **opts)  # type: ignore[arg-type]
    return [str(e.entry_id) for e in log.iter_entries()], log


def _status(d: Path) -> tuple[int, dict[str, object]]:
    res = CliRunner().invoke(atb, ["wal", "--dir", str(d), "status", "--json"])
    return res.exit_code, orjson.loads(res.stdout)


@pytest.fixture
def holed(tmp_path: Path) -> tuple[Path, list[str], int]:
    """600 acknowledged entries (default settings); one page zeroed a quarter in."""
    d = tmp_path / "log"
    ids = _log(d)
    seg = d / segment_name(1)
    size = data_end(seg.read_bytes())  # the records' end: zeros of the segment's space after
    assert size - size // 4 > TEAR_BOUND + PAGE  # good records reach far beyond the bound
    page = size // 4 // PAGE
    _zero_page(seg, page)
    return d, ids, page


def test_strict_refuses_a_zeroed_page_in_the_middle(holed: tuple[Path, list[str], int]) -> None:
    d, _, page = holed
    before = (d / segment_name(1)).read_bytes()
    with pytest.raises(WALCorruptionError) as info:
        WALStorage(d, recovery="strict")
    assert page * PAGE - 400 <= info.value.offset <= page * PAGE
    assert (d / segment_name(1)).read_bytes() == before


def test_tolerate_tail_keeps_the_bytes_warns_and_status_exits_1(
    holed: tuple[Path, list[str], int],
) -> None:
    d, ids, _ = holed
    seg = d / segment_name(1)
    # status before any writer opened it (a read-only open): a problem, exit 1
    code, doc = _status(d)
    assert code == 1
    assert any("hole" in str(p) for p in doc["health"]["problems"])  # type: ignore[index]
    before = seg.read_bytes()
    got, log = _ids(d)
    with log:
        rep = log.recovery_report
        assert rep.cut_records > 400  # reported: the good records that were cut
        assert any("hole" in w and "acknowledged" in w for w in rep.warnings)
        assert got == ids[: len(got)] and len(got) < N
    suspect = d / (seg.name + ".suspect")
    # every byte kept (the zeros of the segment's space after the records are not data)
    assert data_end(before) == len(seg.read_bytes()) + len(suspect.read_bytes())
    assert before[: data_end(before)] == seg.read_bytes() + suspect.read_bytes()
    code, doc = _status(d)  # and status keeps saying so while the file is there
    assert code == 1
    assert any(".suspect" in str(p) for p in doc["health"]["problems"])  # type: ignore[index]


def test_skip_corrupt_keeps_the_records_after_the_hole(holed: tuple[Path, list[str], int]) -> None:
    d, ids, _ = holed
    got, log = _ids(d, recovery="skip_corrupt")
    with log:
        assert got[-1] == ids[-1]  # the acknowledged entries after the hole are kept
        assert log.recovery_report.skipped_records >= 1 and log.recovery_report.defects


def test_verify_reports_the_hole_as_corruption(holed: tuple[Path, list[str], int]) -> None:
    d, _, _ = holed
    rep = verify_log(d)
    assert not rep.ok and not rep.opens
    assert any("hole" in x.problem and not x.torn_tail for x in rep.defects)
    res = CliRunner().invoke(atb, ["wal", "--dir", str(d), "verify"])
    assert res.exit_code == 1


def test_a_preallocated_segment_zero_rest_is_the_end_but_a_hole_before_records_is_not(
    tmp_path: Path,
) -> None:
    d = tmp_path / "log"
    opts = {"preallocate": "zero", "max_segment_bytes": 1 << 20}
    ids = _log(d, 2600, **opts)  # past half of the first segment: later ones preallocated
    last = list_segments(d)[-1][1]
    assert last.read_bytes().endswith(bytes(PAGE))  # its zero rest: the normal end
    assert verify_log(d).ok
    got, log = _ids(d, **opts)
    log.close()
    assert got == ids and log.recovery_report.cut_records == 0
    assert not log.recovery_report.warnings
    data = last.read_bytes()
    end = len(data.rstrip(b"\x00"))
    assert end > TEAR_BOUND + 3 * PAGE
    _zero_page(last, 1)  # a hole near its start, good records long after it, then zeros
    with pytest.raises(WALCorruptionError):
        WALStorage(d, recovery="strict", **opts)  # type: ignore[arg-type]
    got, log = _ids(d, **opts)
    log.close()
    assert log.recovery_report.warnings and log.recovery_report.cut_records > 0


def test_a_hole_within_the_bound_is_a_torn_tail_and_its_cut_records_are_reported(
    tmp_path: Path,
) -> None:
    """One unacknowledged multi-page write: an earlier page lost, later ones kept."""
    d = tmp_path / "log"
    fs = CrashFS(d, crash_at=None)
    log = WALStorage(d, fs=fs)
    acked = [log.append(make_entry(i)) for i in range(3)]
    fs.crash_at, fs.crash_when = len(fs.ops) + 2, "before"  # the write happens, not its fsync
    with pytest.raises((SimulatedCrash, WALWriteError)):
        log.append_many(make_entry(100 + i, blob=300) for i in range(60))  # ~9 pages
    cut_records = []
    for seed in range(8):
        img = d.parent / f"img{seed}"
        files = fs.crash_image(img, "hole", random.Random(seed))
        assert b"\x00" * 64 in files[segment_name(1)]
        with WALStorage(img) as again:
            got = [e.entry_id for e in again.iter_entries()]
            rep = again.recovery_report
        assert got[:3] == [e.entry_id for e in acked] and len(got) < 63
        assert not rep.warnings  # a crash, not damage
        cut_records.append(rep.cut_records)
        if rep.cut_records:
            assert any("good" in x for x in rep.defects)
    assert any(cut_records)  # some images kept good records after the hole: reported


class _Unsynced(OSFileOps):
    """The real file system, measuring the most bytes written between two fdatasyncs."""

    def __init__(self) -> None:
        self.pending: dict[int, list[int]] = {}
        self.worst: list[int] = []  # write sizes of the largest unsynced stretch
        self.preparing: set[int] = set()  # the next segment being zero-filled: no record there

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        if path.endswith(PREPARED_NAME) and flags & os.O_CREAT:
            self.preparing.add(fd)
        else:
            self.preparing.discard(fd)
        return fd

    def write(self, fd: int, data: bytes) -> int:
        n = super().write(fd, data)
        if fd in self.preparing:
            return n
        self.pending.setdefault(fd, []).append(n)
        if sum(self.pending[fd]) > sum(self.worst):
            self.worst = list(self.pending[fd])
        return n

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self.pending[fd] = []


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_the_writer_never_leaves_more_than_the_bound_unsynced(tmp_path: Path, fsync: str) -> None:
    fs = _Unsynced()
    with WALStorage(tmp_path / "log", StorageOptions(fsync=fsync), fs=fs) as log:  # type: ignore[arg-type]
        log.append_many(make_entry(i, blob=200) for i in range(2000))  # ~1 MB in one group
        big = log.append(make_entry(1, blob=3 * TEAR_BOUND))  # one record beyond the bound
        for i in range(600):
            log.append(make_entry(i, blob=200))
        log.append_many(make_entry(i, blob=200) for i in range(500))
    assert sum(fs.worst) <= TEAR_BOUND or len(fs.worst) == 1, fs.worst[:5]
    with WALStorage(tmp_path / "log") as again:
        assert again.get_entry(big.entry_id).kwargs["blob"] == "x" * 3 * TEAR_BOUND
        assert again.get_stats().next_lsn == 3102


def test_the_header_records_the_bound_and_an_old_header_reads_with_the_default(
    tmp_path: Path,
) -> None:
    d = tmp_path / "log"
    ids = _log(d, N)
    seg = d / segment_name(1)
    lines = seg.read_bytes().splitlines(keepends=True)
    header = orjson.loads(lines[0][17:-1])
    assert header["tear"] == TEAR_BOUND
    del header["tear"]  # a segment written before the bound was recorded
    seg.write_bytes(encode_line(orjson.dumps(header)) + b"".join(lines[1:]))
    got, log = _ids(d)
    log.close()
    assert got == ids
    _zero_page(seg, 5)
    with pytest.raises(WALCorruptionError):
        WALStorage(d, recovery="strict")
    assert not verify_log(d).opens


@pytest.mark.parametrize("tear", [0, 12, True, "65536", -1])
def test_a_bad_tear_bound_in_a_header_is_a_located_defect(tmp_path: Path, tear: object) -> None:
    d = tmp_path / "log"
    _log(d, 3)
    seg = d / segment_name(1)
    lines = seg.read_bytes().splitlines(keepends=True)
    header = orjson.loads(lines[0][17:-1])
    header["tear"] = tear
    seg.write_bytes(encode_line(orjson.dumps(header)) + b"".join(lines[1:]))
    with pytest.raises(WALCorruptionError, match="tear") as info:
        WALStorage(d)
    assert info.value.line == 1
    assert any("tear" in x.problem for x in verify_log(d).defects)


def test_unsafe_never_records_no_bound(tmp_path: Path) -> None:
    d = tmp_path / "log"
    _log(d, 3, fsync="unsafe_never")
    header = orjson.loads((d / segment_name(1)).read_bytes().split(b"\n")[0][17:])
    assert header["tear"] is None
