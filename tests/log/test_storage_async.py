"""``WALStorage.append_async``: group commit on the event loop, sharing the thread path's rules.

Correctness (LSNs, read back, duplicates), coroutines and threads appending together through
rotations (one LSN order, nothing lost), cancellation (the write goes on), an injected fsync
EIO (every waiter fails, and every later append), and power loss at every file operation of
an async workload (``CrashFS``): whatever was acknowledged survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
from pathlib import Path

import pytest
from faultfs import CrashFS, FaultRule, SimulatedCrash, write_image
from helpers_log import content, make_entry
from test_io_errors import assert_recovers

from wal import WALClosedError, WALEntry, WALStorage, WALWriteError
from wal.log.fileops import OSFileOps


def read_back(d: Path) -> list[WALEntry]:
    with WALStorage(d) as log:
        return list(log.iter_entries())


def test_append_async_returns_durable_entries_in_lsn_order(tmp_path: Path) -> None:
    d = tmp_path / "log"
    entries = [make_entry(i) for i in range(40)]

    async def run(log: WALStorage) -> list[WALEntry]:
        one = await log.append_async(entries[0])
        many = await log.append_many_async(entries[1:10])
        rest = await asyncio.gather(*(log.append_async(e) for e in entries[10:]))
        return [one, *many, *rest]

    with WALStorage(d) as log:
        got = asyncio.run(run(log))
        assert [e.lsn for e in got[:10]] == list(range(1, 11))
        assert sorted(e.lsn for e in got) == list(range(1, 41))  # type: ignore[type-var]
        assert log.get_entry(entries[5].entry_id).lsn == 6
        assert asyncio.run(log.append_many_async([])) == []
    back = read_back(d)
    assert [content(e) for e in back] == [content(e) for e in sorted(got, key=lambda e: e.lsn)]  # type: ignore[arg-type,return-value]
    assert {e.entry_id for e in back} == {e.entry_id for e in entries}


def test_append_async_refuses_duplicates_alone(tmp_path: Path) -> None:
    e, other = make_entry(1), make_entry(2)

    async def run(log: WALStorage) -> None:
        await log.append_async(e)
        with pytest.raises(ValueError, match="already in the log"):
            await log.append_async(e)
        with pytest.raises(ValueError, match="already has LSN"):
            await log.append_async(log.get_entry(e.entry_id))
        # a duplicate in the same group fails alone; the other entry is appended
        results = await asyncio.gather(
            log.append_async(other), log.append_async(other), return_exceptions=True
        )
        assert sum(isinstance(r, ValueError) for r in results) == 1

    with WALStorage(tmp_path / "log") as log:
        asyncio.run(run(log))
    assert [x.entry_id for x in read_back(tmp_path / "log")] == [e.entry_id, other.entry_id]


def test_coroutines_and_threads_share_one_lsn_order_through_rotations(tmp_path: Path) -> None:
    d = tmp_path / "log"
    n_threads, per_thread, n_tasks, per_task = 4, 40, 32, 10
    acked: list[WALEntry] = []
    mu = threading.Lock()

    def thread_appender(k: int, log: WALStorage) -> None:
        for i in range(per_thread):
            got = log.append(make_entry(10_000 * (k + 1) + i, blob=50))
            with mu:
                acked.append(got)

    async def task_appender(k: int, log: WALStorage) -> None:
        for i in range(per_task):
            if i % 3 == 2:
                got = await log.append_many_async([make_entry(-k * 100 - i), make_entry(-i)])
            else:
                got = [await log.append_async(make_entry(-k * 100 - i, blob=50))]
            with mu:
                acked.extend(got)

    async def run(log: WALStorage) -> None:
        threads = [
            threading.Thread(target=thread_appender, args=(k, log)) for k in range(n_threads)
        ]
        for t in threads:
            t.start()
        await asyncio.gather(*(task_appender(k, log) for k in range(n_tasks)))
        for t in threads:
            await asyncio.to_thread(t.join)

    with WALStorage(d, max_segment_bytes=8192) as log:
        asyncio.run(run(log))
        assert log.get_stats().segments > 3
    back = read_back(d)
    assert [e.lsn for e in back] == list(range(1, len(acked) + 1))
    by_id = {e.entry_id: e for e in back}
    for a in acked:  # every acknowledged entry at the LSN it was given
        assert by_id[a.entry_id].lsn == a.lsn
        assert content(by_id[a.entry_id]) == content(a)


class GatedFS(OSFileOps):
    """The real file system, whose fdatasync waits for ``gate`` once ``armed``."""

    def __init__(self) -> None:
        self.armed = False
        self.reached = threading.Event()
        self.gate = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.reached.set()
            assert self.gate.wait(15), "the test never opened the gate"
        super().fdatasync(fd)


def test_a_cancelled_append_is_still_written(tmp_path: Path) -> None:
    d = tmp_path / "log"
    fs = GatedFS()
    e = make_entry(1)
    after_id = []

    async def run(log: WALStorage) -> None:
        fs.armed = True
        task = asyncio.ensure_future(log.append_async(e))
        # the flush thread waits in its fdatasync: the task awaits its future
        assert await asyncio.to_thread(fs.reached.wait, 15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        fs.armed = False
        fs.gate.set()
        # the log goes on: the next append is durable after the cancelled one
        after = await log.append_async(make_entry(2))
        assert after.lsn == 2
        after_id.append(after.entry_id)

    with WALStorage(d, fs=fs) as log:
        asyncio.run(run(log))
        assert log.get_entry(e.entry_id).lsn == 1
    assert [x.entry_id for x in read_back(d)] == [e.entry_id, after_id[0]]


def test_an_fsync_eio_fails_every_waiter_and_every_later_append(tmp_path: Path) -> None:
    d = tmp_path / "log"
    release = threading.Event()
    # fdatasync of segment 1 by its name (its header's was under PREPARED_NAME, before the
    # rename): 1, the first group; 2, fails (held until released)
    rule = FaultRule("fdatasync", nth=2, errno=errno.EIO, path_contains="0" * 12, hold=release)
    fs = CrashFS(d, rules=[rule])
    first = make_entry(0)
    doomed = [make_entry(i) for i in range(1, 9)]

    async def run(log: WALStorage) -> list[BaseException | WALEntry]:
        acked = await log.append_async(first)
        lead = asyncio.ensure_future(log.append_async(doomed[0]))
        assert await asyncio.to_thread(rule.reached.wait, 10)
        # these stage behind the failing flush (some may share a group with each other)
        rest = [asyncio.ensure_future(log.append_async(e)) for e in doomed[1:]]
        await asyncio.sleep(0)  # let them stage (not a synchronization: the order is fixed)
        release.set()
        out = await asyncio.gather(lead, *rest, return_exceptions=True)
        assert acked.lsn == 1
        with pytest.raises(WALWriteError):
            await log.append_async(make_entry(100))
        with pytest.raises(WALWriteError):
            log.append(make_entry(101))
        return out

    log = WALStorage(d, fs=fs)
    try:
        outcome = asyncio.run(run(log))
    finally:
        release.set()
        log.close()
    assert all(isinstance(o, WALWriteError) for o in outcome), outcome
    assert rule.fired == 1  # the failed fsync is never retried
    got = assert_recovers(d, [first.with_lsn(1)], [first, *doomed])
    assert len(got) <= 2  # the first, and at most the failed group's records, whole


def test_append_async_after_close_is_refused(tmp_path: Path) -> None:
    log = WALStorage(tmp_path / "log")
    asyncio.run(log.append_async(make_entry(1)))
    log.close()
    with pytest.raises(WALClosedError):
        asyncio.run(log.append_async(make_entry(2)))


def test_close_commits_what_coroutines_staged(tmp_path: Path) -> None:
    """``close`` waits for the flush thread: appends staged before it are written."""
    d = tmp_path / "log"
    fs = GatedFS()
    entries = [make_entry(i) for i in range(5)]

    async def run(log: WALStorage) -> list[WALEntry]:
        fs.armed = True
        tasks = [asyncio.ensure_future(log.append_async(e)) for e in entries]
        assert await asyncio.to_thread(fs.reached.wait, 15)
        fs.armed = False
        fs.gate.set()
        await asyncio.to_thread(log.close)
        return list(await asyncio.gather(*tasks))

    got = asyncio.run(run(WALStorage(d, fs=fs)))
    assert sorted(e.lsn for e in got) == [1, 2, 3, 4, 5]  # type: ignore[type-var]
    assert {e.entry_id for e in read_back(d)} == {e.entry_id for e in entries}


# ---------------------------------------------------------------------- power loss


def _async_workload(log: WALStorage, entries: list[WALEntry], acked: list[WALEntry]) -> None:
    async def one(e: WALEntry) -> None:
        got = await log.append_async(e)
        acked.append(got)  # acknowledged: the caller may act on it now

    async def many(es: list[WALEntry]) -> None:
        acked.extend(await log.append_many_async(es))

    async def run() -> None:
        await one(entries[0])
        await asyncio.gather(
            *(one(e) for e in entries[1:4]), many(entries[4:6]), return_exceptions=True
        )
        await asyncio.gather(*(one(e) for e in entries[6:]), return_exceptions=True)

    asyncio.run(run())


def test_power_loss_at_every_operation_of_an_async_workload(tmp_path: Path) -> None:
    """Each counted file operation of the workload, crashed before it; every tail fate."""
    entries = [make_entry(i, blob=900) for i in range(10)]
    options = {"max_segment_bytes": 4096}  # rotations happen inside the workload
    # count the operations of a full run first
    probe = CrashFS(tmp_path / "probe")
    with WALStorage(tmp_path / "probe", fs=probe, **options) as log:
        _async_workload(log, entries, [])
    total = probe.op_count
    assert total > 12
    checked = 0
    for k in range(1, total + 1):
        d = tmp_path / f"run{k}"
        fs = CrashFS(d, crash_at=k)
        acked: list[WALEntry] = []
        try:
            log = WALStorage(d, fs=fs, **options)
        except SimulatedCrash:
            continue  # the crash hit the open: nothing was acknowledged
        try:
            _async_workload(log, entries, acked)
        except (SimulatedCrash, WALWriteError):
            pass
        finally:
            # the crash may be the close's own removal of an unused prepared segment
            with contextlib.suppress(SimulatedCrash):
                log.close()
        assert fs.crashed
        for tail in ("drop", "keep", "zero", "prefix"):
            img = write_image(tmp_path / f"img{k}-{tail}", fs.image_files(tail))  # type: ignore[arg-type]
            assert_recovers(img, acked, entries, **options)
            checked += 1
    assert checked >= 4 * (total // 2)  # the crashes in the open acknowledge nothing
