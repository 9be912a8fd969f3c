"""``PendingReads``: the wrapper's balance and open positions, pending entries included.

``wal.sync.overlay.Overlay`` does the counting; this module decides *how* to read the
database under it, for ``DurableDatabaseManager.get_balance`` and ``get_open_positions``:

* one snapshot when the wrapped manager reads a figure and its ledger together
  (``get_balance_and_applied``, ``get_open_positions_and_applied``); otherwise two reads
  under the manager's apply lock, so no batch commits between them; without a ledger
  (``applied_ids``) pending entries count as pending (at-least-once);
* the *kept* state instead of a fresh read while the breaker is open, and when a fresh read
  cannot connect (that failure is fed to the breaker: it is evidence of an outage);
* ``WALDatabaseError`` when there is no kept state either (the database has not been
  reachable since this process started);
* a refusal, with the apply's "this log belongs to ..." error, while the database is not the
  log's (``<WAL_DIR>/database.json`` names another one): its figures plus this log's pending
  entries would be a balance of nobody's. Never answered from the kept state either. Once the
  database was found to be the log's, it is not asked again;
* a non-transient error of a fresh read (a bug, bad SQL) raises: only an outage falls back to
  the kept state.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from wal.errors import WALDatabaseError
from wal.sync.apply import transient_error
from wal.sync.breaker import BreakerState
from wal.sync.identity import mismatch, read_target
from wal.sync.manager import WALManager
from wal.sync.overlay import BalanceReader, Overlay, PositionsReader

__all__ = ["PendingReads"]

_T = TypeVar("_T")


class PendingReads:
    """Reads of ``db`` with ``overlay``'s pending entries on top, for ``manager``'s log."""

    def __init__(self, db: Any, manager: WALManager, overlay: Overlay) -> None:
        self._db = db
        self._manager = manager
        self._overlay = overlay
        # the database epoch (WALManager.database_epoch) at which the database was found to
        # be the log's (database.json); checked again after an outage or a new connection
        self._ours: int | None = None

    def balance(self, account: str) -> Decimal:
        """``DurableDatabaseManager.get_balance`` with the log on."""
        return self._read_with_pending(
            lambda: self._overlay.fresh_balance(account, self._balance_reader(account)),
            lambda: self._overlay.kept_balance(account),
            f"the balance of account {account!r} is unknown: the database has not been "
            "reachable since this process started, so pending entries have no base",
        )

    def estimate(self, account: str) -> Decimal | None:
        """The balance as this process last knew it, plus what was logged since (no database
        read): None when no read has succeeded yet."""
        return self._overlay.kept_balance(account)

    def open_positions(self) -> list[dict[str, Any]]:
        """``DurableDatabaseManager.get_open_positions`` with the log on."""
        return self._read_with_pending(
            lambda: self._overlay.fresh_positions(self._positions_reader()),
            self._overlay.kept_positions,
            "open positions are unknown: the database has not been reachable since this "
            "process started",
        )

    def _snapshot_reads(self) -> bool:
        """The wrapped manager reads a figure and its ledger in one snapshot."""
        return callable(getattr(self._db, "get_balance_and_applied", None)) and callable(
            getattr(self._db, "get_open_positions_and_applied", None)
        )

    def _ledger(self, ids: list[str]) -> set[str]:
        applied_ids = getattr(self._db, "applied_ids", None)
        if not ids or not callable(applied_ids):
            return set()  # no ledger (at-least-once): pending entries count as pending
        return {str(x) for x in applied_ids(ids)}

    def _balance_reader(self, account: str) -> BalanceReader:
        if self._snapshot_reads():
            return lambda ids: self._db.get_balance_and_applied(account, ids)
        return lambda ids: (Decimal(self._db.get_balance(account)), self._ledger(ids))

    def _positions_reader(self) -> PositionsReader:
        if self._snapshot_reads():
            return lambda ids: self._db.get_open_positions_and_applied(ids)
        return lambda ids: (list(self._db.get_open_positions()), self._ledger(ids))

    def _read_with_pending(
        self, fresh: Callable[[], _T], kept: Callable[[], _T | None], unknown: str
    ) -> _T:
        """A fresh read (database + pending) unless the breaker is open and a kept state
        exists; the kept state when the database cannot be reached."""
        m = self._manager
        if kept() is None or m.breaker.state is not BreakerState.OPEN:
            for _ in range(2):
                try:
                    self._check_database()  # another database's figures are never an answer
                    if not m.reapply_lost():
                        # entries the database lost are not back yet: its figures would miss them
                        raise WALDatabaseError(
                            "the database lost applied entries that are not applied again yet",
                            transient=True,
                        )
                    if self._snapshot_reads():
                        return fresh()  # one snapshot: no need to wait for a batch
                    with m.apply_lock:  # two separate reads: no batch may commit between them
                        return fresh()
                except Exception as exc:
                    if not transient_error(exc):
                        raise  # a bug, bad SQL, another database: never the kept state
                    if m.take_lost_commits():
                        continue  # a new connection found lost commits: re-applied, read again
                    m.breaker.failure()  # a read that cannot connect is evidence of an outage
                    m.database_suspect()  # and what answers next may be another database
                    break
        value = kept()
        if value is None:
            raise WALDatabaseError(unknown, transient=True)
        return value

    def _check_database(self) -> None:
        """Refuse to read a database that is not the log's (``wal.sync.identity``), with the
        apply's "this log belongs to ..." error, marked permanent: no kept state answers."""
        epoch = self._manager.database_epoch
        if self._ours == epoch:
            return
        get_id = getattr(self._db, "database_id", None)
        if not callable(get_id):
            self._ours = epoch  # a manager of your own: not checked (as the apply)
            return
        target = read_target(Path(self._manager.storage.directory))
        if target is None:
            return  # nothing recorded yet: the first apply records this database
        why = mismatch(target, str(getattr(self._db, "url", "?")), get_id())
        if why is not None:
            raise WALDatabaseError(
                f"{why}: reads refuse to answer from it",
                transient=False,
                hint="point the engine at the log's database, or rebind the log with "
                "`atb wal sync --database-url URL --yes`; the entries stay pending",
            )
        self._ours = epoch
