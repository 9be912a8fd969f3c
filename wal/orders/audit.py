"""The order audit trail, verified: a hash chain over every order event, with anchors, and
the orders and fills tables held to it.

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

**What the orders and fills are (chain format 2).** The ``orders`` and ``fills`` tables have
no such triggers (an order's row changes with each event; a correction replaces a fill's
row), so their contents are covered through the chain instead: the created event's
``content`` is the order's intent (symbol, side, quantity, order type, limit and stop price,
time in force, account) and each fill event's the fill (execution key, symbol, side,
quantity, price, trade id, P&L) and the order's filled quantity and average price after it,
canonical JSON computed by the journal with the event and hashed with it (a state change
carries none: its row is all of it). ``verify_audit`` then checks every ``orders`` and
``fills`` row against the hashed events (:mod:`wal.orders.audit_contents`), one problem line
each, naming the order, the fill's execution key, the event's seq and audit seq, and the
value the table holds against the value the event hashed:

* an order's intent changed, or its state, times, broker order id, reason, filled quantity
  or average price not what its events say;
* an order row deleted (its events remain), or an order row no event explains;
* a fill's price, quantity or any other field changed, a fill row deleted (its hashed fill
  event remains), or a fill row no hashed fill event explains (added).

Events journaled before format 2 have no content (format 1) and hash exactly as they did, so
an existing chain verifies unchanged; the report counts them (``format1_events``, their
first and last audit seq in ``format1_seqs``, and the message says so): their orders'
intents and totals and their fills' values are not covered, only what their events hold.
Removing an event's content to pass it off as format 1 changes its hash.

Anchors in the same database catch a cut tail, not a consistent rewrite of both tables: each
anchor is also appended to the **digest file** beside the log (``<log dir>/order-audit.digest``,
one ``"{seq} {hash}\n"`` line per anchor; 0600, opened ``O_APPEND | O_NOFOLLOW``, the file
fsynced after each line and the directory when it is created). ``verify_audit(db,
digest=path)`` checks every digest line against the row at its seq, and every database anchor
from the digest's first line on against the digest: a rewrite of both tables is detected. ::

    report = verify_audit(db, digest=digest_path(wal_dir))   # db: a DatabaseManager
    report.ok, report.events, report.first_broken_seq, report.message
    report.orders_checked, report.fills_checked, report.format1_events, report.format1_seqs
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wal.db import DatabaseManager
from wal.db.orders import GENESIS_HASH, audit_hash
from wal.errors import WALUnsafeFileError
from wal.log.fileops import OSFileOps, read_regular
from wal.orders.audit_contents import FILL_KINDS, check_contents

__all__ = [
    "DIGEST_NAME",
    "AuditReport",
    "append_digest",
    "digest_path",
    "read_digest",
    "verify_audit",
]

_BATCH = 5_000
DIGEST_NAME = "order-audit.digest"
_LINE = re.compile(r"([0-9]+) ([0-9a-f]{64})")  # fullmatch: "$" passes a trailing "\n"


def digest_path(wal_dir: Path | str) -> Path:
    """The digest file of the log in ``wal_dir``."""
    return Path(wal_dir) / DIGEST_NAME


def append_digest(path: Path, seq: int, hash_: str) -> None:
    """Append one anchor to the digest file, durably (module docstring)."""
    if not _LINE.fullmatch(f"{seq} {hash_}"):
        raise ValueError(f"not an audit anchor: seq {seq!r}, hash {hash_!r}")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_EXCL, 0o600)
        created = True
    except FileExistsError:
        # O_NOFOLLOW: a symlink planted here is refused; a FIFO or a device too, never
        # waited on (OSFileOps.open: O_NONBLOCK, then a regular file or nothing)
        fd = OSFileOps().open(str(path), os.O_WRONLY | os.O_APPEND, 0o600)
        created = False
    try:
        if created:
            os.fchmod(fd, 0o600)  # owner only, whatever the umask
        data = f"{seq} {hash_}\n".encode()
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)  # the anchor is on disk before the call returns
    finally:
        os.close(fd)
    if created:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # the new file's name survives a power loss
        finally:
            os.close(dfd)


def read_digest(path: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """The digest's anchors in file order, and its problems. A last line without its newline
    (a crash inside the append) is left out, not a problem."""
    # never through a symlink, never blocking on a FIFO or a device (WALUnsafeFileError)
    text = read_regular(path, limit=None).decode("ascii", errors="replace")
    lines = text.split("\n")[:-1]  # the part after the last newline: torn, or empty
    out: list[tuple[int, str]] = []
    problems: list[str] = []
    for n, line in enumerate(lines, 1):
        m = _LINE.fullmatch(line)
        if m is None:
            problems.append(f"digest file {path}: line {n} is not 'SEQ HASH': {line[:80]!r}")
            continue
        out.append((int(m.group(1)), m.group(2)))
    return out, problems


@dataclass(frozen=True)
class AuditReport:
    """What ``verify_audit`` found. ``ok`` is True only for an intact chain and anchors."""

    events: int  # event rows checked
    anchors: int  # anchors checked
    last_seq: int  # the chain's last audit_seq (0: empty)
    last_confirmed_anchor: int | None  # the last anchor the rows confirm
    first_broken_seq: int | None = None  # the first audit_seq whose link is broken
    problems: tuple[str, ...] = field(default_factory=tuple)
    digest_entries: int | None = None  # anchors in the digest file (None: not checked)
    orders_checked: int = 0  # orders rows checked against their created event's content
    fills_checked: int = 0  # fills rows checked against their fill event's content
    format1_events: int = 0  # created and fill events without content (chain format 1)
    format1_seqs: tuple[int, int] | None = None  # the first and last audit_seq of those

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
            digest = (
                f", digest file agrees ({self.digest_entries} anchors)"
                if self.digest_entries is not None
                else ""
            )
            contents = (
                f"; orders and fills agree with it ({self.orders_checked} orders, "
                f"{self.fills_checked} fills checked)"
            )
            old = ""
            if self.format1_seqs is not None:
                first, last = self.format1_seqs
                old = (
                    f"; {self.format1_events} event(s) of chain format 1 (audit seq {first} "
                    f"to {last}): their orders' and fills' contents are not covered"
                )
            return f"audit chain intact: {self.events} events{anchor}{digest}{contents}{old}"
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
            "digest_entries": self.digest_entries,
            "orders_checked": self.orders_checked,
            "fills_checked": self.fills_checked,
            "format1_events": self.format1_events,
            "format1_seqs": None if self.format1_seqs is None else list(self.format1_seqs),
        }


def verify_audit(db: DatabaseManager, *, digest: Path | None = None) -> AuditReport:
    """Walk the chain in ``audit_seq`` order, then the anchors, the digest file (if
    ``digest`` is given), and the orders and fills tables against the hashed events
    (``check_contents``: every order's last seq, intent, state and totals, every fill)."""
    problems: list[str] = []
    format1: list[int] = []  # [count, first, last] audit_seq of the format-1 events
    broken: int | None = None
    expected_seq = 1
    prev = GENESIS_HASH
    anchors = db.get_audit_anchors()
    entries: list[tuple[int, str]] | None = None
    if digest is not None:
        if os.path.lexists(digest):
            try:
                entries, bad = read_digest(digest)
            except WALUnsafeFileError as exc:  # a FIFO, a device, a symlink: never read
                entries, bad = [], [f"digest file: {exc}"]
            problems += bad
        elif anchors:
            entries = []
            problems.append(
                f"digest file {digest} is missing but the database holds {len(anchors)} "
                "anchor(s): it was deleted, or this is not this database's log directory"
            )
    wanted = {int(a["seq"]) for a in anchors} | {s for s, _ in entries or []}
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
            if r.get("content") is None and (r["kind"] == "created" or r["kind"] in FILL_KINDS):
                format1[:] = [format1[0] + 1, format1[1], seq] if format1 else [1, seq, seq]
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
    if entries:
        problems += _check_digest(entries, anchors, hashes, last)
    contents = check_contents(db)  # the rows beside the events, against what they hash
    problems += contents.problems
    return AuditReport(
        events=n,
        anchors=len(anchors),
        last_seq=last,
        last_confirmed_anchor=confirmed,
        first_broken_seq=broken,
        problems=tuple(problems),
        digest_entries=None if entries is None else len(entries),
        orders_checked=contents.orders,
        fills_checked=contents.fills,
        format1_events=format1[0] if format1 else 0,
        format1_seqs=(format1[1], format1[2]) if format1 else None,
    )


def _check_digest(
    entries: list[tuple[int, str]],
    anchors: list[dict[str, Any]],
    hashes: dict[int, str],
    last: int,
) -> list[str]:
    """The digest's anchors against the rows, and the database's anchors against it."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    for seq, h in entries:
        if seen.setdefault(seq, h) != h:
            problems.append(f"digest file: two hashes for seq {seq} ({seen[seq]} and {h})")
            continue
        found = hashes.get(seq)
        if found is None:
            problems.append(
                f"digest anchor at seq {seq} names an event the table does not have (the chain "
                f"ends at seq {last}): rows were cut off, or the log is not applied yet (stop "
                "the engine and verify again)"
            )
        elif found != h:
            problems.append(
                f"digest anchor at seq {seq} does not match (expected hash {h}, found "
                f"{found}): the chain was rewritten"
            )
    first = min(seen)
    for a in anchors:
        seq, h = int(a["seq"]), str(a["hash"])
        if seq >= first and seen.get(seq) != h:
            problems.append(
                f"database anchor at seq {seq} (hash {h}) is not in the digest file"
                + (f" (the digest has {seen[seq]})" if seq in seen else "")
            )
    return problems
