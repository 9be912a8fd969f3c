"""Appending entries and status records from threads: framing, LSNs, duplicates refused.

``LogWriter`` is the part of ``WALStorage`` (which derives from it) that callers write through:
``append`` and ``append_many`` serialize entries outside the lock, refuse an entry already in
the log (the id Bloom filter, then the index), take LSNs under the lock and hand the framed
records to group commit (:mod:`wal.log.groupcommit`); each returns once its records are
durable. ``update_status(es)`` appends status records for entries of this log (checked under
the lock compaction holds, so an update and the compaction that would drop its entry are
exclusive), durable or, with ``durable=False``, covered by the next flush's fsync.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import orjson

from wal.entry import WALEntry, WALEntryStatus, utc_now
from wal.errors import (
    WALEntryNotFoundError,
    WALEntryTooLargeError,
    WALSerializationError,
)
from wal.log.groupcommit import GroupCommit
from wal.log.index import CODE_NONE, STATUS_CODE, IndexRecord, key_hash, uuid_hash
from wal.log.record import encode_line

__all__ = ["LogWriter"]


class LogWriter(GroupCommit):
    """Appends entries and status records (a base of ``WALStorage``; see the module docstring)."""

    def append(self, entry: WALEntry) -> WALEntry:
        """Append one entry; return it with its LSN once it is durable (see ``fsync``)."""
        if self._forked:  # a child of a fork: the parent's mutex may be held forever here
            self._check_writable()
        body = self._entry_body(entry)  # serialize outside the lock
        if len(body) > self.options.max_entry_bytes:
            raise WALEntryTooLargeError(len(body), self.options.max_entry_bytes)
        eid = entry.entry_id
        h = uuid_hash(eid)
        kh = key_hash(entry.idempotency_key) if entry.has_explicit_key else None
        code = STATUS_CODE[entry.status]
        with self._mutex:
            if self._failed is not None or self._closed or self.readonly:
                self._check_writable()
            if self._bloom_has(h) and self._has_id(eid):
                raise ValueError(f"entry {eid} is already in the log")
            lsn = self._next_lsn
            self._next_lsn = lsn + 1
            rec = (
                lsn,
                encode_line(b'{"t":"entry","lsn":%d,%s' % (lsn, body[1:])),
                code,
                h,
                kh,
                0,
                0,
            )
            if not self._flushing and not self._group.records:
                # nobody is flushing or waiting: flush this record now, without a group
                self._flushing = True
                self._appenders += 1
                group = None
            else:
                group, lead = self._enqueue([rec])
        try:
            if group is None:
                self._flush([rec])
            else:
                self._commit(group, lead)
        finally:
            self._append_done()
        return entry.with_lsn(lsn)

    def append_many(self, entries: Iterable[WALEntry]) -> list[WALEntry]:
        """Append a batch with one write and one fsync; all or none are acknowledged."""
        entries = list(entries)
        if not entries:
            return []
        if self._forked:
            self._check_writable()
        bodies = [self._entry_body(e) for e in entries]  # serialize outside the lock
        for b in bodies:
            if len(b) > self.options.max_entry_bytes:
                raise WALEntryTooLargeError(len(b), self.options.max_entry_bytes)
        hashes = [uuid_hash(e.entry_id) for e in entries]
        key_hashes = [key_hash(e.idempotency_key) if e.has_explicit_key else None for e in entries]
        if len(set(hashes)) != len(entries) and len({e.entry_id for e in entries}) != len(entries):
            raise ValueError("the batch holds the same entry twice: already in the log")
        with self._cond:
            self._check_writable()
            has = self._bloom_has
            for e, h in zip(entries, hashes, strict=True):
                if has(h) and self._has_id(e.entry_id):
                    raise ValueError(f"entry {e.entry_id} is already in the log")
            first = self._next_lsn
            self._next_lsn = first + len(entries)
            records = [
                (
                    lsn,
                    encode_line(b'{"t":"entry","lsn":%d,%s' % (lsn, body[1:])),
                    STATUS_CODE[e.status],
                    h,
                    kh,
                    0,
                    0,
                )
                for lsn, e, body, h, kh in zip(
                    range(first, first + len(entries)),
                    entries,
                    bodies,
                    hashes,
                    key_hashes,
                    strict=True,
                )
            ]
            group, lead = self._enqueue(records)
        try:
            self._commit(group, lead)
        finally:
            self._append_done()
        return [e.with_lsn(lsn) for lsn, e in enumerate(entries, first)]

    @staticmethod
    def _entry_body(e: WALEntry) -> bytes:
        if e.lsn is not None:
            raise ValueError(f"entry {e.entry_id} already has LSN {e.lsn}: it is in a log")
        a, k = e.encoded()
        # the same bytes as orjson.dumps(e.to_dict()) without "lsn": orjson writes the UUID,
        # the datetimes (isoformat) and the status enum natively, which is 4x faster
        try:
            return orjson.dumps(
                {
                    "entry_id": e.entry_id,
                    "operation": e.operation,
                    "args": a,
                    "kwargs": k,
                    "idempotency_key": e.idempotency_key,
                    "checksum": e.checksum,
                    "created_at": e.created_at,
                    "synced_at": e.synced_at,
                    "status": e.status,
                    "attempts": e.attempts,
                    "last_error": e.last_error,
                }
            )
        except orjson.JSONEncodeError as exc:  # an entry built by hand, not by create()
            raise WALSerializationError(f"entry {e.entry_id}", str(exc)) from None

    def update_status(
        self,
        entry_id: uuid.UUID | str | WALEntry,
        status: WALEntryStatus,
        error: str | None = None,
        *,
        attempts: int | None = None,
    ) -> None:
        """Append a durable status record for an entry."""
        self.update_statuses([(entry_id, status, error, attempts)])

    def update_statuses(
        self,
        changes: Iterable[
            tuple[uuid.UUID | str | WALEntry, WALEntryStatus, str | None, int | None]
        ],
        *,
        durable: bool = True,
    ) -> None:
        """Append several status records with one fsync: ``(entry, status, error, attempts)``.

        ``durable=False`` writes them without waiting for an fsync of their own: the next
        flush's fsync (any append's, ``sync()``, a rotation or ``close()``) covers them, and a
        crash before it may lose them. Only for marks whose loss is harmless: a COMPLETED
        mark behind the database's applied-ledger (the replay is skipped). Appenders then
        never wait for a drain's fsync.
        """
        changes = list(changes)
        if not changes:
            return
        if self._forked:
            self._check_writable()
        at = utc_now().isoformat()
        targets: list[tuple[int, str] | None] = []
        for ref, _, _, _ in changes:
            if isinstance(ref, WALEntry):
                if ref.lsn is None:
                    raise WALEntryNotFoundError(ref.entry_id)
                targets.append((ref.lsn, str(ref.entry_id)))
            else:
                targets.append(None)  # an id: looked up in the index below
        if any(t is None for t in targets):
            with self._cond:
                self._check_open()
                targets = [
                    t if t is not None else self._resolve(c[0])
                    for t, c in zip(targets, changes, strict=True)
                ]
        bodies = []  # serialized outside the lock; the LSN is spliced in below
        for k, (t, (_, status, error, attempts)) in enumerate(zip(targets, changes, strict=True)):
            assert t is not None
            if not durable and k % 16 == 0:
                self.yield_to_appenders()  # non-durable marks are background work
            status = WALEntryStatus(status)
            if attempts is not None and (type(attempts) is not int or attempts < 0):
                raise WALSerializationError("attempts", f"must be an int >= 0, got {attempts!r}")
            if error is not None and not isinstance(error, str):
                raise WALSerializationError("error", f"must be a str or None, got {error!r}")
            try:
                body = orjson.dumps(
                    {
                        "of": t[0],
                        "entry_id": t[1],
                        "status": status.value,
                        "at": at,
                        "attempts": attempts,
                        "error": error,
                    }
                )
            except orjson.JSONEncodeError as exc:  # a lone surrogate in the error text
                raise WALSerializationError("error", str(exc)) from None
            bodies.append((t[0], STATUS_CODE[status], body))
        with self._cond:
            self._check_writable()
            for t in targets:  # checked under the lock that compaction holds: exclusive
                assert t is not None
                self._check_target(*t)
            records: list[IndexRecord] = []
            for target, code, body in bodies:
                lsn = self._next_lsn
                self._next_lsn += 1
                payload = b'{"t":"status","lsn":%d,%s' % (lsn, body[1:])
                records.append((lsn, encode_line(payload), CODE_NONE, 0, None, target, code))
            group, lead = self._enqueue(records, durable)
        try:
            self._commit(group, lead)
        finally:
            if durable:
                self._append_done()

    def _check_target(self, lsn: int, sid: str) -> None:
        """Refuse a status record for anything but the live entry ``sid`` at ``lsn`` (lock
        held): an entry object from another log, a stale one, or one compaction dropped."""
        i = lsn - self._base
        if (
            type(lsn) is not int
            or i < 0
            or i >= self._n
            or self._status[i] == CODE_NONE
            or self._idh[i] != uuid_hash(uuid.UUID(sid))
        ):
            raise WALEntryNotFoundError(f"{sid} at LSN {lsn}")
