"""Power loss while a group commit is in flight, with concurrent appenders (``CrashFS``).

The power-loss enumeration drives one writer thread; these tests hold a group's leader inside
its ``fdatasync`` (a ``Gate`` of the crash file layer) while other threads wait in the same
group, and look at the disk a power cut would leave at that instant. Every appender checks,
the moment its ``append`` returns, that its record is in the crash image that drops every
unsynced byte: an acknowledgement is a promise about the disk, not about the page cache.

* ``test_group_members_are_acknowledged_only_once_their_group_is_durable``: a member woken
  before its group's ``fdatasync`` returned is caught (it would be acknowledged, then lost).
* ``test_a_non_durable_mark_joining_a_group_does_not_take_its_fsync_away``: a ``durable=False``
  status mark (a COMPLETED mark behind the ledger) that joins a group led by an append must
  not turn the group's flush into one without ``fdatasync``.
"""

from __future__ import annotations

import linecache
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faultfs import CrashFS, Gate
from helpers_log import make_entry, wait_for

import wal.log
from wal import WALEntry, WALEntryStatus, WALStorage

LOG_DIR = str(Path(wal.log.__file__).parent)
STABLE_POLLS = 200  # a thread must look blocked this many polls in a row to count as parked


class Appender(threading.Thread):
    """Runs ``call`` once; on return, checks its entry is in the crash image that drops
    unsynced bytes (a power cut right after the acknowledgement)."""

    def __init__(self, fs: CrashFS, call: Callable[[], Any], marker: bytes, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.fs = fs
        self.call = call
        self.marker = marker
        self.acked = threading.Event()
        self.problem: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.call()
        except BaseException as exc:
            self.error = exc
            return
        files = self.fs.image_files("drop")  # under the layer's lock: one instant
        if not any(self.marker in data for data in files.values()):
            self.problem = f"{self.name} was acknowledged, and a power cut now loses it"
        self.acked.set()


def _blocked_in_log(t: threading.Thread) -> tuple[int, int] | None:
    """Where ``t`` sits if it is blocked on a lock inside the log (innermost frame on an
    ``acquire(`` call, a frame of ``wal/log`` on its stack), else None."""
    frame = sys._current_frames().get(t.ident or -1)
    if frame is None:
        return None
    if "acquire(" not in linecache.getline(frame.f_code.co_filename, frame.f_lineno):
        return None
    f: Any = frame
    while f is not None:
        if f.f_code.co_filename.startswith(LOG_DIR):
            return (id(frame.f_code), frame.f_lasti)
        f = f.f_back
    return None


def wait_parked_or_done(threads: list[Appender], what: str) -> None:
    """Wait until each thread has returned or sits blocked inside the log, the same spot
    for ``STABLE_POLLS`` polls in a row (a thread that was just woken moves on)."""
    last: dict[str, Any] = {}
    streak = [0]

    def settled() -> bool:
        now = {t.name: None if not t.is_alive() else _blocked_in_log(t) for t in threads}
        if any(t.is_alive() and now[t.name] is None for t in threads):
            streak[0] = 0
        elif now == last:
            streak[0] += 1
        else:
            streak[0] = 1
        last.clear()
        last.update(now)
        return streak[0] >= STABLE_POLLS

    wait_for(settled, what)


def _marker(e: WALEntry) -> bytes:
    return str(e.entry_id).encode()


def _reopened(tmp_path: Path, fs: CrashFS, name: str) -> list[WALEntry]:
    img = tmp_path / name
    fs.crash_image(img, "drop")
    with WALStorage(img) as log:
        return list(log.iter_entries())


def test_group_members_are_acknowledged_only_once_their_group_is_durable(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    fs = CrashFS(live)
    log = WALStorage(live, fs=fs)
    gates: list[Gate] = []
    threads: list[Appender] = []
    try:
        # a lone appender flushes at once: hold it in its fdatasync, so the next ones queue
        first = fs.add_gate(Gate("fdatasync"))
        gates.append(first)
        e0 = make_entry(0)
        lone = Appender(fs, lambda: log.append(e0), _marker(e0), "lone")
        threads.append(lone)
        lone.start()
        assert first.reached.wait(30)
        syncs_before = sum(1 for op, _ in fs.ops if op == "fdatasync")

        # the next appender leads the next group (it waits for the flush in progress); three
        # more join that group as members and wait on it
        entries = [make_entry(i) for i in range(1, 5)]
        group = [
            Appender(fs, lambda e=e: log.append(e), _marker(e), f"appender-{i}")
            for i, e in enumerate(entries, 1)
        ]
        threads.extend(group)
        group[0].start()
        wait_parked_or_done(group[:1], "the group's leader to wait for the flush in progress")
        for t in group[1:]:
            t.start()
        wait_parked_or_done(group, "the members to join the group")
        assert not any(t.acked.is_set() for t in group)

        # let the lone flush end; hold the group's leader inside the group's fdatasync
        flush = fs.add_gate(Gate("fdatasync"))
        gates.append(flush)
        first.release.set()
        wait_for(lambda: flush.reached.is_set(), "the group's fdatasync")
        wait_parked_or_done([lone, *group], "the group to wait for its fdatasync")

        # a power cut at this instant: whoever was told "durable" must be on the disk
        told = [t for t in threads if t.acked.is_set()]
        files = fs.image_files("drop")
        for t in told:
            assert any(t.marker in d for d in files.values()), f"{t.name} acknowledged, lost"
        assert [t.name for t in told] == ["lone"], "members acknowledged before their fsync"

        flush.release.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
            assert t.error is None, t.error
        assert [t.problem for t in threads if t.problem] == []
        # the four appends shared one write and one fdatasync (one group)
        assert sum(1 for op, _ in fs.ops if op == "fdatasync") == syncs_before + 1
    finally:
        for g in gates:
            g.release.set()
        for t in threads:
            t.join(30)
        log.close()
    got = _reopened(tmp_path, fs, "after")
    assert sorted(e.kwargs["n"] for e in got) == [0, 1, 2, 3, 4]


def test_a_non_durable_mark_joining_a_group_does_not_take_its_fsync_away(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    fs = CrashFS(live)
    log = WALStorage(live, fs=fs)
    gates: list[Gate] = []
    threads: list[Appender] = []
    try:
        done = log.append(make_entry(0))  # to be marked COMPLETED below
        first = fs.add_gate(Gate("fdatasync"))
        gates.append(first)
        e1 = make_entry(1)
        lone = Appender(fs, lambda: log.append(e1), _marker(e1), "lone")
        threads.append(lone)
        lone.start()
        assert first.reached.wait(30)

        # an append leads the next group; a durable=False mark joins it
        e2 = make_entry(2)
        leader = Appender(fs, lambda: log.append(e2), _marker(e2), "leader")
        threads.append(leader)
        leader.start()
        wait_parked_or_done([leader], "the leader to wait for the flush in progress")

        def mark() -> None:
            log.update_statuses([(done, WALEntryStatus.COMPLETED, None, None)], durable=False)

        lazy = Appender(fs, mark, b"", "lazy-mark")  # a lazy mark promises nothing itself
        threads.append(lazy)
        lazy.start()
        wait_parked_or_done([leader, lazy], "the mark to join the leader's group")

        flush = fs.add_gate(Gate("fdatasync"))
        gates.append(flush)
        first.release.set()
        # the group holds an append: its flush must fsync (else the leader returns unsynced)
        wait_for(
            lambda: flush.reached.is_set() or leader.acked.is_set() or leader.problem is not None,
            "the group's flush",
        )
        flush.release.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
            assert t.error is None, t.error
        assert leader.problem is None, leader.problem
        assert flush.reached.is_set(), "the group of an append and a lazy mark had no fdatasync"
    finally:
        for g in gates:
            g.release.set()
        for t in threads:
            t.join(30)
        log.close()
    got = {e.kwargs["n"]: e.status for e in _reopened(tmp_path, fs, "after")}
    assert got == {
        0: WALEntryStatus.COMPLETED,
        1: WALEntryStatus.PENDING,
        2: WALEntryStatus.PENDING,
    }
