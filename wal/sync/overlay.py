"""Read your own writes: the database's state with the pending entries applied on top.

Position sizing on a stale or doubled balance is the failure this project exists to prevent.
``Overlay`` answers balance and open-position reads as the database will look once every
logged entry is applied, exactly once, in every state the log and the database can be in,
including after a crash, and without waiting for a drain.

What it keeps (in memory, fed by the manager, never by reading the log back):

* per account, the sum of the deltas of the balance entries that are logged and not yet
  known applied (``on_write`` adds, the end of a batch subtracts; signed, so a batch that ends
  before the writer's hook ran nets out) and the pending position entries by LSN;
* the *uncertain* entries: those of the batch being applied (``batch_starting`` to
  ``batch_finished``) and those **maybe applied**: every pending entry found when the log was
  opened (a crash, or a power loss of COMPLETED marks written with ``durable=False``, can
  leave an entry committed in the database and pending in the log) and the entries of a
  batch whose COMMIT's outcome is unknown (the ambiguous commit).

A fresh read takes the sums and the uncertain entries, then reads the database and asks its
``wal_applied`` ledger about the uncertain entries **in one snapshot**
(``get_balance_and_applied``), and subtracts those the ledger has: they are already in the
database's figure. A gate keeps a new batch from starting between the two (a batch may still
commit meanwhile: the ledger, in the same snapshot as the balance, says whether it did), so a
read waits at most for a batch's *start*, never for its commit, and the drain waits at most
for one read. Maybe-applied entries are settled by the first fresh read (one ledger query,
then none). So an entry is counted once: in the database's figure, or in the sums. Between a
batch's steps the sync thread steps aside for the reads in progress (``pause_for_reads``, at
most ``READS_FIRST_SECONDS`` per step): a read's database calls would otherwise each wait for
the interpreter lock that the busy sync thread holds.

When the database cannot be reached, the *kept* state answers: the last fresh read plus
everything logged since that read started (minus dead letters). If there has never been a
fresh read, the balance is unknown and the read raises: trading must wait.

Its sums are exact whatever the caller's decimal context: every public method that adds or
subtracts (or reads an entry's effect) runs in the money context (``wal.money.exact``), and the
private helpers run only under them.

This holds while the wrapped manager is the only writer of the critical tables, which the
log's one-writer lock makes true for one log per database.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from wal.entry import OperationType, WALEntry, WALEntryStatus
from wal.money import exact

__all__ = ["BalanceReader", "Overlay", "PositionsReader"]

_BAL = OperationType.BALANCE_UPDATE.value
_NEW_POS = OperationType.LOG_POSITION.value
_UPD_POS = OperationType.UPDATE_POSITION.value
_CLOSE_POS = OperationType.CLOSE_POSITION.value
_ORDER_FILL = OperationType.ORDER_FILL.value  # carries its position changes in position_ops
_POSITION_OPS = frozenset({_NEW_POS, _UPD_POS, _CLOSE_POS, _ORDER_FILL})
_DONE = (WALEntryStatus.COMPLETED, WALEntryStatus.FAILED)
_ZERO = Decimal(0)
READS_FIRST_SECONDS = 0.005  # the longest the sync thread steps aside for reads, per step

# (ids to ask the ledger about) -> (the database's figure, the ids its ledger holds), one snapshot
BalanceReader = Callable[[list[str]], tuple[Decimal, set[str]]]
PositionsReader = Callable[[list[str]], tuple[list[dict[str, Any]], set[str]]]


def _dec(v: Any) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


@dataclass(frozen=True, slots=True)
class _Effect:
    """What an entry does to the reads: a balance delta, position operations, or both (a
    fill: its cash and its position change)."""

    entry_id: str
    lsn: int
    account: str | None  # the account whose balance it changes (by ``delta``)
    delta: Decimal
    entry: WALEntry | None  # the entry whose position operations are applied to rows


def _effect(entry: WALEntry) -> _Effect | None:
    lsn = entry.lsn or 0
    if entry.operation == _BAL:
        delta = entry.kwargs.get("delta")
        if delta is None:
            return None
        account = str(entry.kwargs.get("account", "default"))
        return _Effect(str(entry.entry_id), lsn, account, _dec(delta), None)
    if entry.operation == _ORDER_FILL:
        # a fill moves cash (on its order's account) and positions, in one entry
        kw = entry.kwargs
        cash = kw.get("cash")
        payer = None if cash is None else str(kw.get("account"))
        moved = _ZERO if cash is None else _dec(cash) - _dec(kw.get("replaces_cash") or 0)
        moves = entry if kw.get("position_ops") else None
        if payer is None and moves is None:
            return None
        return _Effect(str(entry.entry_id), lsn, payer, moved, moves)
    if entry.operation in _POSITION_OPS and entry.kwargs.get("position_id") is not None:
        return _Effect(str(entry.entry_id), lsn, None, _ZERO, entry)
    return None


class _Gate:
    """Many reads at once, or one batch start; a waiting batch start goes before new reads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._starting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._starting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    def pause_for_reads(self, timeout: float) -> None:
        """Wait until no read is in progress, at most ``timeout`` seconds."""
        with self._cond:
            if self._readers:
                self._cond.wait_for(lambda: not self._readers, timeout)

    @contextmanager
    def starting(self) -> Iterator[None]:
        with self._cond:
            self._starting += 1
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._starting -= 1
                self._cond.notify_all()


class Overlay:
    """Pending effects, uncertain entries and the kept state. Thread-safe.

    ``open_lsn``: the log's last LSN when it was opened; entries up to it were found in the
    log (``track_open``), no write hook will come for them.
    """

    def __init__(self, open_lsn: int = 0) -> None:
        self._lock = threading.Lock()
        self._gate = _Gate()
        self._open_lsn = open_lsn
        self._sums: dict[str, Decimal] = {}  # logged and not known applied (signed)
        self._logged: dict[str, Decimal] = {}  # logged minus dead letters: the kept state's clock
        self._positions: dict[int, _Effect] = {}  # pending position entries by LSN
        self._hooked: set[str] = set()  # logged by this process, counted, not yet finished
        self._batched_first: set[str] = set()  # counted by their batch before their write hook
        self._inflight: dict[str, _Effect] = {}  # the batch being applied
        self._unsure: dict[str, _Effect] = {}  # maybe applied: found at open, ambiguous commits
        self._early: set[str] = set()  # found in the ledger by a read before the drain got them
        self._reads = 0  # fresh reads started (orders the kept states)
        self._kept_bal: dict[str, tuple[int, Decimal, Decimal]] = {}  # read no, value, logged
        self._kept_pos: dict[str, dict[str, Any]] | None = None
        self._kept_pos_read = 0
        self._pos_seq = 0  # position write hooks so far
        self._pos_events: deque[tuple[int, WALEntry]] = deque()  # hooks during position reads
        self._pos_reading = 0

    # -------------------------------------------------------------- entry rules

    @staticmethod
    @exact
    def balance_delta(entry: WALEntry, account: str) -> Decimal:
        """What ``entry`` adds to ``account``'s balance (a balance update, or a fill's cash)."""
        eff = _effect(entry)
        if eff is None or eff.account != account:
            return _ZERO
        return eff.delta

    @staticmethod
    def apply_position(positions: dict[str, dict[str, Any]], entry: WALEntry) -> None:
        if entry.operation == _ORDER_FILL:  # an order fill: its position operations, in order
            for op in entry.kwargs.get("position_ops") or []:
                Overlay.apply_position_op(positions, str(op["op"]), op["kwargs"])
            return
        Overlay.apply_position_op(positions, entry.operation, entry.kwargs)

    @staticmethod
    def apply_position_op(
        positions: dict[str, dict[str, Any]], operation: str, kw: dict[str, Any]
    ) -> None:
        pid = kw.get("position_id")
        if pid is None:
            return
        pid = str(pid)
        if operation == _NEW_POS:
            row = dict(kw)
            row["position_id"] = pid
            row.setdefault("status", "open")
            positions[pid] = row
        elif operation == _UPD_POS:
            row_ = positions.get(pid)
            if row_ is not None:
                row_.update({k: v for k, v in kw.items() if v is not None and k != "position_id"})
        elif operation == _CLOSE_POS:
            positions.pop(pid, None)

    # -------------------------------------------------------------- feeding

    @exact
    def track_open(self, pending: Iterable[WALEntry]) -> None:
        """The entries pending when the log was opened: counted, and maybe applied (a crash
        may have come between the database's COMMIT and the log's COMPLETED record)."""
        with self._lock:
            for entry in pending:
                eff = _effect(entry)
                if eff is None:
                    continue
                self._count(eff, 1)
                self._unsure[eff.entry_id] = eff

    @exact
    def on_write(self, entry: WALEntry) -> None:
        """The write hook: a newly durable entry (before it is applied, or while: the sync
        thread may find it in the log before this hook runs; then the batch counted it)."""
        eff = _effect(entry)
        if eff is None:
            return
        with self._lock:
            if eff.entry_id in self._batched_first:
                self._batched_first.discard(eff.entry_id)  # counted when its batch started
                return
            self._register(eff)

    def _register(self, eff: _Effect) -> None:
        """Count a newly logged entry as pending (lock held): once, by whichever comes first,
        its write hook or the start of the batch that applies it."""
        self._hooked.add(eff.entry_id)
        self._count(eff, 1)
        if eff.account is not None:
            self._logged[eff.account] = self._logged.get(eff.account, _ZERO) + eff.delta
        if eff.entry is not None:
            self._pos_seq += 1
            if self._pos_reading:
                self._pos_events.append((self._pos_seq, eff.entry))
            if self._kept_pos is not None:
                self.apply_position(self._kept_pos, eff.entry)

    def pause_for_reads(self) -> None:
        """The sync thread, between a batch's steps, lets the reads in progress finish first
        (at most ``READS_FIRST_SECONDS``). A read makes a database call or two, and after each
        one waits for the interpreter lock, which the sync thread, busy in Python, gives up
        only every ``sys.getswitchinterval()`` (5 ms): during a backlog's drain, reads took
        up to 13 ms (SQLite) and 29 ms (PostgreSQL) at p99. The drain waits instead."""
        self._gate.pause_for_reads(READS_FIRST_SECONDS)

    @exact
    def batch_starting(self, batch: Sequence[WALEntry]) -> None:
        """The manager is about to apply ``batch``: its entries are uncertain until it ends.
        Waits for the reads in progress (a read must not see a batch start mid-way). An entry
        logged by this process whose write hook has not run yet is counted now: the hook
        comes after the append returns, and the sync thread may apply the entry before."""
        effects = [eff for eff in map(_effect, batch) if eff is not None]
        if not effects:
            return
        with self._gate.starting(), self._lock:
            for eff in effects:
                known = eff.entry_id in self._hooked or eff.lsn <= self._open_lsn
                if not known and eff.entry_id not in self._batched_first:
                    self._batched_first.add(eff.entry_id)
                    self._register(eff)
                self._inflight[eff.entry_id] = eff

    @exact
    def batch_finished(
        self,
        batch: Sequence[WALEntry],
        statuses: Mapping[Any, WALEntryStatus],
        unsure: Iterable[Any] = (),
    ) -> None:
        """The batch ended: entries COMPLETED or FAILED leave the pending sums; ``unsure``
        ones (the COMMIT's outcome is unknown) stay maybe applied; the others stay pending."""
        maybe = {str(x) for x in unsure}
        with self._lock:
            for entry in batch:
                eff = _effect(entry)
                if eff is None:
                    continue
                eid = eff.entry_id
                self._inflight.pop(eid, None)
                status = statuses.get(entry.entry_id)
                if status in _DONE:
                    self._unsure.pop(eid, None)
                    self._hooked.discard(eid)
                    if eid in self._early:
                        self._early.discard(eid)  # a read already took it out of the sums
                        continue
                    self._count(eff, -1)
                    if status is WALEntryStatus.FAILED and eff.account is not None:
                        # a dead letter never reaches the database: not in the kept state either
                        self._logged[eff.account] = self._logged.get(eff.account, _ZERO) - eff.delta
                elif eid in maybe and eid not in self._early:
                    # maybe committed (an ambiguous COMMIT); an entry a read already found in
                    # the ledger is known applied and out of the sums: it stays so
                    self._unsure[eid] = eff

    def _count(self, eff: _Effect, sign: int) -> None:
        """Add (1) or remove (-1) an entry's effect from the pending state (lock held)."""
        if eff.account is not None:
            self._sums[eff.account] = self._sums.get(eff.account, _ZERO) + sign * eff.delta
        if eff.entry is not None:
            if sign > 0:
                self._positions[eff.lsn] = eff
            else:
                self._positions.pop(eff.lsn, None)

    def _settle(self, asked: Iterable[str], applied: set[str]) -> None:
        """Maybe-applied entries the ledger answered about (lock held, gate held): those in
        it are in the database's figure, the others are plainly pending."""
        for eid in asked:
            eff = self._unsure.get(eid)
            if eff is None or eid in self._inflight:
                continue  # a batch in flight decides it when it ends
            del self._unsure[eid]
            if eid in applied:
                self._count(eff, -1)
                self._early.add(eid)  # the drain will find it in the ledger: skip it then

    # -------------------------------------------------------------- fresh reads

    @exact
    def fresh_balance(self, account: str, read: BalanceReader) -> Decimal:
        """The database's balance plus every entry logged and not in it (see the module)."""
        with self._gate.reading():
            with self._lock:
                self._reads += 1
                number = self._reads
                logged = self._logged.get(account, _ZERO)
                total = self._sums.get(account, _ZERO)
                # the uncertain entries still counted in the sums: one a read already found in
                # the ledger (early) is out of them, even while a batch replays it
                mine = {
                    eid: eff.delta
                    for eid, eff in (*self._inflight.items(), *self._unsure.items())
                    if eff.account == account and eid not in self._early
                }
                settle = list(self._unsure)  # one question settles every maybe-applied entry
            asked = list(dict.fromkeys([*mine, *settle]))
            db_balance, applied = read(asked)
            with self._lock:
                value = _dec(db_balance) + total
                value -= sum((d for eid, d in mine.items() if eid in applied), _ZERO)
                self._settle(settle, applied)
                kept = self._kept_bal.get(account)
                if kept is None or kept[0] < number:
                    self._kept_bal[account] = (number, value, logged)
                return value

    @exact
    def fresh_positions(self, read: PositionsReader) -> list[dict[str, Any]]:
        """The database's open positions with every pending position entry applied on top."""
        with self._gate.reading():
            with self._lock:
                self._reads += 1
                number = self._reads
                pending = [self._positions[lsn] for lsn in sorted(self._positions)]
                uncertain = {
                    eid
                    for eid, eff in (*self._inflight.items(), *self._unsure.items())
                    if eff.entry is not None
                }
                settle = list(self._unsure)
                seq = self._pos_seq
                self._pos_reading += 1
            try:
                rows, applied = read(list(dict.fromkeys([*uncertain, *settle])))
            finally:
                with self._lock:
                    self._pos_reading -= 1
            with self._lock:
                positions = {str(r["position_id"]): dict(r) for r in rows}
                for eff in pending:
                    if eff.entry_id in uncertain and eff.entry_id in applied:
                        continue  # already in the database's rows
                    assert eff.entry is not None
                    self.apply_position(positions, eff.entry)
                self._settle(settle, applied)
                if number >= self._kept_pos_read:
                    kept = {k: dict(v) for k, v in positions.items()}
                    for s, entry in self._pos_events:
                        if s > seq:  # logged while this read ran
                            self.apply_position(kept, entry)
                    self._kept_pos = kept
                    self._kept_pos_read = number
                if not self._pos_reading:
                    self._pos_events.clear()
                return [dict(r) for r in positions.values()]

    # -------------------------------------------------------------- kept state

    @exact
    def kept_balance(self, account: str) -> Decimal | None:
        """The last fresh balance plus what was logged since that read started."""
        with self._lock:
            kept = self._kept_bal.get(account)
            if kept is None:
                return None
            _, value, logged = kept
            return value + self._logged.get(account, _ZERO) - logged

    def kept_positions(self) -> list[dict[str, Any]] | None:
        with self._lock:
            p = self._kept_pos
            return None if p is None else [dict(r) for r in p.values()]

    def uncertain(self) -> int:
        """How many entries a read would ask the ledger about now (for tests and stats)."""
        with self._lock:
            return len(self._inflight) + len(self._unsure)
