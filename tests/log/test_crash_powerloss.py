"""Power loss at every operation of small workloads (ALICE, CrashMonkey), through ``CrashFS``.

Each workload is run once per counted file operation, stopped by a ``SimulatedCrash`` just
before that operation. From the model of the page cache at that instant, disk images are
built: every subset of the directory operations not yet fsynced (they may reach the disk in
any order without a directory fsync), times every fate of the unsynced file tails (dropped,
kept, a random prefix, zero-filled, garbage). Each distinct image is opened with a real
``WALStorage`` and checked against what the workload was told:

* every acknowledged entry is there, intact, at the LSN it was given, with a status at least
  as new as the last acknowledged status update (COMPLETED entries may be gone once a
  compaction started: that is what compaction is for);
* the entries are a prefix of what was appended (no holes), without duplicates, and nothing
  that was never appended (no garbage record);
* no compaction leftovers remain; torn bytes that were cut are kept in a ``.broken`` file;
* the log takes a new append, and reopens with ``recovery="strict"`` (no defect left).

"Acknowledged" follows the log's promises (see ``Recorder``): with ``fsync="interval"``, and
for a ``durable=False`` status mark, only once a later acknowledged flush covers the write.
Some workloads are built so that one durability step is the only cover of an acknowledgement
(``test_power_loss_where_one_durability_step_is_the_only_cover``): each of them fails when
that step is removed (docs/testing.md, ``tests/mutation/run.py``).
``test_no_name_reaches_the_disk_before_its_data`` checks the rule "data first, then the name"
on every directory fsync of the workloads.

The last tests show that the checker has teeth: with the directory fsync of
``_create_segment``, or the one after a compaction's rename, taken out of the model, it
reports lost entries.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pytest
from faultfs import CrashFS, SimulatedCrash, TailMode, write_image
from helpers_log import content, data_end, write_at_end

from wal import WALEntry, WALEntryStatus, WALError, WALStorage
from wal.log.segment import BROKEN_SUFFIX, TMP_SUFFIX, list_segments, segment_name

PENDING = WALEntryStatus.PENDING
SYNCING = WALEntryStatus.SYNCING
COMPLETED = WALEntryStatus.COMPLETED

# what becomes of unsynced file tails; a seed for the random ones
TAILS: list[tuple[TailMode, int]] = [
    ("drop", 0),
    ("keep", 0),
    ("zero", 0),
    ("prefix", 1),
    ("prefix", 2),
    ("garbage", 1),
    ("garbage", 2),
    ("hole", 1),  # a lost page inside a multi-page unsynced write, a later page kept
]


def entry(n: int, pad: int = 0) -> WALEntry:
    kwargs: dict[str, Any] = {"n": n, "symbol": "BTCUSDT", "qty": Decimal(f"{n}.25")}
    if pad:
        kwargs["pad"] = "p" * pad
    return WALEntry.create("log_trade", kwargs=kwargs)


# ---------------------------------------------------------------------- recording a workload


@dataclass
class Attempt:
    """One entry the workload tried to append, and what it was told."""

    entry: WALEntry
    lsn: int  # the LSN it gets (appends are sequential: next_lsn before the call + index)
    acked: bool = False
    statuses: list[WALEntryStatus] = field(default_factory=lambda: [PENDING])
    acked_status: int = 0  # index into statuses of the newest acknowledged one
    droppable: bool = False  # COMPLETED was acknowledged before a compaction started


class Recorder:
    """Drives a log for a workload and writes down every attempt and acknowledgement.

    What counts as acknowledged follows the log's promises: with ``fsync="always"`` an append
    or a status update is durable when it returns; with ``fsync="interval"`` (and for a
    ``durable=False`` status mark) only once a later acknowledged flush covers it: a durable
    append or status update, ``sync()``, a compaction (it seals the active segment) or
    ``close()``. Whatever was written before such a flush is covered by it, even in an
    earlier segment: a rotation seals the segment it leaves.
    """

    def __init__(self, directory: Path, options: dict[str, Any]) -> None:
        self.directory = directory
        self.options = options
        self.interval = options.get("fsync") == "interval"
        self.fs: CrashFS | None = None
        self.log: WALStorage | None = None
        self.attempts: list[Attempt] = []
        self.by_id: dict[str, Attempt] = {}
        self.torn: bytes | None = None  # torn tail planted by a workload's prepare step
        self.compacted = 0
        self.written: list[Attempt] = []  # appended, not yet covered by an acknowledged flush
        self.lazy: list[tuple[Attempt, int]] = []  # status marks written, not yet covered

    def open(self) -> WALStorage:
        self.log = WALStorage(self.directory, fs=self.fs, **self.options)
        return self.log

    def settle(self) -> None:
        """An acknowledged flush: everything written before it is durable now."""
        for a in self.written:
            a.acked = True
        self.written.clear()
        for a, k in self.lazy:
            a.acked_status = max(a.acked_status, k)
        self.lazy.clear()

    def append(self, *entries: WALEntry) -> None:
        assert self.log is not None
        first = self.log.next_lsn
        batch = [Attempt(e, first + i) for i, e in enumerate(entries)]
        for a in batch:
            self.attempts.append(a)
            self.by_id[str(a.entry.entry_id)] = a
        # one entry: append(); several: one append_many() batch
        got = [self.log.append(entries[0])] if len(entries) == 1 else self.log.append_many(entries)
        for a, g in zip(batch, got, strict=True):
            assert g.lsn == a.lsn, (g.lsn, a.lsn)
        self.written.extend(batch)
        if not self.interval:
            self.settle()

    def status(self, *changes: tuple[int, WALEntryStatus], durable: bool = True) -> None:
        """Status updates by attempt index (several: one ``update_statuses`` batch)."""
        assert self.log is not None
        for i, s in changes:
            self.attempts[i].statuses.append(s)
        self.log.update_statuses(
            [(self.attempts[i].entry.entry_id, s, None, None) for i, s in changes],
            durable=durable,
        )
        for i, _ in changes:
            a = self.attempts[i]
            self.lazy.append((a, len(a.statuses) - 1))
        if durable and not self.interval:
            self.settle()

    def sync(self) -> None:
        assert self.log is not None
        self.log.sync()
        self.settle()

    def compact(self) -> dict[str, int]:
        assert self.log is not None
        for a in self.attempts:
            if a.statuses[a.acked_status] is COMPLETED:
                a.droppable = True
        out = self.log.compact()
        self.compacted += 1
        self.settle()  # it sealed the active segment
        return out

    def close(self) -> None:
        if self.log is not None:
            log, self.log = self.log, None
            log.close()
            if self.fs is None or not self.fs.crashed:
                self.settle()  # close() flushed what was written


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable[[Recorder], None]
    options: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[Recorder], None] | None = None  # builds the durable start, real fs
    compacts: bool = False


def _appends(r: Recorder) -> None:
    r.open()
    r.append(entry(1))
    r.append(entry(2), entry(3))
    r.status((0, SYNCING))
    r.status((1, COMPLETED), (0, COMPLETED))
    r.append(entry(4))
    r.close()


def _rotation(r: Recorder) -> None:
    # ~1.2 kB entries in 4 kB segments: with preallocate="off" a new segment every three
    # appends; with the default ("zero"), the first segment moves to a prepared one at 2 kB
    # (the next segment prepared inline at 1 kB, since CrashFS runs it in the flush)
    r.open()
    r.append(entry(1, 900))
    r.append(entry(2, 900), entry(3, 900))
    r.append(entry(4, 900))
    r.status((1, SYNCING))
    r.append(entry(5, 900), entry(6, 900))
    r.append(entry(7, 900))
    r.close()


def _compaction(r: Recorder) -> None:
    r.open()
    r.append(entry(1, 900), entry(2, 900), entry(3, 900))  # segment 1
    r.append(entry(4, 900), entry(5, 900), entry(6, 900))  # segment 2
    r.status((0, COMPLETED), (1, COMPLETED), (2, COMPLETED))  # segment 3 from here
    r.status((3, SYNCING), (4, COMPLETED))
    out = r.compact()
    # segment 1 goes away; segment 2 is rewritten with entry 4's status folded in; segment 3
    # (status records only, all folded or of dropped entries) becomes a header-only segment
    assert out["segments_removed"] == 1 and out["segments_rewritten"] == 3, out
    r.append(entry(7))
    r.status((3, COMPLETED))
    r.close()


def _torn_start(r: Recorder) -> None:
    """A log of two acknowledged entries whose last record was torn by an earlier crash."""
    log = r.open()
    r.append(entry(1), entry(2))
    r.status((0, SYNCING))
    r.close()
    del log
    seg = list_segments(r.directory)[-1][1]
    # an entry line cut in the middle: what a crash between write and fdatasync leaves
    probe = WALStorage(r.directory / "probe")
    try:
        probe.append(entry(99))
    finally:
        probe.close()
    line = list_segments(r.directory / "probe")[0][1].read_bytes().splitlines(True)[1]
    shutil.rmtree(r.directory / "probe")
    r.torn = line[: len(line) // 2]
    write_at_end(seg, r.torn)  # into the zero rest of the segment's space, after the records


def _recover_torn(r: Recorder) -> None:
    r.open()  # cuts the torn tail, keeping it in a .broken file
    r.append(entry(3))
    r.status((0, COMPLETED))
    r.close()


def _rotation_after_lazy_marks(r: Recorder) -> None:
    # COMPLETED marks written without an fsync of their own (durable=False: what the manager
    # writes behind the ledger) are the last records of a segment when the next append
    # rotates: the rotation's seal is the only fsync that ever covers them
    r.open()
    r.append(entry(1, 900), entry(2, 900), entry(3, 900))
    r.status((0, COMPLETED), durable=False)
    r.append(entry(4, 900))  # does not fit: rotates, sealing segment 1 with the mark
    assert len(list_segments(r.directory)) == 2
    r.status((1, COMPLETED), (3, SYNCING), durable=False)
    r.append(entry(5, 900), entry(6, 900))  # rotates again
    assert len(list_segments(r.directory)) == 3
    r.close()


def _rotation_in_interval_mode(r: Recorder) -> None:
    # fsync="interval": appends return after write; sync() (the background thread's job,
    # called here by hand) makes them durable. Entry 3 is written to segment 1 and never
    # synced there: the rotation before entry 4 must seal it, as sync() only syncs segment 2
    r.open()
    r.append(entry(1, 900), entry(2, 900))
    r.sync()
    r.append(entry(3, 900))
    r.status((0, COMPLETED), durable=False)
    r.append(entry(4, 900))  # rotates
    assert len(list_segments(r.directory)) == 2
    r.sync()
    r.append(entry(5, 900))
    r.status((1, SYNCING))
    r.close()  # close() syncs


def _compaction_of_a_front_segment(r: Recorder) -> None:
    # segment 1's entries are COMPLETED by marks that live in segment 2; compaction unlinks
    # segment 1 and then rewrites segment 2 without those marks. If the unlink were not
    # durable before segment 2's rewrite, a power cut could bring segment 1 back without its
    # marks: entries 1-3 PENDING again, applied to the database twice
    r.open()
    r.append(entry(1, 900), entry(2, 900), entry(3, 900))  # segment 1
    r.status((0, COMPLETED), (1, COMPLETED), (2, COMPLETED))  # does not fit: segment 2
    r.append(entry(4))  # segment 2, stays pending
    assert len(list_segments(r.directory)) == 2
    out = r.compact()
    assert out["segments_removed"] == 1 and out["segments_rewritten"] == 2, out
    r.append(entry(5))
    r.close()


def _headerless_segment_start(r: Recorder) -> None:
    """Two entries, then a segment file whose header never reached the disk (a rotation cut
    short by a power loss after the file's name was made durable)."""
    r.open()
    r.append(entry(1), entry(2))
    r.close()
    seg = r.directory / segment_name(1)
    os.truncate(seg, data_end(seg.read_bytes()))  # sealed: a rotation cuts it back first
    (r.directory / segment_name(3)).touch(mode=0o600)


def _recover_headerless(r: Recorder) -> None:
    # recovery removes the headerless segment, and appends continue in segment 1: the removal
    # must be durable first, else a power cut brings it back behind entries it overlaps
    r.open()
    r.append(entry(3))
    r.status((0, COMPLETED))
    r.close()


def _preallocated(r: Recorder) -> None:
    # ~1.2 kB entries, 4 kB segments: the first segment is prepared when the log is created
    # (zeros, then its header, synced before its name exists); the next one is asked for at
    # half full and taken by the rotation, its preparation (zeros or fallocate, then
    # fdatasync) happening between appends; every append is a write into preallocated space
    r.open()
    r.append(entry(1, 900), entry(2, 900))
    r.append(entry(3, 900))
    r.append(entry(4, 900))  # rotates into the prepared segment
    r.status((0, COMPLETED), durable=False)
    r.append(entry(5, 900), entry(6, 900))  # rotates: the sealed segment is cut back
    r.status((1, SYNCING))
    r.append(entry(7, 900))
    r.close()


def _prealloc_reopened(r: Recorder) -> None:
    # a preallocated last segment from an earlier run: appends continue inside its space
    r.open()
    r.append(entry(4, 900))
    r.status((0, COMPLETED))
    r.append(entry(5, 900))
    r.close()


def _prealloc_start(r: Recorder) -> None:
    r.open()
    r.append(entry(1, 900), entry(2, 900))
    r.append(entry(3, 900))  # now in a preallocated segment
    r.close()
    last = list_segments(r.directory)[-1][1]
    assert last.stat().st_size == 4096 and last.read_bytes().endswith(b"\0")


APPENDS = Workload("appends", _appends)
PREALLOC_ZERO = Workload(
    "prealloc-zero", _preallocated, {"max_segment_bytes": 4096, "preallocate": "zero"}
)
PREALLOC_FALLOCATE = Workload(
    "prealloc-fallocate", _preallocated, {"max_segment_bytes": 4096, "preallocate": "fallocate"}
)
PREALLOC_INTERVAL = Workload(
    "prealloc-interval",
    _preallocated,
    {
        "max_segment_bytes": 4096,
        "preallocate": "zero",
        "fsync": "interval",
        "fsync_interval_ms": 60_000,
    },
)
PREALLOC_REOPEN = Workload(
    "prealloc-reopened",
    _prealloc_reopened,
    {"max_segment_bytes": 4096, "preallocate": "zero"},
    prepare=_prealloc_start,
)
ROTATION = Workload("rotation", _rotation, {"max_segment_bytes": 4096})  # preallocated
ROTATION_OFF = Workload(
    "rotation-unpreallocated", _rotation, {"max_segment_bytes": 4096, "preallocate": "off"}
)
COMPACTION = Workload("compaction", _compaction, {"max_segment_bytes": 4096}, compacts=True)
RECOVERY = Workload("recovery", _recover_torn, prepare=_torn_start)
# segments that grow (preallocate="off"): there the rotation's seal is the only fsync that
# covers the last records of the sealed segment (a sealed preallocated segment is also cut
# back by a truncate, which syncs it too)
LAZY_ROTATION = Workload(
    "rotation-after-lazy-marks",
    _rotation_after_lazy_marks,
    {"max_segment_bytes": 4096, "preallocate": "off"},
)
# the background fsync thread never fires in the workload (60 s): every run does the same ops
INTERVAL_ROTATION = Workload(
    "rotation-in-interval-mode",
    _rotation_in_interval_mode,
    {
        "max_segment_bytes": 4096,
        "fsync": "interval",
        "fsync_interval_ms": 60_000,
        "preallocate": "off",
    },
)
FRONT_COMPACTION = Workload(
    "compaction-of-a-front-segment",
    _compaction_of_a_front_segment,
    {"max_segment_bytes": 4096},
    compacts=True,
)
HEADERLESS = Workload(
    "recovery-headerless-segment", _recover_headerless, prepare=_headerless_segment_start
)


# CrashMonkey's bounded exhaustive workloads: every sequence of three operations from
# {A: append one entry, M: append_many of two, S: advance the oldest unfinished entry's
# status, C: compact}, on a log that already has two segments, a COMPLETED and a SYNCING entry.
def _seeded(r: Recorder) -> None:
    r.open()
    r.append(entry(1, 900), entry(2, 900), entry(3, 900))  # fills segment 1
    r.append(entry(4, 900))
    r.status((0, COMPLETED), (1, SYNCING))
    r.close()


def _advance(r: Recorder) -> None:
    for i, a in enumerate(r.attempts):
        now = a.statuses[a.acked_status]
        if a.acked and now is not COMPLETED:
            r.status((i, SYNCING if now is PENDING else COMPLETED))
            return


STEPS: dict[str, Callable[[Recorder], object]] = {
    "A": lambda r: r.append(entry(len(r.attempts) + 1, 900)),
    "M": lambda r: r.append(entry(len(r.attempts) + 1, 900), entry(len(r.attempts) + 2, 900)),
    "S": _advance,
    "C": Recorder.compact,
}


def sequence(ops: str) -> Workload:
    def run(r: Recorder) -> None:
        r.open()
        for op in ops:
            STEPS[op](r)
        r.close()

    return Workload(
        f"seq-{ops}", run, {"max_segment_bytes": 4096}, prepare=_seeded, compacts="C" in ops
    )


# All 64 with every tail under WAL_STRESS=1; by default the 37 that compact, with three tails
STRESS = os.environ.get("WAL_STRESS") == "1"
SEQUENCES = [
    s for s in ("".join(p) for p in itertools.product(STEPS, repeat=3)) if STRESS or "C" in s
]


# ---------------------------------------------------------------------- running and checking


@dataclass
class Result:
    crash_points: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # recovery paths exercised

    def saw(self, what: str, n: int | bool = 1) -> None:
        if n:
            self.seen[what] = self.seen.get(what, 0) + 1


def run_workload(
    w: Workload,
    base: Path,
    crash_at: int | None,
    *,
    when: Literal["before", "after"] = "before",
    ignore_fsync_dir: Callable[[str, str], bool] | None = None,
) -> tuple[CrashFS, Recorder]:
    live = base / "live"
    shutil.rmtree(live, ignore_errors=True)
    live.mkdir(mode=0o700)
    rec = Recorder(live, w.options)
    if w.prepare is not None:
        w.prepare(rec)
        rec.log = None
    fs = CrashFS(live, crash_at=crash_at, crash_when=when, ignore_fsync_dir=ignore_fsync_dir)
    rec.fs = fs
    try:
        w.run(rec)
    except BaseException:
        # a SimulatedCrash, or the WALWriteError the storage turned it into
        if not fs.crashed:
            raise
    finally:
        rec.close()
    return fs, rec


def dir_subsets(n: int) -> Iterator[tuple[int, ...]]:
    """Which pending directory operations reach the disk: all subsets when few."""
    if n <= 4:
        for k in range(n + 1):
            yield from itertools.combinations(range(n), k)
        return
    seen: set[tuple[int, ...]] = set()
    for k in range(n + 1):
        for s in (tuple(range(k)), tuple(range(k, n))):
            if s not in seen:
                seen.add(s)
                yield s
    for i in range(n):
        yield (i,)


def compare(got: list[WALEntry], rec: Recorder) -> list[str]:
    """What is wrong with the recovered entries, given what the workload was told."""
    problems = []
    ids = [str(e.entry_id) for e in got]
    if len(set(ids)) != len(ids):
        problems.append(f"duplicate entries: {ids}")
    index = {id(a): i for i, a in enumerate(rec.attempts)}
    last = -1
    for e in got:
        a = rec.by_id.get(str(e.entry_id))
        if a is None:
            problems.append(f"an entry nobody appended: {e.to_dict()}")
            continue
        i = index[id(a)]
        if i <= last:
            problems.append(f"entry {i + 1} out of order")
        last = i
        if not e.verify() or content(e) != content(a.entry):
            problems.append(f"entry {i + 1} differs from what was appended: {e.to_dict()}")
        if e.lsn != a.lsn:
            problems.append(f"entry {i + 1} has LSN {e.lsn}, it was appended as {a.lsn}")
        if e.status not in a.statuses[a.acked_status :]:
            problems.append(
                f"entry {i + 1} is {e.status.value}; acknowledged was "
                f"{a.statuses[a.acked_status].value} (attempted: {[s.value for s in a.statuses]})"
            )
    present = set(ids)
    for i, a in enumerate(rec.attempts):
        here = str(a.entry.entry_id) in present
        if not here and a.droppable:
            continue
        if not here and a.acked:
            problems.append(f"acknowledged entry {i + 1} (LSN {a.lsn}) is lost")
        elif not here and i < last:
            problems.append(f"hole: entry {i + 1} is missing, entry {last + 1} is there")
    return problems


def check_image(img: Path, w: Workload, rec: Recorder, result: Result) -> list[str]:
    """Open a crash image with the real file system and check it; the problems found."""
    try:
        log = WALStorage(img, **w.options)
    except WALError as exc:
        return [f"the image does not open: {exc}"]
    problems: list[str] = []
    try:
        rep = log.recovery_report
        result.saw("cut a torn tail", rep.truncated_bytes > 0)
        result.saw("removed an empty segment", rep.removed_empty_segments)
        result.saw("removed a compaction temp file", rep.removed_tmp_files)
        result.saw("kept a .broken file", bool(rep.broken_files))
        result.saw("zeros read as the end", rep.spare_bytes > 0)
        got = list(log.iter_entries())
        problems += compare(got, rec)
        left = sorted(p.name for p in img.glob("*" + TMP_SUFFIX))
        if left:
            problems.append(f"compaction leftovers after open: {left}")
        if rec.torn is not None and not any(
            p.read_bytes() == rec.torn for p in img.glob("*" + BROKEN_SUFFIX + "*")
        ):
            problems.append("the torn bytes that were cut are in no .broken file")
        expect = log.next_lsn
        top = max((e.lsn or 0 for e in got), default=0)
        new = log.append(entry(1000))
        if new.lsn != expect or expect <= top:
            problems.append(f"a new append got LSN {new.lsn}; next_lsn was {expect}, top {top}")
        if w.compacts:
            log.compact()  # the recovered log finishes what the crashed compaction started
        survivors = [e for e in got if not (w.compacts and e.status is COMPLETED)]
        want = [e.to_dict() for e in [*survivors, new]]
    finally:
        log.close()
    try:
        again = WALStorage(img, recovery="strict", **w.options)
    except WALError as exc:
        return [*problems, f"does not reopen strictly after recovery: {exc}"]
    try:
        have = [e.to_dict() for e in again.iter_entries()]
    finally:
        again.close()
    if have != want:
        problems.append(f"reopen shows {len(have)} entries, not the {len(want)} seen before")
    return problems


def enumerate_crashes(
    w: Workload,
    base: Path,
    *,
    when: Literal["before", "after"] = "before",
    ignore_fsync_dir: Callable[[str, str], bool] | None = None,
    tails: list[tuple[TailMode, int]] = TAILS,
    stop_at_first: bool = False,
) -> Result:
    """Crash the workload at every counted operation; check every distinct image."""
    fs, _ = run_workload(w, base, None, ignore_fsync_dir=ignore_fsync_dir)
    total = fs.op_count
    result = Result()
    checked: set[int] = set()  # (image, what the workload was told): each checked once
    # crash before each operation, and once more at the end (the whole workload done)
    for n in [*range(1, total + 1), None]:
        fs, rec = run_workload(w, base, n, when=when, ignore_fsync_dir=ignore_fsync_dir)
        result.crash_points += 1
        where = "the end" if n is None else f"op {n} ({fs.ops[n - 1][0]} {fs.ops[n - 1][1]})"
        pending = fs.pending_dir_ops()
        told = tuple((a.acked, a.acked_status, a.droppable) for a in rec.attempts)
        for subset in dir_subsets(len(pending)):
            for mode, seed in tails:
                rng = random.Random(seed * 1_000_003 + (n or 0))
                files = fs.image_files(mode, rng, subset)
                key = hash((tuple(sorted(files.items())), told, rec.compacted > 0))
                if key in checked:
                    continue
                checked.add(key)
                img = base / f"image-{result.images}"
                write_image(img, files)
                result.images += 1
                for p in check_image(img, w, rec, result):
                    result.problems.append(
                        f"{w.name}: crash {when} {where}, tail {mode}/{seed}, directory ops "
                        f"reached disk: {[pending[i] for i in subset]}: {p}"
                    )
                shutil.rmtree(img)
                if stop_at_first and result.problems:
                    return result
    return result


# ---------------------------------------------------------------------- the model itself


def test_crashfs_models_file_data_and_directory_entries(tmp_path: Path) -> None:
    d = tmp_path / "d"
    fs = CrashFS(d)
    fd = fs.open(str(d / "a"), os.O_WRONLY | os.O_CREAT)
    fs.write(fd, b"synced\n")
    fs.fdatasync(fd)
    fs.write(fd, b"tail")
    assert fs.image_files() == {}, "a name not made durable by fsync_dir is gone"
    assert fs.pending_dir_ops() == ["create a"]
    assert fs.image_files("drop", dir_ops=[0]) == {"a": b"synced\n"}
    fs.fsync_dir(str(d))
    assert fs.image_files("drop") == {"a": b"synced\n"}
    assert fs.image_files("keep") == {"a": b"synced\ntail"}
    assert fs.image_files("zero") == {"a": b"synced\n\0\0\0\0"}
    pre = fs.image_files("prefix", random.Random(3))["a"]
    assert b"synced\ntail".startswith(pre) and len(pre) >= 7
    fs.close(fd)
    fs.rename(str(d / "a"), str(d / "b"))
    assert fs.image_files("drop") == {"a": b"synced\n"}
    assert fs.image_files("drop", dir_ops=[0]) == {"b": b"synced\n"}
    fs.fsync_dir(str(d))
    fs.unlink(str(d / "b"))
    assert fs.image_files("drop") == {"b": b"synced\n"}
    assert (d / "b").exists() is False


def test_crashfs_stops_a_workload_before_or_after_an_operation(tmp_path: Path) -> None:
    cases: list[tuple[Literal["before", "after"], bytes]] = [("before", b""), ("after", b"x")]
    for when, synced in cases:
        d = tmp_path / when
        fs = CrashFS(d, crash_at=4, crash_when=when)
        fd = fs.open(str(d / "a"), os.O_WRONLY | os.O_CREAT)
        fs.fsync_dir(str(d))
        fs.write(fd, b"x")
        with pytest.raises(SimulatedCrash):
            fs.fdatasync(fd)  # op 4
        assert fs.crashed
        with pytest.raises(OSError):
            fs.write(fd, b"y")  # the machine is down: nothing more happens
        fs.close(fd)
        assert fs.image_files("drop") == {"a": synced}
        assert fs.image_files("keep") == {"a": b"x"}


# ---------------------------------------------------------------------- the crash enumerations


@pytest.mark.parametrize(
    "w", [APPENDS, ROTATION, ROTATION_OFF, COMPACTION, RECOVERY], ids=lambda w: w.name
)
def test_power_loss_at_every_operation_loses_nothing_acknowledged(
    w: Workload, tmp_path: Path
) -> None:
    result = enumerate_crashes(w, tmp_path)
    assert result.problems == [], "\n".join(result.problems[:20])
    assert result.crash_points >= 10 and result.images >= result.crash_points
    # the images reached the recovery paths they are meant to exercise
    wanted = {
        "appends": {"cut a torn tail", "kept a .broken file"},
        # every segment of a preallocated log is prepared, its first one included: none is
        # ever empty on disk (its header is synced before its name exists)
        "rotation": {"cut a torn tail", "zeros read as the end"},
        "rotation-unpreallocated": {"cut a torn tail", "removed an empty segment"},
        "compaction": {"removed a compaction temp file", "cut a torn tail"},
        "recovery": {"cut a torn tail", "kept a .broken file"},
    }[w.name]
    assert wanted <= result.seen.keys(), result.seen


@pytest.mark.parametrize(
    "w",
    [PREALLOC_ZERO, PREALLOC_FALLOCATE, PREALLOC_INTERVAL, PREALLOC_REOPEN],
    ids=lambda w: w.name,
)
def test_power_loss_while_appending_into_preallocated_space(w: Workload, tmp_path: Path) -> None:
    """Appends into preallocated space, the prepared next segment (its preparation, header,
    rename, directory fsync), the sealed segment cut back, at every operation and every
    fate of the unsynced bytes: nothing acknowledged is lost, and the zeros of a
    preallocated segment open as the end of the log."""
    fs, _ = run_workload(w, tmp_path, None)
    ops = [op for op, path in fs.ops if "next.wal.prep" in path]
    assert ("fallocate" in ops) == (w.options["preallocate"] == "fallocate") and "rename" in ops
    assert [op for op, _ in fs.ops].count("truncate") >= (0 if w.prepare else 1)
    result = enumerate_crashes(w, tmp_path)
    assert result.problems == [], "\n".join(result.problems[:20])
    assert {"zeros read as the end", "cut a torn tail"} <= result.seen.keys(), result.seen


@pytest.mark.parametrize(
    "w",
    [LAZY_ROTATION, INTERVAL_ROTATION, FRONT_COMPACTION, HEADERLESS],
    ids=lambda w: w.name,
)
def test_power_loss_where_one_durability_step_is_the_only_cover(
    w: Workload, tmp_path: Path
) -> None:
    """Workloads where a single fsync is all that stands between a power cut and a lost
    acknowledgement: the seal of a rotation after non-durable writes (lazy marks, interval
    mode), the directory fsync after a compaction unlinks a front segment, the directory fsync
    after recovery removes a headerless segment. See docs/testing.md."""
    result = enumerate_crashes(w, tmp_path)
    assert result.problems == [], "\n".join(result.problems[:20])
    assert result.crash_points >= 8 and result.images >= result.crash_points


@pytest.mark.parametrize(
    "w",
    [
        APPENDS,
        ROTATION,
        COMPACTION,
        RECOVERY,
        LAZY_ROTATION,
        INTERVAL_ROTATION,
        FRONT_COMPACTION,
        PREALLOC_ZERO,
        PREALLOC_FALLOCATE,
    ],
    ids=lambda w: w.name,
)
def test_no_name_reaches_the_disk_before_its_data(w: Workload, tmp_path: Path) -> None:
    """Data first, then the name: a new segment's header is synced before the directory fsync
    that makes its name durable, a compaction's temp file before its rename is made durable,
    a ``.broken`` file before its name. (With the data unsynced, a power cut could leave a
    durable name over an empty or torn file; on a disk that writes pages out of order, a
    header lost under records that survived is mid-log corruption.)"""
    fs, _ = run_workload(w, tmp_path, None)
    assert fs.named_before_data == []
    assert [op for op, _ in fs.ops].count("fsync_dir") >= 1


@pytest.mark.parametrize("ops", SEQUENCES)
def test_power_loss_in_every_three_operation_sequence(ops: str, tmp_path: Path) -> None:
    tails = TAILS if STRESS else [TAILS[0], TAILS[1], TAILS[5]]
    result = enumerate_crashes(sequence(ops), tmp_path, tails=tails)
    assert result.problems == [], "\n".join(result.problems[:20])


def test_crash_after_the_operation_too(tmp_path: Path) -> None:
    result = enumerate_crashes(APPENDS, tmp_path, when="after", tails=TAILS[:3])
    assert result.problems == [], "\n".join(result.problems[:20])


# ---------------------------------------------------------------------- the checker has teeth


def test_checker_catches_a_missing_directory_fsync_for_a_new_segment(tmp_path: Path) -> None:
    def lie(caller: str, previous: str) -> bool:
        return caller == "_create_segment"

    result = enumerate_crashes(ROTATION, tmp_path, ignore_fsync_dir=lie, tails=TAILS[:1])
    assert result.problems, "without the directory fsync of a new segment nothing was lost?"
    assert any("is lost" in p or "does not open" in p for p in result.problems)


def test_checker_catches_a_missing_directory_fsync_after_a_compaction_rename(
    tmp_path: Path,
) -> None:
    def lie(caller: str, previous: str) -> bool:
        return caller == "_compact_segment" and previous == "rename"

    result = enumerate_crashes(COMPACTION, tmp_path, ignore_fsync_dir=lie, tails=TAILS[:1])
    assert result.problems, "without the directory fsync after the rename nothing was lost?"
    # a later segment's rewrite (its folded status records dropped) reached the disk while
    # the earlier segment's rewrite (the statuses folded in) did not: acknowledged statuses
    # roll back, and a COMPLETED entry would be applied to the database a second time
    assert any("acknowledged was completed" in p for p in result.problems), result.problems[:5]


@pytest.mark.parametrize(("tail", "seed"), TAILS)
def test_a_non_durable_status_mark_is_lost_or_kept_whole_and_the_next_fsync_keeps_it(
    tail: TailMode, seed: int, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    fs = CrashFS(live)
    with WALStorage(live, fs=fs) as log:
        a, b = log.append(entry(1)), log.append(entry(2))
        syncs = [op for op, _ in fs.ops].count("fdatasync")
        log.update_statuses([(a, COMPLETED, None, None)], durable=False)
        assert [op for op, _ in fs.ops].count("fdatasync") == syncs  # written, not synced
        lost = tmp_path / "lost"
        fs.crash_image(lost, tail, random.Random(seed))
        log.append(entry(3))  # its fsync covers the mark written before it
        kept = tmp_path / "kept"
        fs.crash_image(kept, tail, random.Random(seed))
    with WALStorage(lost) as log:  # a torn or missing mark: the entry is simply still pending
        assert log.get_entry(a.entry_id).status in (PENDING, COMPLETED)
        assert log.get_entry(b.entry_id).status is PENDING
    with WALStorage(kept) as log:
        assert log.get_entry(a.entry_id).status is COMPLETED
        assert [e.kwargs["n"] for e in log.iter_entries()] == [1, 2, 3]
