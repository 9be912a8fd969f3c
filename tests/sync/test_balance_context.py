"""The caller's decimal context never changes a balance (wal.money).

An engine that prices with ``decimal.getcontext().prec = 6``, lowers
``decimal.DefaultContext`` at startup (every new thread copies it) or traps ``Inexact`` must
get the same balances as one that does not: in the ``balances`` row, in the sum of
``balance_changes``, in ``get_balance()`` and in what ``atomic_balance_update`` returns,
whoever applies the entry (``drain()`` in the engine's thread, ``WAL_APPLY=inline``, the
sync thread).

Real parts: a log directory and a SQLite file per test, the real sync thread.
"""

from __future__ import annotations

import decimal
import threading
import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from trading_child import fast_config

from wal import DurableDatabaseManager, WALEntry, WALEntryStatus
from wal.db import DatabaseManager
from wal.db.schema import balance_changes, balances

SEED = Decimal("1000000.01")
FEE = Decimal("0.07")


def open_ddb(tmp_path: Path, **overrides: object) -> DurableDatabaseManager:
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    ddb = DurableDatabaseManager(
        DatabaseManager(url), config=fast_config(tmp_path / "wal", url, **overrides)
    )
    ddb.start()
    return ddb


def stored(ddb: DurableDatabaseManager) -> tuple[Decimal, Decimal]:
    """The ``balances`` row and the sum of the ``balance_changes`` deltas (summed exactly)."""
    with ddb.db.engine.connect() as conn:
        row = conn.execute(sa.select(balances.c.balance)).scalar_one()
        deltas = [d for (d,) in conn.execute(sa.select(balance_changes.c.delta))]
    with decimal.localcontext(decimal.Context(prec=60)):
        return row, sum(deltas, Decimal(0))


def low_precision() -> decimal.Context:
    """An engine's pricing context: 6 significant digits."""
    return decimal.Context(prec=6, rounding=decimal.ROUND_HALF_EVEN)


@pytest.mark.parametrize("apply_mode", ["behind", "inline"])
def test_a_low_precision_caller_keeps_every_cent(tmp_path: Path, apply_mode: str) -> None:
    """(1) applied by ``drain()`` in a prec=6 thread; (2) the same with WAL_APPLY=inline
    (applied inside ``atomic_balance_update``, in the caller's thread)."""
    ddb = open_ddb(tmp_path, apply_mode=apply_mode, sync_interval=60.0)
    try:
        ddb.atomic_balance_update(SEED, reason="seed")
        assert ddb.drain(30) == 0
        returned = []
        with decimal.localcontext(low_precision()):
            for _ in range(3):
                returned.append(ddb.atomic_balance_update(FEE, reason="fee"))
            pending_read = ddb.get_balance()
            assert ddb.drain(30) == 0
            drained_read = ddb.get_balance()
        expected = Decimal("1000000.22")
        assert returned == [Decimal("1000000.08"), Decimal("1000000.15"), expected]
        assert pending_read == drained_read == expected
        assert stored(ddb) == (expected, expected)
    finally:
        ddb.stop()
        ddb.db.dispose()


def test_the_context_manager_form_adds_exactly_in_a_low_precision_caller(
    tmp_path: Path,
) -> None:
    ddb = open_ddb(tmp_path, sync_interval=60.0)
    try:
        ddb.atomic_balance_update(SEED, reason="seed")
        with decimal.localcontext(low_precision()):
            with ddb.atomic_balance_update() as t:
                assert t.add(FEE, reason="fee") == Decimal("1000000.08")
                assert t.add(FEE, reason="fee") == Decimal("1000000.15")
            assert ddb.drain(30) == 0
        assert stored(ddb) == (Decimal("1000000.15"), Decimal("1000000.15"))
    finally:
        ddb.stop()
        ddb.db.dispose()


class _Applied:
    """An apply observer: which threads applied batches; set once every entry is done."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.done = 0
        self.threads: set[str] = set()
        self.all_done = threading.Event()

    def batch_starting(self, batch: Sequence[WALEntry]) -> None:
        self.threads.add(threading.current_thread().name)

    def batch_finished(
        self,
        batch: Sequence[WALEntry],
        statuses: dict[uuid.UUID, WALEntryStatus],
        unsure: set[uuid.UUID],
    ) -> None:
        self.done += sum(s is WALEntryStatus.COMPLETED for s in statuses.values())
        if self.done >= self.want:
            self.all_done.set()


def test_a_lowered_default_context_does_not_reach_the_sync_thread(tmp_path: Path) -> None:
    """(3) ``decimal.DefaultContext.prec = 8`` before the manager starts: every new thread's
    context is a copy of it, the sync thread's too; its apply is exact all the same."""
    decimal.getcontext()  # this thread's own context exists before the template is lowered
    saved = decimal.DefaultContext.prec
    decimal.DefaultContext.prec = 8
    try:
        ddb = open_ddb(tmp_path, sync_interval=60.0)  # behind: the sync thread applies
        try:
            applied = _Applied(want=2)
            assert ddb.manager is not None
            ddb.manager.add_apply_observer(applied)
            ddb.atomic_balance_update(SEED, reason="seed")
            ddb.atomic_balance_update(FEE, reason="fee")
            assert applied.all_done.wait(60), "the sync thread did not apply the entries"
            assert applied.threads == {"wal-sync"}
            assert stored(ddb) == (Decimal("1000000.08"), Decimal("1000000.08"))
            assert ddb.get_balance() == Decimal("1000000.08")
        finally:
            ddb.stop()
            ddb.db.dispose()
    finally:
        decimal.DefaultContext.prec = saved


@pytest.mark.parametrize("apply_mode", ["behind", "inline"])
def test_a_caller_trapping_inexact_can_still_update(tmp_path: Path, apply_mode: str) -> None:
    """(4) a context with ``Inexact``, ``Rounded`` and ``FloatOperation`` trapped: a correct
    update (whose exact sum needs more digits than the caller's 6) neither raises nor rounds."""
    ddb = open_ddb(tmp_path, apply_mode=apply_mode, sync_interval=60.0)
    try:
        ddb.atomic_balance_update(SEED, reason="seed")
        assert ddb.drain(30) == 0
        strict = low_precision()
        for signal in (decimal.Inexact, decimal.Rounded, decimal.FloatOperation):
            strict.traps[signal] = True
        with decimal.localcontext(strict):
            assert ddb.atomic_balance_update(FEE, reason="fee") == Decimal("1000000.08")
            assert ddb.get_balance() == Decimal("1000000.08")
            assert ddb.drain(30) == 0
            assert ddb.get_balance() == Decimal("1000000.08")
        assert stored(ddb) == (Decimal("1000000.08"), Decimal("1000000.08"))
    finally:
        ddb.stop()
        ddb.db.dispose()


def test_the_database_manager_alone_is_exact_in_a_low_precision_caller(
    tmp_path: Path,
) -> None:
    """The bundled ``DatabaseManager`` called directly (no log): the same."""
    db = DatabaseManager(f"sqlite:///{tmp_path / 'atb.db'}")
    try:
        db.atomic_balance_update(SEED, reason="seed")
        with decimal.localcontext(low_precision()):
            assert db.atomic_balance_update(FEE) == Decimal("1000000.08")
            with db.atomic_balance_update() as t:
                assert t.add(FEE) == Decimal("1000000.15")
        assert db.get_balance() == Decimal("1000000.15")
    finally:
        db.dispose()
