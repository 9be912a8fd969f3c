"""Read your own writes: the database's state with the pending entries applied on top.

Position sizing on a stale balance is the failure this project exists to prevent. While
entries wait in the log (the database is down or behind), ``Overlay`` answers balance and
open-position reads as the database will look once they are applied.

How it stays exact. A *fresh* read happens with the manager's apply lock held (no entry is
being applied) and this overlay's lock held (no write hook runs): it reads the database,
then, under this overlay's lock, every pending entry up to the log's ``last_lsn`` read under
that lock (the *watermark*), skipping those the
ledger says are already applied (an ambiguous commit), and applies them on top. Entries
written later have LSNs above the watermark; the write hook applies each of them to the kept
state as it becomes durable. So every entry is counted exactly once: in the database, in
the fresh read's pending set, or by the hook. When the database cannot be reached, the kept
state (the last fresh read plus everything written since) is the answer; if there has never
been a fresh read, the balance is unknown and the read raises: trading must wait.

This holds while the wrapped manager is the only writer of the critical tables, which the
log's one-writer lock makes true for one log per database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from wal.entry import OperationType, WALEntry

__all__ = ["Overlay"]

_BAL = OperationType.BALANCE_UPDATE.value
_NEW_POS = OperationType.LOG_POSITION.value
_UPD_POS = OperationType.UPDATE_POSITION.value
_CLOSE_POS = OperationType.CLOSE_POSITION.value
_POSITION_OPS = frozenset({_NEW_POS, _UPD_POS, _CLOSE_POS})


def _dec(v: Any) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


@dataclass
class _Kept:
    balances: dict[str, Decimal] = field(default_factory=dict)
    balance_wm: dict[str, int] = field(default_factory=dict)
    positions: dict[str, dict[str, Any]] | None = None
    positions_wm: int = 0


class Overlay:
    """Kept state plus the rules that apply an entry to it. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept = _Kept()

    # -------------------------------------------------------------- entry rules

    @staticmethod
    def balance_delta(entry: WALEntry, account: str) -> Decimal:
        if entry.operation != _BAL or entry.kwargs.get("account", "default") != account:
            return Decimal(0)
        delta = entry.kwargs.get("delta")
        return Decimal(0) if delta is None else _dec(delta)

    @staticmethod
    def apply_position(positions: dict[str, dict[str, Any]], entry: WALEntry) -> None:
        kw = entry.kwargs
        pid = kw.get("position_id")
        if pid is None:
            return
        pid = str(pid)
        if entry.operation == _NEW_POS:
            row = {k: v for k, v in kw.items()}
            row["position_id"] = pid
            row.setdefault("status", "open")
            positions[pid] = row
        elif entry.operation == _UPD_POS:
            row_ = positions.get(pid)
            if row_ is not None:
                row_.update({k: v for k, v in kw.items() if v is not None and k != "position_id"})
        elif entry.operation == _CLOSE_POS:
            positions.pop(pid, None)

    # -------------------------------------------------------------- fresh reads

    def fresh_balance(
        self,
        account: str,
        db_balance: Decimal,
        pending: Iterable[WALEntry],
        last_lsn: Callable[[], int],
        already_applied: Callable[[list[WALEntry]], set[str]],
    ) -> Decimal:
        """Database balance + pending deltas up to the watermark (caller holds apply lock)."""
        with self._lock:
            # read under this lock: a write hook that ran during the database read has an
            # LSN up to here, so the pending set below counts it (a later one is above)
            watermark = last_lsn()
            mine = [
                e
                for e in pending
                if e.lsn is not None and e.lsn <= watermark and self.balance_delta(e, account)
            ]
            done = already_applied(mine)
            total = db_balance + sum(
                (self.balance_delta(e, account) for e in mine if str(e.entry_id) not in done),
                Decimal(0),
            )
            self._kept.balances[account] = total
            self._kept.balance_wm[account] = watermark
            return total

    def fresh_positions(
        self,
        db_rows: list[dict[str, Any]],
        pending: Iterable[WALEntry],
        last_lsn: Callable[[], int],
        already_applied: Callable[[list[WALEntry]], set[str]],
    ) -> list[dict[str, Any]]:
        with self._lock:
            watermark = last_lsn()  # under this lock, as in fresh_balance
            positions = {str(r["position_id"]): dict(r) for r in db_rows}
            mine = [
                e
                for e in pending
                if e.lsn is not None and e.lsn <= watermark and e.operation in _POSITION_OPS
            ]
            done = already_applied(mine)
            for e in mine:
                if str(e.entry_id) not in done:
                    self.apply_position(positions, e)
            self._kept.positions = positions
            self._kept.positions_wm = watermark
            return [dict(r) for r in positions.values()]

    # -------------------------------------------------------------- kept state

    def kept_balance(self, account: str) -> Decimal | None:
        with self._lock:
            return self._kept.balances.get(account)

    def kept_positions(self) -> list[dict[str, Any]] | None:
        with self._lock:
            p = self._kept.positions
            return None if p is None else [dict(r) for r in p.values()]

    def on_write(self, entry: WALEntry) -> None:
        """The write hook: apply a newly durable entry to the kept state."""
        lsn = entry.lsn or 0
        with self._lock:
            k = self._kept
            if entry.operation == _BAL:
                account = str(entry.kwargs.get("account", "default"))
                if account in k.balances and lsn > k.balance_wm.get(account, 0):
                    k.balances[account] += self.balance_delta(entry, account)
            elif (
                entry.operation in _POSITION_OPS
                and k.positions is not None
                and lsn > k.positions_wm
            ):
                self.apply_position(k.positions, entry)
