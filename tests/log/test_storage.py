"""wal.log.storage: appends, statuses, rotation, compaction, stats, permissions, group commit,
fsync modes, read-only opening, closed and misused storages. Real files, real fsync."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers_log import (
    CountingFileOps,
    check_files,
    data_end,
    make_entry,
    mode_of,
    segment_records,
    wait_for,
    write_at_end,
)

from wal import (
    WALClosedError,
    WALCorruptionError,
    WALEntry,
    WALEntryNotFoundError,
    WALEntryStatus,
    WALError,
    WALLockedError,
    WALStorage,
)
from wal.log.segment import TEAR_BOUND, list_segments

P, S, C, F = (
    WALEntryStatus.PENDING,
    WALEntryStatus.SYNCING,
    WALEntryStatus.COMPLETED,
    WALEntryStatus.FAILED,
)


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    return tmp_path / "log"


# ---------------------------------------------------------------- append, read, statuses


def test_append_assigns_lsns_and_reads_back(logdir: Path) -> None:
    with WALStorage(logdir) as log:
        a = log.append(make_entry(1))
        b = log.append(make_entry(2, key="order-2"))
        assert (a.lsn, b.lsn) == (1, 2)
        assert log.next_lsn == 3
        got = log.get_entry(a.entry_id)
        assert got == a and got.verify()
        assert log.get_entry(str(b.entry_id)) == b
        assert log.find_by_idempotency_key("order-2") == b
        assert log.find_by_idempotency_key("order-3") is None
    with WALStorage(logdir) as log:
        assert log.get_entry(a.entry_id) == a
        assert log.get_entry(b.entry_id) == b
        assert log.find_by_idempotency_key("order-2") == b
        assert log.next_lsn == 3


def test_update_status_is_durable_and_ordered(logdir: Path) -> None:
    with WALStorage(logdir) as log:
        es = [log.append(make_entry(i)) for i in range(4)]
        log.update_status(es[0], S)
        log.update_status(es[0].entry_id, C)
        log.update_status(str(es[1].entry_id), F, "rejected: insufficient margin", attempts=5)
        log.update_status(es[2], S)
        assert log.get_entry(es[0].entry_id).status is C
        assert log.get_entry(es[0].entry_id).synced_at is not None
    with WALStorage(logdir) as log:
        got = [log.get_entry(e.entry_id) for e in es]
        assert [g.status for g in got] == [C, F, S, P]
        assert got[1].last_error == "rejected: insufficient margin" and got[1].attempts == 5
        assert got[0].synced_at is not None
        assert log.count(C) == 1 and log.count(F) == 1 and log.count(S) == 1 and log.count(P) == 1


def test_pending_entries_in_lsn_order(logdir: Path) -> None:
    with WALStorage(logdir) as log:
        es = [log.append(make_entry(i)) for i in range(8)]
        log.update_status(es[1], C)
        log.update_status(es[3], F)
        log.update_status(es[4], S)  # SYNCING is replayed like PENDING
        log.update_status(es[6], S)
        log.update_status(es[6], P)
        want = [es[i].entry_id for i in (0, 2, 4, 5, 6, 7)]
        assert [e.entry_id for e in log.get_pending_entries()] == want
        assert [e.entry_id for e in log.get_pending_entries(limit=2)] == want[:2]
        assert [e.entry_id for e in log.get_pending_entries(after_lsn=es[4].lsn or 0)] == want[3:]
        assert [e.status for e in log.get_pending_entries()] == [P, P, S, P, P, P]
    with WALStorage(logdir) as log:
        assert [e.entry_id for e in log.get_pending_entries()] == want


def test_append_many_is_one_write_and_one_fsync(logdir: Path) -> None:
    fs = CountingFileOps()
    with WALStorage(logdir, fs=fs) as log:
        fs.reset()
        out = log.append_many([make_entry(i) for i in range(10)])
        assert [e.lsn for e in out] == list(range(1, 11))
        assert fs.count("write") == 1 and fs.count("fdatasync") == 1
        assert log.append_many([]) == []
        log.update_statuses([(e, C, None, 1) for e in out[:3]])
        assert fs.count("fdatasync") == 2
        assert log.count(C) == 3


def test_unknown_ids_and_misuse(logdir: Path) -> None:
    with WALStorage(logdir) as log:
        e = log.append(make_entry(1))
        for bad in (uuid.uuid4(), "not-a-uuid", make_entry(2)):
            with pytest.raises(WALEntryNotFoundError):
                log.update_status(bad, C)
        with pytest.raises(WALEntryNotFoundError):
            log.get_entry(uuid.uuid4())
        with pytest.raises(KeyError):  # WALEntryNotFoundError is a KeyError too
            log.get_entry("nope")
        with pytest.raises(ValueError, match="already has LSN 1"):
            log.append(e)
        fresh = make_entry(3)
        log.append(fresh)
        with pytest.raises(ValueError, match="already in the log"):
            log.append(fresh)  # the same entry object again (it has no LSN itself)
        twice = make_entry(4)
        with pytest.raises(ValueError, match="already in the log"):
            log.append_many([twice, twice])
        assert log.next_lsn == 3  # none of the refused calls wrote anything


def test_closed_storage_raises(logdir: Path) -> None:
    log = WALStorage(logdir)
    e = log.append(make_entry(1))
    log.close()
    log.close()  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: log.append(make_entry(2)),
        lambda: log.append_many([make_entry(3)]),
        lambda: log.update_status(e, C),
        lambda: log.get_entry(e.entry_id),
        lambda: list(log.get_pending_entries()),
        lambda: list(log.iter_entries()),
        lambda: log.get_stats(),
        lambda: log.compact(),
        lambda: log.sync(),
        lambda: log.find_by_idempotency_key("x"),
    ]
    for call in calls:
        with pytest.raises(WALClosedError):
            call()


# ---------------------------------------------------------------- rotation


def test_rotation_names_headers_and_gap_free_lsns(logdir: Path) -> None:
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        es = [log.append(make_entry(i, blob=200)) for i in range(60)]
        for e in es[::3]:
            log.update_status(e, S)
        assert log.get_stats().segments > 3
    segs = list_segments(logdir)
    assert [p.name for _, p in segs] == sorted(p.name for _, p in segs)
    lsns = []
    for first, path in segs:
        recs = segment_records(path)
        assert recs[0] == {
            "t": "segment",
            "version": 1,
            "first": first,
            "last": None,
            "tear": TEAR_BOUND,  # the most bytes the writer leaves unsynced (issue 21)
        }
        assert recs[1]["lsn"] == first  # named by its first LSN
        lsns += [r["lsn"] for r in recs[1:]]
        assert path.stat().st_size <= 4096
    assert lsns == list(range(1, 81))
    rep = check_files(logdir)
    assert len(rep.entries) == 60 and len(rep.statuses) == 20
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        assert [e.lsn for e in log.iter_entries()] == [e.lsn for e in es]
        assert log.get_entry(es[3].entry_id).status is S


def test_batch_larger_than_a_segment_gets_its_own(logdir: Path) -> None:
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        log.append(make_entry(0))
        out = log.append_many([make_entry(i, blob=1000) for i in range(1, 9)])
        log.append(make_entry(9))
    segs = list_segments(logdir)
    assert [f for f, _ in segs] == [1, 2, 10]
    assert segs[1][1].stat().st_size > 4096
    assert [e.lsn for e in out] == list(range(2, 10))
    check_files(logdir)


# ---------------------------------------------------------------- compaction


def old_completed(n: int) -> WALEntry:
    """An entry that was COMPLETED a day ago (as if appended long before)."""
    return make_entry(n).with_status(C, at=datetime.now(UTC) - timedelta(days=1))


def test_compaction_retention_and_front_removal(logdir: Path) -> None:
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        old = [log.append(old_completed(i)) for i in range(30)]  # the front segments
        young = [log.append(make_entry(100 + i)) for i in range(5)]
        pending = [log.append(make_entry(200 + i)) for i in range(5)]
        failed = [log.append(make_entry(300 + i)) for i in range(3)]
        for e in young:
            log.update_status(e, C)
        for e in failed:
            log.update_status(e, F, "refused")
        first_before = list_segments(logdir)[0][0]
        res = log.compact(retention=timedelta(hours=1))
        assert res["entries_dropped"] == 30
        assert res["segments_removed"] >= 2
        assert res["bytes_after"] < res["bytes_before"]
        assert list_segments(logdir)[0][0] > first_before  # front segments are gone
        for e in old:
            with pytest.raises(WALEntryNotFoundError):
                log.get_entry(e.entry_id)
        assert all(log.get_entry(e.entry_id).status is C for e in young)  # young: kept
        assert log.count(C) == 5 and log.count(P) == 5 and log.count(F) == 3
        after = log.append(make_entry(999))
    check_files(logdir)
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        assert all(log.get_entry(e.entry_id).status is C for e in young)
        assert all(log.get_entry(e.entry_id).status is F for e in failed)
        assert log.get_entry(failed[0].entry_id).last_error == "refused"
        assert [e.entry_id for e in log.get_pending_entries()] == [
            e.entry_id for e in [*pending, after]
        ]
        res = log.compact(retention=0)  # now the young ones go too
        assert res["entries_dropped"] == 5
        assert log.count(C) == 0 and log.count(P) == 6 and log.count(F) == 3
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        assert log.count(C) == 0 and log.count(P) == 6 and log.count(F) == 3
        assert log.recovery_report.defects == []
    check_files(logdir)


def test_compaction_folds_statuses_and_keeps_unfinished(logdir: Path) -> None:
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        es = [log.append(make_entry(i)) for i in range(20)]
        for e in es[:10]:
            log.update_status(e, S)
        for e in es[:5]:
            log.update_status(e, C)
        log.compact()
        assert log.count(S) == 5 and log.count(P) == 10 and log.count(C) == 0
        statuses = [log.get_entry(e.entry_id).status for e in es[5:]]
        # nothing to fold into a second compaction: it changes no byte
        before = {p.name: p.read_bytes() for _, p in list_segments(logdir)}
        res = log.compact()
        assert res["segments_rewritten"] == 0 and res["entries_dropped"] == 0
        assert {p.name: p.read_bytes() for _, p in list_segments(logdir)} == before
    rep = check_files(logdir)
    assert not rep.statuses  # every status record was folded into its entry record
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        assert [log.get_entry(e.entry_id).status for e in es[5:]] == statuses


def test_emptied_segments_do_not_pile_up(logdir: Path) -> None:
    """A segment emptied by compaction behind an unfinished one goes once it is in front."""
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        first = log.append(make_entry(0))
        rest = [log.append(make_entry(i, blob=300)) for i in range(1, 40)]
        log.update_statuses([(e, C, None, None) for e in rest])
        log.compact()
        assert log.get_stats().segments > 2
        log.update_status(first, C)
        log.compact()
        assert log.count(C) == 0
        assert log.get_stats().segments == 1  # only the active one is left
    assert len(list_segments(logdir)) == 1
    check_files(logdir)


def test_iteration_survives_a_compaction_in_between(logdir: Path) -> None:
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        done = [log.append(make_entry(i, blob=300)) for i in range(20)]
        keep = [log.append(make_entry(100 + i, blob=3000)) for i in range(5)]  # one a segment
        log.update_statuses([(e, C, None, None) for e in done[1:]])
        it = log.iter_entries()
        assert next(it).entry_id == done[0].entry_id
        log.update_status(done[0], C)
        assert log.compact()["segments_removed"] > 0  # the index shifts under the iterator
        assert [e.entry_id for e in it] == [e.entry_id for e in keep]


def test_compaction_while_appending_from_threads(logdir: Path) -> None:
    """Compaction seals the active segment: records still waiting for the group commit must go
    into a segment that covers their LSNs (found here as an LSN-out-of-order segment)."""
    acked: list[WALEntry] = []
    progress = threading.Condition()
    n_threads, per_thread = 4, 300
    with WALStorage(logdir, max_segment_bytes=4096) as log:

        def appender(k: int) -> None:
            for i in range(per_thread):
                e = log.append(make_entry(k * 1000 + i))
                log.update_status(e, C)
                with progress:
                    acked.append(e)
                    progress.notify()

        threads = [threading.Thread(target=appender, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        compactions = 0
        while any(t.is_alive() for t in threads):
            with progress:  # compact every 20 acks, while the appenders keep going
                seen = len(acked)
                progress.wait_for(
                    lambda seen=seen: (
                        len(acked) >= seen + 20  # type: ignore[misc]
                        or len(acked) == n_threads * per_thread
                    ),
                    timeout=30,
                )
            log.compact(retention=timedelta(hours=1))  # keeps every entry
            compactions += 1
        for t in threads:
            t.join()
        assert len(acked) == n_threads * per_thread
        assert compactions > 10
        assert log.count(C) == len(acked)
    check_files(logdir)
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        assert log.count(C) == len(acked)
        assert all(log.get_entry(e.entry_id).lsn == e.lsn for e in acked[::25])


# ---------------------------------------------------------------- stats


def test_stats(logdir: Path) -> None:
    with WALStorage(logdir) as log:
        st = log.get_stats()
        assert st.entries == {"pending": 0, "syncing": 0, "completed": 0, "failed": 0}
        assert st.oldest_pending_age_seconds is None
        assert st.fsync_count == 0 and st.fsync_p50_us is None and st.fsync_p99_us is None
        es = [log.append(make_entry(i)) for i in range(6)]
        log.update_status(es[0], C)
        log.update_status(es[1], F)
        log.update_status(es[2], S)
        st = log.get_stats()
        assert st.entries == {"pending": 3, "syncing": 1, "completed": 1, "failed": 1}
        assert st.next_lsn == 10
        assert st.fsync_count == 9
        assert st.fsync_p50_us is not None and st.fsync_p99_us is not None
        assert 0 < st.fsync_p50_us <= st.fsync_p99_us
        created = es[2].created_at  # the oldest unfinished entry (SYNCING counts)
        age = st.oldest_pending_age_seconds
        assert age is not None and 0 <= age <= (datetime.now(UTC) - created).total_seconds()
        assert st.fsync_mode == "always" and st.failed_write is None
        # the bytes of records, not of the space the segment was given (zeros after them)
        assert st.segments == 1 and st.bytes == sum(
            data_end(p.read_bytes()) for _, p in list_segments(logdir)
        )
        d = st.to_dict()
        assert d["recovery"]["mode"] == "tolerate_tail" and d["entries"]["pending"] == 3
    seg = list_segments(logdir)[-1][1]
    torn = b'0123456789abcdef {"t":"ent'
    at = write_at_end(seg, torn)  # a torn last record
    size = seg.stat().st_size
    with WALStorage(logdir) as log:
        rep = log.get_stats().recovery
        # the torn record, and the zeros of the segment's space after it (the file is cut)
        assert rep.truncated_bytes == size - at and rep.entries == 6 and rep.segments == 1
        assert rep.broken_files == [seg.name + ".broken"]
        assert log.get_stats().to_dict()["recovery"]["truncated_bytes"] == size - at


# ---------------------------------------------------------------- permissions


def test_permissions(tmp_path: Path) -> None:
    d = tmp_path / "log"
    with WALStorage(d, max_segment_bytes=4096) as log:
        for i in range(30):
            log.append(make_entry(i, blob=200))
    with open(list_segments(d)[-1][1], "ab") as f:
        f.write(b"torn")
    WALStorage(d).close()
    assert mode_of(d) == 0o700
    files = list(d.iterdir())
    assert any(p.name.endswith(".broken") for p in files)
    assert len(files) > 3
    for p in files:
        assert mode_of(p) == 0o600, p.name


def test_existing_open_directory_is_tightened(tmp_path: Path) -> None:
    d = tmp_path / "log"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    WALStorage(d).close()
    assert mode_of(d) == 0o700


# ---------------------------------------------------------------- group commit, fsync modes


def test_threads_share_fsyncs(logdir: Path) -> None:
    n_threads, per_thread = 8, 200
    results: list[list[int]] = [[] for _ in range(n_threads)]
    start = threading.Barrier(n_threads)
    with WALStorage(logdir) as log:

        def worker(k: int) -> None:
            start.wait()
            for i in range(per_thread):
                e = log.append(make_entry(k * 10_000 + i))
                assert e.lsn is not None
                results[k].append(e.lsn)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = n_threads * per_thread
        lsns = sorted(x for r in results for x in r)
        assert lsns == list(range(1, total + 1))  # distinct and gap-free
        assert all(r == sorted(r) for r in results)  # each thread's appends in order
        fsyncs = log.get_stats().fsync_count
        assert fsyncs < total  # group commit: followers rode on a leader's fsync
    with WALStorage(logdir) as log:
        got = {e.lsn: e.kwargs["n"] for e in log.iter_entries()}
    assert len(got) == total
    for k, r in enumerate(results):
        assert sorted(got[lsn] for lsn in r) == [k * 10_000 + i for i in range(per_thread)]


def test_lone_appender_pays_one_fdatasync_per_append(logdir: Path) -> None:
    fs = CountingFileOps()
    with WALStorage(logdir, fs=fs) as log:
        fs.reset()
        before = log.get_stats().fsync_count
        for i in range(50):
            log.append(make_entry(i))
            assert fs.count("fdatasync") == i + 1  # durable before append returned
        assert fs.count("write") == 50 and fs.count("fsync_dir") == 0
        assert log.get_stats().fsync_count - before == 50


class _HeldFsync(CountingFileOps):
    """Counts like CountingFileOps; once armed, its fdatasync runs ``during`` first."""

    def __init__(self) -> None:
        super().__init__()
        self.during: Callable[[], None] | None = None

    def fdatasync(self, fd: int) -> None:
        hook, self.during = self.during, None
        if hook is not None:
            hook()
        super().fdatasync(fd)


def test_a_background_reader_waits_for_the_append_in_progress(logdir: Path) -> None:
    fs = _HeldFsync()
    events: list[str] = []
    with WALStorage(logdir, fs=fs) as log:
        log.append_many(make_entry(i) for i in range(3))
        reader = threading.Thread(
            target=lambda: events.append(
                f"read {len(list(log.get_pending_entries(background=True)))}"
            )
        )

        def during_fsync() -> None:
            reader.start()  # an append is in progress: the reader must wait for its end
            wait_for(lambda: bool(log._cond._waiters), "the reader to wait")  # type: ignore[attr-defined]
            events.append("fsync")

        fs.during = during_fsync
        log.append(make_entry(9))
        reader.join()
    assert events == ["fsync", "read 3"] or events == ["fsync", "read 4"]


def test_interval_mode_syncs_in_the_background_and_on_close(logdir: Path) -> None:
    fs = CountingFileOps()
    log = WALStorage(logdir, fs=fs, fsync="interval", fsync_interval_ms=5)
    fs.reset()
    es = [log.append(make_entry(i)) for i in range(20)]
    assert [e.lsn for e in es] == list(range(1, 21))
    assert log.get_entry(es[-1].entry_id) == es[-1]  # readable before it is synced
    wait_for(lambda: fs.count("fdatasync") > 0, "the background fdatasync")
    log.append(make_entry(20))
    log.close()
    last_write = max(i for i, (c, _) in enumerate(fs.calls) if c == "write")
    assert any(c == "fdatasync" for c, _ in fs.calls[last_write:]), "close() did not flush"
    with WALStorage(logdir) as log:
        assert log.count(P) == 21


def test_unsafe_never_writes_and_never_fsyncs(logdir: Path) -> None:
    fs = CountingFileOps()
    with WALStorage(logdir, fs=fs, fsync="unsafe_never", max_segment_bytes=4096) as log:
        fs.reset()  # (creating the directory synced its parent)
        for i in range(40):
            log.append(make_entry(i, blob=200))
        log.update_status(log.get_entry(next(log.iter_entries()).entry_id), C)
        assert log.get_stats().segments > 2
        assert fs.count("fdatasync") == 0 and fs.count("fsync_dir") == 0
        log.compact()  # (its temp files are still synced before their rename)
        assert log.get_stats().fsync_count == 0
    assert fs.count("fdatasync") == fs.count("rename")
    with WALStorage(logdir) as log:
        assert log.count(P) == 39


# ---------------------------------------------------------------- read-only


def test_open_readonly_beside_a_writer(logdir: Path) -> None:
    with WALStorage(logdir) as w:
        es = [w.append(make_entry(i)) for i in range(5)]
        w.update_status(es[0], C)
        with WALStorage.open_readonly(logdir) as ro:
            assert [e.entry_id for e in ro.get_pending_entries()] == [e.entry_id for e in es[1:]]
            assert ro.get_entry(es[0].entry_id).status is C
            with pytest.raises(WALError, match="read-only"):
                ro.append(make_entry(9))
            with pytest.raises(WALError, match="read-only"):
                ro.update_status(es[1], C)
            with pytest.raises(WALError, match="read-only"):
                ro.compact()
        w.append(make_entry(5))  # the writer is undisturbed
        with pytest.raises(WALLockedError):
            WALStorage(logdir)


def test_readonly_changes_nothing_on_a_torn_tail(logdir: Path) -> None:
    with WALStorage(logdir) as w:
        w.append(make_entry(1))
    seg = list_segments(logdir)[0][1]
    with open(seg, "ab") as f:
        f.write(b'0123456789abcdef {"t"')
    before = {p.name: p.read_bytes() for p in logdir.iterdir()}
    with WALStorage.open_readonly(logdir) as ro:
        assert ro.count(P) == 1
    assert {p.name: p.read_bytes() for p in logdir.iterdir()} == before
    with pytest.raises(WALCorruptionError, match="no log directory"):
        WALStorage.open_readonly(logdir.parent / "missing")


def test_removed_segments_are_not_held_open(logdir: Path) -> None:
    """An unlinked segment still open for reading would keep its disk space until close()."""
    with WALStorage(logdir, max_segment_bytes=4096) as log:
        es = [log.append(make_entry(i, blob=300)) for i in range(40)]
        assert all(log.get_entry(e.entry_id) for e in es)  # opens a read fd per segment
        log.update_statuses([(e, C, None, None) for e in es])
        assert log.compact()["segments_removed"] > 2
        fds = Path(f"/proc/{os.getpid()}/fd")
        targets = []
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                targets.append(os.readlink(fd))
        held = [t for t in targets if t.startswith(str(logdir)) and t.endswith("(deleted)")]
        assert held == []
