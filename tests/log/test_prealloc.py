"""Preallocated segments (``StorageOptions.preallocate``): the space, the prepared next segment,
what readers see, and the fallbacks (an injected EOPNOTSUPP, a real small tmpfs).

Power loss during appends into preallocated space, at every operation, is in
``test_crash_powerloss.py`` (the ``prealloc-*`` workloads).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultfs import CrashFS, FaultRule, Gate
from helpers_log import make_entry

from wal import WALEntryStatus, WALStorage
from wal.log.repair import repair_log
from wal.log.segment import PREPARED_NAME, list_segments
from wal.log.verify import verify_log

SEG = 8192


def segs(d: Path) -> list[Path]:
    return [p for _, p in list_segments(d)]


def fill(log: WALStorage, n: int, start: int = 0) -> list[str]:
    return [str(log.append(make_entry(start + i, blob=600)).entry_id) for i in range(n)]


@pytest.mark.parametrize("how", ["zero", "fallocate"])
def test_segments_get_their_space_and_readers_see_only_records(how: str, tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WALStorage(d, max_segment_bytes=SEG, preallocate=how) as log:
        ids = fill(log, 40)
        log.update_status(ids[0], WALEntryStatus.COMPLETED)
        stats = log.get_stats()
        data = sum(s.size for s in log._segments)
    files = segs(d)
    assert len(files) >= 4
    last = files[-1].read_bytes()
    assert len(last) == SEG and last.endswith(b"\0"), "the last segment is preallocated"
    for p in files[:-1]:
        assert not p.read_bytes().endswith(b"\0"), f"{p.name}: a sealed segment was cut back"
    assert stats.bytes == data < sum(p.stat().st_size for p in files)  # data, not space
    for mode in ("strict", "tolerate_tail"):
        with WALStorage(d, recovery=mode, max_segment_bytes=SEG, preallocate=how) as log:
            rep = log.recovery_report
            assert rep.defects == [] and rep.truncated_bytes == 0 and rep.broken_files == []
            assert rep.spare_bytes > 0 and log.get_stats().bytes == data
            assert [str(e.entry_id) for e in log.iter_entries()] == ids
            more = fill(log, 3, 100)  # appends go into the space, not after it
            data = log.get_stats().bytes
        assert len(segs(d)[-1].read_bytes()) == SEG
        ids += more
    ro = WALStorage.open_readonly(d)
    try:
        assert ro.recovery_report.defects == []
        assert [str(e.entry_id) for e in ro.iter_entries()] == ids
    finally:
        ro.close()
    v = verify_log(d)
    assert v.ok and v.entries == len(ids)
    assert repair_log(d).nothing_to_do
    assert not list(d.glob("*.broken*"))


def test_compaction_sees_sealed_segments_without_zeros(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WALStorage(d, max_segment_bytes=SEG, preallocate="zero") as log:
        ids = fill(log, 30)
        log.update_statuses([(i, WALEntryStatus.COMPLETED, None, None) for i in ids[:20]])
        log.compact()
        kept = [str(e.entry_id) for e in log.iter_entries()]
        fill(log, 20, 200)
    assert kept == ids[20:]
    with WALStorage(d, recovery="strict", max_segment_bytes=SEG) as log:
        assert log.recovery_report.defects == []
        assert [str(e.entry_id) for e in log.iter_entries()][:10] == ids[20:]


def layout(d: Path) -> list[tuple[str, int]]:
    """Each segment's name and data bytes: where every record went."""
    return [(p.name, len(p.read_bytes().rstrip(b"\0"))) for p in segs(d)]


def test_the_next_segment_is_prepared_by_a_thread_and_rotation_is_deterministic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background step held inside its fdatasync: appends go on meanwhile; a rotation
    waits for it. Where every record goes is the same as with the preparation done inline
    (and as with it finished long before): it never depends on the thread."""
    monkeypatch.setattr(WALStorage, "prepare_in_background", True)
    d = tmp_path / "wal"
    fs = CrashFS(d)
    # fdatasyncs under PREPARED_NAME: 1 and 2, the first segment's zeros and header (inline,
    # when the log is created); 3, the next segment's zeros, in the thread
    gate = fs.add_gate(Gate("fdatasync", nth=3, path_contains=PREPARED_NAME, timeout=30))
    with WALStorage(d, fs=fs, max_segment_bytes=SEG, preallocate="zero") as log:
        assert log._seg_prealloc  # the first segment was given a whole segment's space
        ids = fill(log, 5)  # ~4.2 KB: past half of the segment (4 KB), far from full
        assert gate.reached.wait(30), "the next segment was never prepared"
        ids += fill(log, 1, 100)  # appends go on while the preparation is held
        assert len(segs(d)) == 1
        gate.release.set()  # the next append rotates: it would wait for the thread
        ids += fill(log, 40, 200)
        assert log._seg_prealloc and segs(d)[-1].stat().st_size == SEG
    threaded = layout(d)
    with WALStorage(d, recovery="strict") as log:
        assert [str(e.entry_id) for e in log.iter_entries()] == ids
    # the same appends with the preparation inline: the same segments, the same records
    monkeypatch.setattr(WALStorage, "prepare_in_background", False)
    d2 = tmp_path / "inline"
    with WALStorage(d2, max_segment_bytes=SEG, preallocate="zero") as log:
        fill(log, 5)
        fill(log, 1, 100)
        fill(log, 40, 200)
    assert layout(d2) == threaded and len(threaded) >= 4


@pytest.mark.parametrize("how", ["zero", "fallocate", "off"])
def test_a_new_logs_first_segment_is_given_its_space_and_moves_to_a_whole_one(
    how: str, tmp_path: Path
) -> None:
    """A new log's first segment is given the space of its records up to the switch point
    when it is created (so its first appends' fdatasyncs commit no new file size), not a
    whole segment (a short-lived log never zeroes 64 MiB). At the switch, a reopen in
    between or not, it moves to a whole prepared segment and is cut back to its records."""
    big = 4 << 20
    d = tmp_path / "wal"
    with WALStorage(d, max_segment_bytes=big, preallocate=how) as log:  # type: ignore[arg-type]
        space = log._first_segment_bytes()
        assert 1 << 20 < space < big and not log._seg_prealloc
        first = segs(d)[0]
        assert first.stat().st_size == (space if how != "off" else log._header_len)
        ids = [str(log.append(make_entry(i, blob=20_000)).entry_id) for i in range(20)]
        assert first.stat().st_size == (space if how != "off" else log.get_stats().bytes)
    with WALStorage(d, max_segment_bytes=big, preallocate=how) as log:  # type: ignore[arg-type]
        assert not log._seg_prealloc and len(segs(d)) == 1
        ids += [str(log.append(make_entry(i, blob=20_000)).entry_id) for i in range(20, 60)]
        files = segs(d)
        if how == "off":  # no preparation, no switch: one segment grows up to its size
            assert files == [first]
        else:
            assert len(files) == 2 and files[0] == first and files[1].stat().st_size == big
        assert not first.read_bytes().endswith(b"\0")  # sealed: cut back to its records
    with WALStorage(d, recovery="strict") as log:
        assert [str(e.entry_id) for e in log.iter_entries()] == ids


def test_a_rotation_prepares_the_next_segment_inline_when_none_was_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation before any preparation was asked for (a compaction seals a segment far from
    full): the rotation prepares the next segment itself, synchronously (zeros, fdatasync),
    then writes and syncs its header, renames it, syncs the directory."""
    monkeypatch.setattr(WALStorage, "prepare_in_background", True)
    d = tmp_path / "wal"
    fs = CrashFS(d)
    with WALStorage(d, fs=fs, max_segment_bytes=SEG, preallocate="zero") as log:
        ids = fill(log, 1)
        assert log._prealloc.thread is None  # nothing asked for yet
        before = len(fs.ops)
        log.compact()  # seals the active segment: the rotation needs the next one now
        assert log._seg_prealloc and len(segs(d)) == 2 and log._prealloc.thread is None
        ids += fill(log, 2, 100)
    ops = [(op, Path(p).name) for op, p in fs.ops[before:]]
    prep = [op for op, name in ops if name == PREPARED_NAME]
    # prepared inline (zeros synced), then the header synced before the rename
    assert prep[:7] == ["open", "write", "fdatasync", "open", "write", "fdatasync", "rename"]
    assert ("fsync_dir", d.name) in ops[ops.index(("rename", PREPARED_NAME)) :]
    assert segs(d)[-1].stat().st_size == SEG
    with WALStorage(d, recovery="strict") as log:
        assert [str(e.entry_id) for e in log.iter_entries()] == ids


def test_a_leftover_prepared_file_is_removed_on_open(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WALStorage(d, max_segment_bytes=SEG) as log:
        ids = fill(log, 2)
    (d / PREPARED_NAME).write_bytes(bytes(1000))  # a preparation cut short by a crash
    with WALStorage(d, recovery="strict") as log:
        assert log.recovery_report.removed_tmp_files == 1
        assert [str(e.entry_id) for e in log.iter_entries()] == ids
    assert not (d / PREPARED_NAME).exists()


def test_fallocate_refused_falls_back_to_zeros(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    rule = FaultRule("fallocate", errno=errno.EOPNOTSUPP, persistent=True)
    fs = CrashFS(d, rules=[rule])
    with WALStorage(d, fs=fs, max_segment_bytes=SEG, preallocate="fallocate") as log:
        ids = fill(log, 30)
        assert log._prealloc.how == "zero" and rule.fired >= 1
    assert ("write", str(d / PREPARED_NAME)) in fs.ops  # zeros were written instead
    assert len(segs(d)[-1].read_bytes()) == SEG
    with WALStorage(d, recovery="strict") as log:
        assert [str(e.entry_id) for e in log.iter_entries()] == ids


@pytest.mark.parametrize("op", ["fallocate", "write", "fdatasync", "open"])
def test_a_failed_preparation_turns_preallocation_off_not_the_log(op: str, tmp_path: Path) -> None:
    d = tmp_path / "wal"
    rule = FaultRule(op, errno=errno.ENOSPC, path_contains=PREPARED_NAME, persistent=True)
    fs = CrashFS(d, rules=[rule])
    how = "fallocate" if op == "fallocate" else "zero"
    with WALStorage(d, fs=fs, max_segment_bytes=SEG, preallocate=how) as log:
        ids = fill(log, 30)
        assert log._prealloc.off and rule.fired == 1
    assert not (d / PREPARED_NAME).exists()
    with WALStorage(d, recovery="strict") as log:
        assert [str(e.entry_id) for e in log.iter_entries()] == ids


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


@pytest.mark.parametrize("how", ["fallocate", "zero"])
def test_a_real_small_tmpfs_preallocates_or_falls_back(how: str, tmp_path: Path) -> None:
    """On a real tmpfs: a segment that fits is preallocated; one that does not (under 200 KiB
    left when half of a 256 KiB segment is written) fails to prepare; the log goes on."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with small_tmpfs(tmp_path / "mnt", "320k") as mnt:
        d = mnt / "wal"
        with WALStorage(d, max_segment_bytes=SEG, preallocate=how) as log:
            ids = fill(log, 20)
            assert not log._prealloc.off and log._seg_prealloc
        assert len(segs(d)[-1].read_bytes()) == SEG
        big = mnt / "big"
        with WALStorage(big, max_segment_bytes=256 << 10, preallocate=how) as log:
            ids2 = fill(log, 160)  # past half a segment: its preparation runs out of space
            if log._prealloc.thread is not None:
                log._prealloc.thread.join()
            assert log._prealloc.off and not (big / PREPARED_NAME).exists()
            ids2 += fill(log, 5, 100)
        with WALStorage(big, recovery="strict") as log:
            assert [str(e.entry_id) for e in log.iter_entries()] == ids2
        with WALStorage(d, recovery="strict") as log:
            assert [str(e.entry_id) for e in log.iter_entries()] == ids


def test_a_closed_log_leaves_no_prepared_segment_behind(tmp_path: Path) -> None:
    """A prepared next segment nobody took is removed at close (no file of zeros left in the
    directory, nor in a backup of it); an open removes one a crash left."""
    d = tmp_path / "wal"
    fs = CrashFS(d)  # the preparation is inline here: ready once the segment is half full
    with WALStorage(d, fs=fs, max_segment_bytes=SEG, preallocate="zero") as log:
        ids = fill(log, 15)  # the first segment full (9), the second past half
        assert log._prealloc.ready and (d / PREPARED_NAME).exists()
    assert not (d / PREPARED_NAME).exists()
    assert ("unlink", str(d / PREPARED_NAME)) in fs.ops
    with WALStorage(d, recovery="strict") as log:
        assert log.recovery_report.removed_tmp_files == 0
        assert [str(e.entry_id) for e in log.iter_entries()] == ids
