"""Every interleaving of reads, their settling, and a batch's start, COMMIT, end and abort
gives the exact balance (issue 20, item 3).

``Overlay`` is the pure in-memory part of the reads; this Hypothesis state machine drives it
exactly as the manager and ``PendingReads`` do, against a small database of its own (a
balance and a ``wal_applied`` ledger): entries found pending when the log was opened (some
already committed before the "crash"), new writes (their write hook before or after their
batch starts), batches that start, commit, end, abort before their COMMIT or abort after it
(the ambiguous commit), and reads. A read is split where the real one is: between taking the
overlay's figures and reading the database's snapshot (the ``reader`` callback), other
events run: a batch commits, a batch ends or aborts, another read runs and settles entries.
After every step, and inside every read, the figure must be the sum of every logged delta.
"""

from __future__ import annotations

import os
from decimal import Decimal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from wal.entry import WALEntry, WALEntryStatus
from wal.sync.overlay import Overlay

ACCOUNT = "a"
STRESS = os.environ.get("WAL_STRESS") == "1"


def deposit(lsn: int, delta: int) -> WALEntry:
    e = WALEntry.create(
        "atomic_balance_update", (), {"delta": Decimal(delta), "account": ACCOUNT}, None
    )
    return e.with_lsn(lsn)


class Interleavings(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.db_balance = Decimal(0)
        self.ledger: set[str] = set()
        self.log: list[WALEntry] = []  # every logged entry (the truth is their sum)
        self.done: set[str] = set()  # COMPLETED in the log
        self.unhooked: list[WALEntry] = []  # appended, write hook not yet run
        self.batched: set[str] = set()  # entries some batch started with
        self.batch: list[WALEntry] | None = None
        self.committed = False
        self.overlay: Overlay | None = None
        self.opened = False

    # ------------------------------------------------------------------ helpers

    def truth(self) -> Decimal:
        """Every logged delta, but those of writes not yet acknowledged (their write hook has
        not run) and not yet in a batch: a read racing such a write may count it or not."""
        waiting = {str(e.entry_id) for e in self.unhooked} - self.batched
        return sum(
            (Decimal(e.kwargs["delta"]) for e in self.log if str(e.entry_id) not in waiting),
            Decimal(0),
        )

    def pending(self) -> list[WALEntry]:
        return [e for e in self.log if str(e.entry_id) not in self.done]

    def read(self, interleave: list[str]) -> Decimal:
        assert self.overlay is not None

        def reader(ids: list[str]) -> tuple[Decimal, set[str]]:
            for event in interleave:
                self.event(event, inside_read=True)
            return self.db_balance, {i for i in ids if i in self.ledger}

        return self.overlay.fresh_balance(ACCOUNT, reader)

    def event(self, name: str, *, inside_read: bool = False) -> None:
        if name == "commit" and self.batch is not None and not self.committed:
            self.commit()
        elif name == "end" and self.batch is not None and self.committed:
            self.end()
        elif name == "abort" and self.batch is not None:
            self.abort()
        elif name == "read":
            got = self.read([])  # a nested read: another thread's, settling entries
            assert got == self.truth(), (got, self.truth())

    def commit(self) -> None:
        assert self.batch is not None
        for e in self.batch:
            eid = str(e.entry_id)
            if eid not in self.ledger:
                self.ledger.add(eid)
                self.db_balance += Decimal(e.kwargs["delta"])
        self.committed = True

    def end(self) -> None:
        assert self.batch is not None and self.overlay is not None
        statuses = {e.entry_id: WALEntryStatus.COMPLETED for e in self.batch}
        self.overlay.batch_finished(self.batch, statuses, set())
        self.done.update(str(e.entry_id) for e in self.batch)
        self.batch = None

    def abort(self) -> None:
        """A transient error: before the COMMIT nothing, after it all (nobody knows which)."""
        assert self.batch is not None and self.overlay is not None
        self.overlay.batch_finished(self.batch, {}, {e.entry_id for e in self.batch})
        self.batch = None

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: not self.opened)
    @rule(
        deltas=st.lists(st.integers(1, 9), min_size=1, max_size=6),
        committed=st.integers(0, 6),
    )
    def open_after_a_crash(self, deltas: list[int], committed: int) -> None:
        """The log holds pending entries; the first ``committed`` are already in the database."""
        self.log = [deposit(i + 1, d) for i, d in enumerate(deltas)]
        for e in self.log[:committed]:
            self.ledger.add(str(e.entry_id))
            self.db_balance += Decimal(e.kwargs["delta"])
        self.overlay = Overlay(open_lsn=len(self.log))
        self.overlay.track_open(self.log)
        self.opened = True

    @precondition(lambda self: self.opened)
    @rule(delta=st.integers(-9, 9).filter(bool), hook_now=st.booleans())
    def write(self, delta: int, hook_now: bool) -> None:
        assert self.overlay is not None
        e = deposit(len(self.log) + 1, delta)
        self.log.append(e)
        if hook_now:
            self.overlay.on_write(e)
        else:
            self.unhooked.append(e)  # the sync thread may find it in the log first

    @precondition(lambda self: self.unhooked)
    @rule()
    def write_hook(self) -> None:
        assert self.overlay is not None
        self.overlay.on_write(self.unhooked.pop(0))

    @precondition(lambda self: self.opened and self.batch is None)
    @rule(size=st.integers(1, 4))
    def batch_start(self, size: int) -> None:
        assert self.overlay is not None
        batch = self.pending()[:size]
        if not batch:
            return
        self.overlay.batch_starting(batch)
        self.batched.update(str(e.entry_id) for e in batch)
        self.batch = batch
        self.committed = False

    @precondition(lambda self: self.batch is not None and not self.committed)
    @rule()
    def batch_commit(self) -> None:
        self.commit()

    @precondition(lambda self: self.batch is not None and self.committed)
    @rule()
    def batch_end(self) -> None:
        self.end()

    @precondition(lambda self: self.batch is not None)
    @rule()
    def batch_abort(self) -> None:
        self.abort()

    @precondition(lambda self: self.opened)
    @rule(interleave=st.lists(st.sampled_from(["commit", "end", "abort", "read"]), max_size=3))
    def read_with_events_inside(self, interleave: list[str]) -> None:
        got = self.read(interleave)
        assert got == self.truth(), (got, self.truth())

    @invariant()
    def a_read_now_is_exact(self) -> None:
        if self.opened:
            assert self.read([]) == self.truth()
            assert self.overlay is not None
            if not self.unhooked:  # the kept state counts a write from its hook on
                assert self.overlay.kept_balance(ACCOUNT) == self.truth()


def test_every_interleaving_reads_the_exact_balance() -> None:
    run_state_machine_as_test(
        Interleavings,
        settings=settings(
            max_examples=5000 if STRESS else 400,
            stateful_step_count=40,
            deadline=None,
            derandomize=not STRESS,  # deterministic in CI; WAL_STRESS=1 soaks with random seeds
            database=None,
        ),
    )
