"""The order audit trail, verified: a hash chain over every order event, with anchors.

Every ``order_events`` row carries ``audit_seq`` (1, 2, ... across all orders), ``prev_hash``
(the previous row's ``hash``; 64 zeros for the first) and ``hash = SHA-256(canonical JSON of
the event || prev_hash)`` (:func:`wal.db.orders.audit_hash`). The journal computes them when
it journals the event (:mod:`wal.orders.journal`), and ``order_audit_anchors`` keeps (seq,
hash) every 1,000 events and at session end. Triggers refuse ``UPDATE`` and ``DELETE`` on
both tables, so only someone bypassing the database's own rules (a direct file edit, a
superuser with the triggers disabled) can change a row, and ``verify_audit`` then finds it:

* a changed row: its recomputed hash differs (or the next row's ``prev_hash`` does);
* a removed row inside the chain: a gap in ``audit_seq``;
* rows cut off the end: an anchor names a seq (and hash) the table no longer has, or an
  order's ``last_seq`` is beyond its last event row.

::

    report = verify_audit(db)          # db: a DatabaseManager
    report.ok, report.events, report.first_broken_seq, report.message
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wal.db import DatabaseManager
from wal.db.orders import GENESIS_HASH, audit_hash

__all__ = ["AuditReport", "verify_audit"]

_BATCH = 5_000


@dataclass(frozen=True)
class AuditReport:
    """What ``verify_audit`` found. ``ok`` is True only for an intact chain and anchors."""

    events: int  # event rows checked
    anchors: int  # anchors checked
    last_seq: int  # the chain's last audit_seq (0: empty)
    last_confirmed_anchor: int | None  # the last anchor the rows confirm
    first_broken_seq: int | None = None  # the first audit_seq whose link is broken
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def message(self) -> str:
        if self.ok:
            anchor = (
                f", last anchor at seq {self.last_confirmed_anchor}"
                if self.last_confirmed_anchor is not None
                else ""
            )
            return f"audit chain intact: {self.events} events{anchor}"
        return self.problems[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "anchors": self.anchors,
            "last_seq": self.last_seq,
            "last_confirmed_anchor": self.last_confirmed_anchor,
            "first_broken_seq": self.first_broken_seq,
            "problems": list(self.problems),
        }


def verify_audit(db: DatabaseManager) -> AuditReport:
    """Walk the chain in ``audit_seq`` order, then the anchors and every order's last seq."""
    problems: list[str] = []
    broken: int | None = None
    expected_seq = 1
    prev = GENESIS_HASH
    anchors = db.get_audit_anchors()
    wanted = {int(a["seq"]) for a in anchors}
    hashes: dict[int, str] = {}  # the rows' hashes at the anchors' seqs
    n = 0
    after = 0
    while True:
        rows = db.get_audit_rows(after=after, limit=_BATCH)
        if not rows:
            break
        for r in rows:
            seq = int(r["audit_seq"])
            after = seq
            n += 1
            if seq in wanted:
                hashes[seq] = str(r["hash"])
            if broken is not None:
                continue
            if seq != expected_seq:
                broken = expected_seq
                problems.append(
                    f"first broken link at seq {expected_seq} (expected seq {expected_seq}, "
                    f"found seq {seq}: {seq - expected_seq} event row(s) missing)"
                )
                continue
            if r["prev_hash"] != prev:
                broken = seq
                problems.append(
                    f"first broken link at seq {seq} (expected prev_hash {prev}, "
                    f"found {r['prev_hash']})"
                )
                continue
            want = audit_hash(r, prev)
            if r["hash"] != want:
                broken = seq
                problems.append(
                    f"first broken link at seq {seq} (expected hash {want}, found {r['hash']}; "
                    f"order {r['client_order_id']} event {r['seq']})"
                )
                continue
            prev = str(r["hash"])
            expected_seq = seq + 1
    last = after
    confirmed: int | None = None
    for a in anchors:
        seq, h = int(a["seq"]), str(a["hash"])
        found = hashes.get(seq)
        if found is None:
            problems.append(
                f"anchor at seq {seq} ({a['reason']}) names an event the table no longer has: "
                f"the chain ends at seq {last}; rows were deleted from the end "
                f"(expected hash {h}, found none)"
            )
            if broken is None or broken > last + 1:
                broken = last + 1
            continue
        if found != h:
            problems.append(
                f"anchor at seq {seq} does not match (expected hash {h}, found {found})"
            )
            if broken is None or seq < broken:
                broken = seq
            continue
        if broken is None or seq < broken:
            confirmed = seq
    last_seqs, counts = db.get_order_event_counts()
    for cid, last_seq in sorted(last_seqs.items()):
        rows_n, top = counts.get(cid, (0, 0))
        if rows_n != last_seq or top != last_seq:
            problems.append(
                f"order {cid}: last_seq is {last_seq} but it has {rows_n} event row(s) "
                f"ending at seq {top}: event rows were deleted"
            )
    return AuditReport(
        events=n,
        anchors=len(anchors),
        last_seq=last,
        last_confirmed_anchor=confirmed,
        first_broken_seq=broken,
        problems=tuple(problems),
    )
