"""A Hypothesis state machine: ``WALStorage`` against an in-memory model of what it must hold.

Rules: append, append_many, update_status (also of unknown ids), a big append that forces a
rotation (4 KiB segments), compact (retention 0 drops COMPLETED, 1 hour keeps everything),
reopen, crash (the writer vanishes without close(): a copy of the directory taken while it is
open is reopened, as after a SIGKILL) and a torn tail (an unacknowledged half record appended
to the last segment before a crash). After every step: pending entries in LSN order, every
status, every count and the on-disk format equal the model's. Hypothesis shrinks a failure to
the shortest sequence of rules.

``WAL_STRESS=1`` runs many more and longer examples.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from helpers_log import check_files, make_entry, write_at_end
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from wal import WALEntryNotFoundError, WALEntryStatus, WALStorage
from wal.log.segment import list_segments

STRESS = bool(os.environ.get("WAL_STRESS"))
STATUSES = list(WALEntryStatus)
UNFINISHED = (WALEntryStatus.PENDING, WALEntryStatus.SYNCING)


@dataclass
class Model:
    lsn: int
    n: int
    status: WALEntryStatus
    key: str | None


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="wal-model-"))
        self.generation = 0
        self.dir = self.root / "log0"
        self.log = self._open()
        self.model: dict[uuid.UUID, Model] = {}
        self.n = 0

    def _open(self) -> WALStorage:
        return WALStorage(self.dir, max_segment_bytes=4096)

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ writes

    @rule(explicit_key=st.booleans())
    def append(self, explicit_key: bool) -> None:
        self.n += 1
        key = f"order-{self.n}" if explicit_key else None
        e = self.log.append(make_entry(self.n, key=key))
        assert e.lsn is not None
        self.model[e.entry_id] = Model(e.lsn, self.n, WALEntryStatus.PENDING, key)

    @rule(k=st.integers(min_value=1, max_value=5))
    def append_many(self, k: int) -> None:
        batch = [make_entry(self.n + i + 1) for i in range(k)]
        out = self.log.append_many(batch)
        first = out[0].lsn
        assert first is not None
        assert [e.lsn for e in out] == list(range(first, first + k))
        for e in out:
            self.n += 1
            self.model[e.entry_id] = Model(e.lsn or 0, self.n, WALEntryStatus.PENDING, None)

    @rule(data=st.data(), status=st.sampled_from(STATUSES))
    @precondition(lambda self: bool(self.model))
    def update_status(self, data: st.DataObject, status: WALEntryStatus) -> None:
        eid = data.draw(st.sampled_from(sorted(self.model, key=lambda u: self.model[u].lsn)))
        self.log.update_status(eid, status, "refused" if status is WALEntryStatus.FAILED else None)
        self.model[eid].status = status

    @rule()
    def update_unknown(self) -> None:
        before = self.log.next_lsn
        try:
            self.log.update_status(uuid.uuid4(), WALEntryStatus.COMPLETED)
        except WALEntryNotFoundError:
            pass
        else:
            raise AssertionError("a status for an unknown entry was accepted")
        assert self.log.next_lsn == before

    @rule()
    def rotate(self) -> None:
        """A 3 KB entry: with 4 KiB segments the next write starts a new segment."""
        segments = len(list_segments(self.dir))
        self.n += 1
        e = self.log.append(make_entry(self.n, blob=3000))
        self.model[e.entry_id] = Model(e.lsn or 0, self.n, WALEntryStatus.PENDING, None)
        assert len(list_segments(self.dir)) >= segments

    @rule(drop=st.booleans())
    def compact(self, drop: bool) -> None:
        res = self.log.compact(retention=0 if drop else timedelta(hours=1))
        if drop:
            done = [u for u, m in self.model.items() if m.status is WALEntryStatus.COMPLETED]
            assert res["entries_dropped"] == len(done)
            for u in done:
                del self.model[u]
        else:
            assert res["entries_dropped"] == 0

    # ------------------------------------------------------------ restarts

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = self._open()

    @rule(torn=st.integers(min_value=0, max_value=300))
    def crash(self, torn: int) -> None:
        """The writer vanishes (no close, no flush): reopen a copy taken while it was open.

        With ``torn`` > 0, the copy also holds the first bytes of a record that was being
        written when it died (never acknowledged).
        """
        self.generation += 1
        copy = self.root / f"log{self.generation}"
        shutil.copytree(self.dir, copy)
        cut = 0
        if torn:
            last = list_segments(copy)[-1][1]
            line = b"0123456789abcdef " + b'{"t":"entry","lsn":1' + b"9" * 400
            # at the logical end: into the zero rest of a preallocated segment
            at = write_at_end(last, line[:torn])
            cut = last.stat().st_size - at  # the torn bytes, and the zero rest after them
        self.log.close()  # the old process is gone; its lock with it
        shutil.rmtree(self.dir)
        self.dir = copy
        self.log = self._open()
        if torn:
            assert self.log.recovery_report.truncated_bytes == cut >= torn

    # ------------------------------------------------------------ invariants

    @invariant()
    def pending_in_lsn_order(self) -> None:
        want = sorted((m.lsn, u, m.status) for u, m in self.model.items() if m.status in UNFINISHED)
        got = [(e.lsn, e.entry_id, e.status) for e in self.log.get_pending_entries()]
        assert got == want

    @invariant()
    def statuses_and_counts(self) -> None:
        got = {e.entry_id: e for e in self.log.iter_entries()}
        assert set(got) == set(self.model)
        for u, m in self.model.items():
            e = got[u]
            assert (e.lsn, e.status, e.kwargs["n"]) == (m.lsn, m.status, m.n)
            assert e.verify()
            if m.key is not None:
                assert self.log.find_by_idempotency_key(m.key) == e
        for s in STATUSES:
            assert self.log.count(s) == sum(1 for m in self.model.values() if m.status is s)
        assert self.log.next_lsn > max((m.lsn for m in self.model.values()), default=0)

    @invariant()
    def files_well_formed(self) -> None:
        rep = check_files(self.dir)
        assert set(rep.entries) >= {m.lsn for m in self.model.values()}


LogMachine.TestCase.settings = settings(
    max_examples=500 if STRESS else 100,
    stateful_step_count=80 if STRESS else 40,
    deadline=None,  # fsync latency on a shared disk is not a property of the code
    suppress_health_check=[HealthCheck.too_slow],
)
TestLogMachine = LogMachine.TestCase
