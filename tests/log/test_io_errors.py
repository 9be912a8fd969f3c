"""ENOSPC, EIO and short writes: the failing append is not acknowledged, the log stops, and a
reopen recovers every acknowledged entry and nothing partial.

The errors are injected through ``CrashFS`` where the real fault cannot be produced (EIO on
``fdatasync``), and produced for real where it can: a 64 KiB tmpfs filled up (root only;
skipped with the reason otherwise).
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from faultfs import CrashFS, FaultRule
from helpers_log import content, wait_for

from wal import WALEntry, WALEntryStatus, WALStorage, WALWriteError
from wal.errors import WALCompactionError
from wal.log.segment import PREPARED_NAME, TMP_SUFFIX


def entry(n: int, pad: int = 0) -> WALEntry:
    kwargs: dict[str, Any] = {"n": n, "symbol": "ETHUSDT", "amount": Decimal(f"{n}.10")}
    if pad:
        kwargs["pad"] = "q" * pad
    return WALEntry.create("atomic_balance_update", kwargs=kwargs)


def assert_recovers(
    directory: Path,
    acked: list[WALEntry],
    attempted: list[WALEntry],
    may_drop: frozenset[uuid.UUID] = frozenset(),
    **options: Any,
) -> list[WALEntry]:
    """Open with the real file system: every acknowledged entry, a prefix of what was tried
    (less ``may_drop``: COMPLETED before a compaction), each one intact; the log then takes an
    append and reopens strictly. Returns the entries."""
    order = {e.entry_id: i for i, e in enumerate(attempted)}
    by_id = {e.entry_id: e for e in attempted}
    with WALStorage(directory, **options) as log:
        got = list(log.iter_entries())
        assert not list(directory.glob("*" + TMP_SUFFIX))
        new = log.append(entry(10_000))
    idx = [order[e.entry_id] for e in got]  # KeyError: an entry nobody appended
    expect = [i for i, e in enumerate(attempted) if e.entry_id not in may_drop or i in idx]
    assert idx == expect[: len(idx)], f"not a prefix of what was appended: {idx}"
    for e in got:
        assert e.verify() and content(e) == content(by_id[e.entry_id])
    ids = {e.entry_id for e in got}
    lost = [e.lsn for e in acked if e.entry_id not in ids and e.entry_id not in may_drop]
    assert not lost, f"acknowledged entries lost: LSNs {lost}"
    for a in acked:
        if a.entry_id in ids:
            assert next(e for e in got if e.entry_id == a.entry_id).lsn == a.lsn
    with WALStorage(directory, recovery="strict", **options) as log:
        again = list(log.iter_entries())
    assert [e.entry_id for e in again] == [*[e.entry_id for e in got], new.entry_id]
    return got


# ---------------------------------------------------------------------- injected errors


# Counted on segment files by name (zero-padded first LSNs): a new log's first segment is
# prepared under PREPARED_NAME (its zeros and header written and synced there), so its name
# sees one write and one fdatasync per append or status update. The fourth (the third
# append) is the one that fails. (The manifest written at creation is MANIFEST.tmp, renamed.)
SEG = "0" * 12
CASES = {
    "write-ENOSPC": FaultRule("write", nth=4, errno=errno.ENOSPC, path_contains=SEG),
    "write-EIO": FaultRule("write", nth=4, errno=errno.EIO, path_contains=SEG),
    "short-write-then-ENOSPC": FaultRule(
        "write", nth=4, errno=errno.ENOSPC, short=57, path_contains=SEG
    ),
    "fdatasync-EIO": FaultRule("fdatasync", nth=4, errno=errno.EIO, path_contains=SEG),
    "fdatasync-ENOSPC": FaultRule("fdatasync", nth=4, errno=errno.ENOSPC, path_contains=SEG),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_failed_write_or_fsync_stops_the_log_and_loses_nothing_acknowledged(
    case: str, tmp_path: Path
) -> None:
    rule = CASES[case]
    d = tmp_path / "log"
    fs = CrashFS(d, rules=[rule])
    attempted = [entry(i) for i in range(5)]
    log = WALStorage(d, fs=fs)
    try:
        acked = [log.append(attempted[0]), log.append(attempted[1])]
        log.update_status(acked[0], WALEntryStatus.SYNCING)
        with pytest.raises(WALWriteError) as info:
            log.append(attempted[2])
        assert info.value.errno == rule.errno
        assert rule.fired == 1
        ops_at_failure = fs.op_count
        # the log refuses everything from now on: nothing is retried, above all not the fsync
        with pytest.raises(WALWriteError):
            log.append(attempted[3])
        with pytest.raises(WALWriteError):
            log.append_many([attempted[4]])
        with pytest.raises(WALWriteError):
            log.update_status(acked[1], WALEntryStatus.COMPLETED)
        with pytest.raises(WALWriteError):
            log.sync()
        with pytest.raises(WALWriteError):
            log.compact()
        assert log.get_stats().failed_write is not None
        # reading still works
        assert log.get_entry(acked[1].entry_id).entry_id == acked[1].entry_id
    finally:
        log.close()
    assert fs.op_count == ops_at_failure, f"operations after the failure: {fs.ops[ops_at_failure:]}"
    # what a power loss right now would leave: the failed fsync's bytes never reach the disk
    image = tmp_path / "image"
    fs.crash_image(image, "keep")
    got = assert_recovers(image, acked, attempted)
    assert got[0].status is WALEntryStatus.SYNCING
    assert len(got) == 2  # the failed append's bytes were never made durable
    # the files as they are (the page cache survived): the failed entry may be there whole
    # (its write succeeded, only its fsync failed), never in part
    got = assert_recovers(d, acked, attempted)
    assert len(got) == (3 if case.startswith("fdatasync") else 2)


def test_the_failed_fsync_is_not_retried_even_when_a_later_fsync_would_succeed(
    tmp_path: Path,
) -> None:
    """fsyncgate: a retry on the same descriptor "succeeds" with the data gone."""
    d = tmp_path / "log"
    fs = CrashFS(d, rules=[FaultRule("fdatasync", nth=2, errno=errno.EIO, path_contains=SEG)])
    with WALStorage(d, fs=fs) as log:
        ok = log.append(entry(1))
        with pytest.raises(WALWriteError):
            log.append(entry(2))
        syncs = [op for op, _ in fs.ops].count("fdatasync")
        with pytest.raises(WALWriteError):
            log.append(entry(3))
        assert [op for op, _ in fs.ops].count("fdatasync") == syncs
    image = tmp_path / "image"
    fs.crash_image(image, "keep")
    assert_recovers(image, [ok], [ok])


def test_a_failed_interval_sync_is_not_retried_either(tmp_path: Path) -> None:
    """fsyncgate in interval mode: the sync that failed poisons the log like an append's."""
    d = tmp_path / "log"
    # the segment's fdatasyncs by its name (its header's was under PREPARED_NAME): 1, the
    # first sync; 2, fails
    fs = CrashFS(d, rules=[FaultRule("fdatasync", nth=2, errno=errno.EIO, path_contains=SEG)])
    with WALStorage(d, fs=fs, fsync="interval", fsync_interval_ms=60_000) as log:
        ok = log.append(entry(1))
        log.sync()  # 1
        log.append(entry(2))
        with pytest.raises(WALWriteError):
            log.sync()  # 2: fails; entry 2's pages are marked clean, their data gone
        syncs = [op for op, _ in fs.ops].count("fdatasync")
        with pytest.raises(WALWriteError):
            log.sync()  # a retry would "succeed" and believe entry 2 durable
        with pytest.raises(WALWriteError):
            log.append(entry(3))
        assert [op for op, _ in fs.ops].count("fdatasync") == syncs
    image = tmp_path / "image"
    fs.crash_image(image, "keep")
    assert_recovers(image, [ok], [ok])


@pytest.mark.parametrize(
    ("rule", "prealloc", "n_acked"),
    [
        # the next segment (one that grows) cannot be created: 3 entries fill the first
        (FaultRule("open", nth=2, errno=errno.ENOSPC, path_contains=SEG), "off", 3),
        (FaultRule("write", nth=1, errno=errno.ENOSPC, path_contains="0000004.wal"), "off", 3),
        (FaultRule("fdatasync", nth=1, errno=errno.EIO, path_contains="0000004.wal"), "off", 3),
        (
            FaultRule("fsync_dir", nth=3, errno=errno.EIO),
            "off",
            3,
        ),  # 1: first segment's, 2: manifest
        # the second prepared segment cannot be put in place (3 entries fill the first, a
        # whole 4 KiB segment prepared when the log was created: its write 1 and fdatasync 1
        # were its zeros, 2 its header, rename 1 its name); 3 is the next one's zeros, 4 its
        # header
        (FaultRule("write", nth=4, errno=errno.ENOSPC, path_contains=PREPARED_NAME), "zero", 3),
        (FaultRule("fdatasync", nth=4, errno=errno.EIO, path_contains=PREPARED_NAME), "zero", 3),
        (FaultRule("rename", nth=2, errno=errno.EIO, path_contains=PREPARED_NAME), "zero", 3),
        (FaultRule("fsync_dir", nth=3, errno=errno.EIO), "zero", 3),
    ],
    ids=[
        "open",
        "header-write",
        "header-fdatasync",
        "fsync_dir",
        "prepared-header-write",
        "prepared-header-fdatasync",
        "prepared-rename",
        "prepared-fsync_dir",
    ],
)
def test_a_failed_rotation_stops_the_log_and_loses_nothing_acknowledged(
    rule: FaultRule, prealloc: str, n_acked: int, tmp_path: Path
) -> None:
    d = tmp_path / "log"
    fs = CrashFS(d, rules=[rule])
    attempted = [entry(i, pad=900) for i in range(6)]
    acked = []
    with WALStorage(d, fs=fs, max_segment_bytes=4096, preallocate=prealloc) as log:  # type: ignore[arg-type]
        for e in attempted:
            try:
                acked.append(log.append(e))
            except WALWriteError:
                break
        assert rule.fired == 1 and len(acked) == n_acked, (rule, len(acked))
        with pytest.raises(WALWriteError):
            log.append(entry(99))
    assert_recovers(d, acked, attempted, max_segment_bytes=4096)
    image = tmp_path / "image"
    fs.crash_image(image, "drop")
    assert_recovers(image, acked, attempted, max_segment_bytes=4096)


@pytest.mark.parametrize(
    "rule",
    [
        FaultRule("write", nth=1, errno=errno.ENOSPC, path_contains=TMP_SUFFIX),
        FaultRule("fdatasync", nth=1, errno=errno.EIO, path_contains=TMP_SUFFIX),
        FaultRule("rename", nth=1, errno=errno.EIO, path_contains=TMP_SUFFIX),
        FaultRule("fsync_dir", nth=5, errno=errno.EIO),  # 1-3: new segments', 4: manifest
    ],
    ids=["tmp-write", "tmp-fdatasync", "rename", "fsync_dir"],
)
def test_a_failed_compaction_loses_nothing(rule: FaultRule, tmp_path: Path) -> None:
    """A failure writing the temporary file leaves the log writable (WALCompactionError, the
    file removed); from the rename on, the log stops (the files and the index may differ)."""
    d = tmp_path / "log"
    fs = CrashFS(d, rules=[rule])
    attempted = [entry(i, pad=900) for i in range(4)]
    before_rename = rule.path_contains == TMP_SUFFIX and rule.op != "rename"
    with WALStorage(d, fs=fs, max_segment_bytes=4096) as log:
        acked = [log.append(e) for e in attempted]
        log.update_status(acked[1], WALEntryStatus.COMPLETED)  # segment 1 gets rewritten
        with pytest.raises(WALCompactionError if before_rename else WALWriteError):
            log.compact()
        assert rule.fired == 1
        if before_rename:
            assert not list(d.glob("*" + TMP_SUFFIX))
            attempted.append(entry(99))
            acked.append(log.append(attempted[-1]))  # compaction is optional: appends go on
        else:
            with pytest.raises(WALWriteError):
                log.append(entry(99))
    dropped = frozenset({acked[1].entry_id})
    got = assert_recovers(d, acked, attempted, dropped, max_segment_bytes=4096)
    assert [e.entry_id for e in got] in (
        [e.entry_id for e in acked],
        [e.entry_id for i, e in enumerate(acked) if i != 1],  # the rename went through
    )
    done = next((e for e in got if e.entry_id == acked[1].entry_id), None)
    assert done is None or done.status is WALEntryStatus.COMPLETED


def test_concurrent_appenders_all_get_the_error_of_a_failing_fsync(tmp_path: Path) -> None:
    d = tmp_path / "log"
    release = threading.Event()
    rule = FaultRule("fdatasync", nth=1, errno=errno.EIO, hold=release, path_contains=SEG)
    fs = CrashFS(d, rules=[rule])
    entries = [entry(i) for i in range(6)]
    outcome: dict[int, BaseException | WALEntry] = {}

    def appender(i: int) -> None:
        try:
            outcome[i] = log.append(entries[i])
        except BaseException as exc:
            outcome[i] = exc

    log = WALStorage(d, fs=fs)
    try:
        leader = threading.Thread(target=appender, args=(0,))
        leader.start()
        assert rule.reached.wait(10), "the leader never reached its fdatasync"
        followers = [threading.Thread(target=appender, args=(i,)) for i in range(1, 6)]
        for t in followers:
            t.start()
        # every follower has its LSN and waits for the leader's flush
        wait_for(lambda: log.next_lsn == 7, "the followers to queue up")
        release.set()
        for t in [leader, *followers]:
            t.join(10)
            assert not t.is_alive()
        assert all(isinstance(outcome[i], WALWriteError) for i in range(6)), outcome
        writes = [p for op, p in fs.ops if op == "write" and SEG in p]
        assert len(writes) == 1, "the followers' records were written after the failure"
        with pytest.raises(WALWriteError):
            log.append(entry(7))
    finally:
        release.set()
        log.close()
    got = assert_recovers(d, [], entries)
    assert len(got) <= 1  # at most the leader's (written, its fsync failed), whole


# ---------------------------------------------------------------------- a real full disk


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: cannot make a real full disk")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"mounting a 64k tmpfs is not permitted here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)


def test_a_real_full_disk_stops_the_log_and_loses_nothing_acknowledged(
    tiny_tmpfs: Path, tmp_path: Path
) -> None:
    d = tiny_tmpfs / "log"
    attempted: list[WALEntry] = []
    acked: list[WALEntry] = []
    completed: list[WALEntry] = []
    with WALStorage(d, max_segment_bytes=16384) as log:
        for i in range(1000):
            e = entry(i, pad=300 + 37 * (i % 7))  # odd sizes: records cross page borders
            attempted.append(e)
            try:
                acked.append(log.append(e))
                if i % 5 == 4:
                    log.update_status(acked[-2], WALEntryStatus.COMPLETED)
                    completed.append(acked[-2])
            except WALWriteError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        else:
            pytest.fail("64 KiB never filled up")
        with pytest.raises(WALWriteError):
            log.append(entry(-1))
        stats = log.get_stats()
    assert stats.failed_write is not None and len(acked) >= 20, (len(acked), stats.segments)
    copy = tmp_path / "copy"  # room to recover: the tmpfs cannot grow
    shutil.copytree(d, copy)
    got = assert_recovers(copy, acked, attempted, max_segment_bytes=16384)
    assert len(got) in (len(acked), len(acked) + 1)
    statuses = {e.entry_id: e.status for e in got}
    assert completed and all(statuses[a.entry_id] is WALEntryStatus.COMPLETED for a in completed)


# the manifest is written at creation (MANIFEST.tmp: open 1, write 1, fdatasync 1, rename 1);
# the compaction that removes the emptied front segment writes it a second time
MANIFEST_CASES = {
    "manifest-open-ENOSPC": FaultRule("open", nth=2, errno=errno.ENOSPC, path_contains="MANIFEST"),
    "manifest-write-ENOSPC": FaultRule(
        "write", nth=2, errno=errno.ENOSPC, path_contains="MANIFEST"
    ),
    "manifest-short-write-EIO": FaultRule(
        "write", nth=2, errno=errno.EIO, short=7, path_contains="MANIFEST"
    ),
    "manifest-fdatasync-EIO": FaultRule(
        "fdatasync", nth=2, errno=errno.EIO, path_contains="MANIFEST"
    ),
    "manifest-rename-EIO": FaultRule("rename", nth=2, errno=errno.EIO, path_contains="MANIFEST"),
    "front-segment-unlink-EIO": FaultRule(
        "unlink", nth=1, errno=errno.EIO, path_contains="00000000000000000001.wal"
    ),
}


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=list(MANIFEST_CASES))
def test_a_compaction_file_that_cannot_be_written_never_stops_the_log(
    case: str, tmp_path: Path
) -> None:
    """Issue 21 item 4: ENOSPC or EIO on MANIFEST.tmp (or on removing the emptied front
    segment) during compaction is a WALCompactionError naming that file; appends go on,
    nothing is left behind, and a reopen recovers every acknowledged entry."""
    rule = MANIFEST_CASES[case]
    d = tmp_path / "log"
    fs = CrashFS(d, rules=[rule])
    attempted = [entry(i, pad=900) for i in range(6)]
    with WALStorage(d, fs=fs, max_segment_bytes=4096) as log:
        acked = [log.append(e) for e in attempted]
        first_segment_lsns = [e for e in acked if e.lsn is not None and e.lsn <= 3]
        for e in first_segment_lsns:
            log.update_status(e, WALEntryStatus.COMPLETED)
        with pytest.raises(WALCompactionError) as info:
            log.compact()
        assert rule.fired == 1
        named = "MANIFEST.tmp" if case.startswith("manifest") else "00000000000000000001.wal"
        assert info.value.path is not None and info.value.path.name == named
        assert named in str(info.value) and "appends go on" in str(info.value)
        assert "not acknowledged" not in str(info.value)
        assert not (d / "MANIFEST.tmp").exists()
        assert log.get_stats().failed_write is None
        attempted.append(entry(99))
        acked.append(log.append(attempted[-1]))  # compaction is optional: the log goes on
        log.update_status(acked[-1], WALEntryStatus.SYNCING)
        log.compact()  # and a later compaction finishes the job
    completed = frozenset(e.entry_id for e in first_segment_lsns)
    assert_recovers(d, acked, attempted, completed, max_segment_bytes=4096)
