"""Issue 11, section 1: a read returns exactly the record asked for, or a clear error.

Read-only handles race a live writer (compaction renames and unlinks segments, appends
grow the tail); the writer itself must notice a file changed under it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_log import lines_of, make_entry, wait_for

from cli.main import atb
from wal import WALCorruptionError, WALEntryNotFoundError, WALEntryStatus, WALStorage
from wal.errors import WALLogChangedError
from wal.log.segment import list_segments


def test_a_reader_opened_before_a_compaction_reads_what_it_asks_for(tmp_path: Path) -> None:
    """The issue's reproduction: reading LSN 2 through an old handle gave LSN 3's entry."""
    d = tmp_path / "log"
    w = WALStorage(d, max_segment_bytes=4096)
    acked = [w.append(make_entry(i, blob=300)) for i in range(30)]
    for e in acked[:20:2]:
        w.update_status(e, WALEntryStatus.COMPLETED)
    by_lsn = {e.lsn: e.entry_id for e in acked}
    r = WALStorage.open_readonly(d)
    try:
        w.compact()  # rewrites (renames over) and unlinks segments the reader indexed
        w.append(make_entry(99))
        seen = []
        for e in r.iter_entries():
            assert by_lsn[e.lsn] == e.entry_id, f"LSN {e.lsn} returned another entry"
            seen.append(e.lsn)
        assert seen == sorted(seen) and len(seen) >= 20
        for e in acked:
            try:
                got = r.get_entry(e.entry_id)
            except WALEntryNotFoundError:
                continue  # compacted away: a correct answer
            assert got.entry_id == e.entry_id and got.lsn == e.lsn
        pending = list(r.get_pending_entries())
        assert all(by_lsn[p.lsn] == p.entry_id for p in pending)
    finally:
        r.close()
        w.close()


def test_a_reader_whose_segments_changed_reindexes(tmp_path: Path) -> None:
    d = tmp_path / "log"
    w = WALStorage(d, max_segment_bytes=4096)
    acked = [w.append(make_entry(i, blob=300)) for i in range(30)]
    for e in acked[:25]:
        w.update_status(e, WALEntryStatus.COMPLETED)
    r = WALStorage.open_readonly(d)
    try:
        r._close_read_fds()  # as if the LRU cache had closed them: reopen by name
        w.compact()
        got = [e.entry_id for e in r.iter_entries(statuses=[WALEntryStatus.PENDING])]
        assert got == [e.entry_id for e in acked[25:]]
    finally:
        r.close()
        w.close()


def test_the_writer_refuses_a_record_that_is_not_the_one_indexed(tmp_path: Path) -> None:
    """Two records of equal length swapped on disk under the writer: never the wrong entry."""
    d = tmp_path / "log"
    with WALStorage(d) as w:
        es = [w.append(make_entry(i)) for i in range(1, 4)]
        seg = list_segments(d)[0][1]
        lines = lines_of(seg)
        (o2, l2), (_, l3) = lines[2], lines[3]
        assert len(l2) == len(l3)
        data = bytearray(seg.read_bytes())
        data[o2 : o2 + len(l2)] = l3
        seg.write_bytes(bytes(data))
        with pytest.raises(WALCorruptionError, match="LSN"):
            list(w.iter_entries())
        with pytest.raises((WALCorruptionError, WALEntryNotFoundError)):
            w.get_entry(es[1].entry_id)


WRITER = textwrap.dedent(
    """
    import sys
    from helpers_log import make_entry
    from wal import WALEntryStatus, WALStorage

    d, side = sys.argv[1], sys.argv[2]
    w = WALStorage(d, max_segment_bytes=8192)
    out = open(side, "a", buffering=1)
    n = 0
    while True:
        es = w.append_many(make_entry(n + k, blob=150, key=f"k{n + k}") for k in range(8))
        for e in es:
            out.write(f"{e.lsn} {e.entry_id}\\n")
        n += 8
        w.update_statuses((e, WALEntryStatus.COMPLETED, None, None) for e in es[:6])
        if n % 64 == 0:
            w.compact()
        if n == 64:
            print("ready", flush=True)
    """
)


def test_read_only_opens_against_a_writer_appending_rotating_compacting(tmp_path: Path) -> None:
    """Real processes: every read is the entry asked for, or a retryable error; a read-only
    open never reports corruption of this healthy, busy log; status never exits 2."""
    d = tmp_path / "log"
    side = tmp_path / "acked.txt"
    here = Path(__file__).resolve().parents[1] / "support"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), *sys.path])}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(d), str(side)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    stress = os.environ.get("WAL_STRESS") == "1"
    rounds, budget = (2000, 300.0) if stress else (300, 25.0)  # a bound on runtime, not a check
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + budget
        opens = reads = retried = 0
        env_cli = {"WAL_DIR": str(d), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
        while opens < rounds and time.monotonic() < deadline:
            try:
                r = WALStorage.open_readonly(d)
            except WALLogChangedError:
                retried += 1
                continue
            opens += 1
            try:
                got = []
                try:
                    for e in r.iter_entries():
                        assert e.verify()
                        got.append((e.lsn, e.entry_id))
                    stats = r.get_stats()
                    assert stats.entries["pending"] >= 0
                    if got:
                        e0 = r.get_entry(got[-1][1])
                        assert e0.entry_id == got[-1][1]
                except (WALLogChangedError, WALEntryNotFoundError):
                    retried += 1
                reads += len(got)
            finally:
                r.close()
            acked = dict(line.split() for line in side.read_text().splitlines() if " " in line)
            for lsn, eid in got:
                if str(lsn) in acked:
                    assert acked[str(lsn)] == str(eid), f"LSN {lsn}: another entry returned"
            if opens % 50 == 0:
                res = CliRunner().invoke(atb, ["wal", "status", "--no-db", "--json"], env=env_cli)
                assert res.exit_code != 2, res.output
        assert opens >= min(rounds, 20) and reads > 0
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    wait_for(lambda: child.returncode is not None, "the writer to die")
    with WALStorage(d) as after:  # and the log the killed writer left opens
        assert after.next_lsn > 1
