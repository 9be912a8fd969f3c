"""Appending from asyncio: coroutines stage their records, one flush thread commits them.

``AsyncAppender`` is the part of ``WALStorage`` (which derives from it) behind
``append_async`` and ``append_many_async``. A coroutine serializes its entries on the loop and
stages them (a list append under a lock held for nothing else); one flush thread takes
everything staged since its last flush, gives it LSNs, joins the open group of
:mod:`wal.log.groupcommit` and commits it; the group's futures are resolved on their loops
(:mod:`wal.log.waiters`) after the ``fdatasync``, or with the group's error. The loop never
waits for the disk. ``close`` stops staging and lets the flush thread commit what was staged.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterable

from wal.entry import WALEntry
from wal.errors import WALClosedError, WALEntryTooLargeError, WALError
from wal.log.index import STATUS_CODE, IndexRecord, key_hash, uuid_hash
from wal.log.record import encode_line
from wal.log.waiters import AsyncWaiters
from wal.log.writing import LogWriter

__all__ = ["AsyncAppender", "Staged"]

# What a coroutine hands the flush thread: its loop and future, its entries, their bodies
# (serialized, no LSN yet), id hashes, explicit-key hashes and status codes.
Staged = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[int]",
    list[WALEntry],
    list[bytes],
    list[int],
    list[int | None],
    list[int],
]


class AsyncAppender(LogWriter):
    """``append_async`` and its flush thread (a base of ``WALStorage``; see the docstring)."""

    # set up by WALStorage.__init__
    _stage_cond: threading.Condition  # held only to swap the list
    _staged: list[Staged]  # what coroutines staged since the last flush
    _stage_closed: bool  # closing: later append_async calls are refused
    _flusher: threading.Thread | None  # the flush thread, started by the first append_async
    _flusher_idle: bool  # the flush thread waits on _stage_cond for work

    async def append_async(self, entry: WALEntry) -> WALEntry:
        """``append`` for asyncio: return the entry with its LSN once it is durable.

        The entry is serialized on the loop and staged; one flush thread commits whatever
        coroutines staged meanwhile as one group (one ``write``, one ``fdatasync``) and
        resolves their futures on the loop: the loop never waits for the disk, and the next
        flush starts as soon as the previous one ends. Thread and coroutine appenders share
        one LSN order and the same group commit.

        Cancellation does not cancel the write: a cancelled ``append_async`` may still become
        durable (and be replayed). Give the entry an ``idempotency_key`` and look it up
        (``find_by_idempotency_key``) to learn whether it is in the log.
        """
        return (await self.append_many_async([entry]))[0]

    async def append_many_async(self, entries: Iterable[WALEntry]) -> list[WALEntry]:
        """``append_many`` for asyncio (see ``append_async``): all or none acknowledged."""
        entries = list(entries)
        if not entries:
            return []
        if self._failed is not None or self._closed or self.readonly or self._forked:
            self._check_writable()  # fail fast; the flush thread checks again under the lock
        bodies = [self._entry_body(e) for e in entries]  # serialize on the loop, no lock
        for b in bodies:
            if len(b) > self.options.max_entry_bytes:  # refused before anything is staged
                raise WALEntryTooLargeError(len(b), self.options.max_entry_bytes)
        hashes = [uuid_hash(e.entry_id) for e in entries]
        if len({e.entry_id for e in entries}) != len(entries):  # as append_many: never staged
            raise ValueError("the batch holds the same entry twice: already in the log")
        key_hashes = [key_hash(e.idempotency_key) if e.has_explicit_key else None for e in entries]
        codes = [STATUS_CODE[e.status] for e in entries]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        with self._stage_cond:  # held for a list append: never across I/O
            if self._stage_closed:
                raise WALClosedError("the log is closed")
            self._staged.append((loop, fut, entries, bodies, hashes, key_hashes, codes))
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_staged_loop, name="wal-async-flush", daemon=True
                )
                self._flusher.start()
            elif self._flusher_idle:
                self._flusher_idle = False
                self._stage_cond.notify()
        first = await fut  # resolved only after the fdatasync of these records returned
        return [e.with_lsn(lsn) for lsn, e in enumerate(entries, first)]

    def _flush_staged_loop(self) -> None:
        """The flush thread: commit everything staged since the last flush, as one group."""
        while True:
            with self._stage_cond:
                while not self._staged and not self._stage_closed:
                    self._flusher_idle = True
                    self._stage_cond.wait()
                self._flusher_idle = False
                items, self._staged = self._staged, []
            if not items:
                return  # closing, and nothing is left staged
            self._commit_staged(items)

    def _commit_staged(self, items: list[Staged]) -> None:
        """Give staged appends their LSNs, join the open group, commit it (flush thread)."""
        waiters = AsyncWaiters()
        refused = AsyncWaiters()  # duplicates: refused alone, the rest of the group goes on
        records: list[IndexRecord] = []
        with self._mutex:
            error: BaseException | None = None
            try:
                self._check_writable()
            except WALError as exc:
                error = exc
            if error is not None:
                for loop, fut, *_ in items:
                    refused.add(loop, fut, None)
                refused.settle(error)
                return
            ids: set[uuid.UUID] = set()
            for loop, fut, entries, bodies, hashes, key_hashes, codes in items:
                dup = next(
                    (
                        e
                        for e, h in zip(entries, hashes, strict=True)
                        if e.entry_id in ids or (self._bloom_has(h) and self._has_id(e.entry_id))
                    ),
                    None,
                )
                if dup is not None:
                    bad = AsyncWaiters()
                    bad.add(loop, fut, None)
                    bad.settle(ValueError(f"entry {dup.entry_id} is already in the log"))
                    continue
                ids.update(e.entry_id for e in entries)
                first = self._next_lsn
                self._next_lsn = first + len(entries)
                for lsn, body, code, h, kh in zip(
                    range(first, first + len(entries)),
                    bodies,
                    codes,
                    hashes,
                    key_hashes,
                    strict=True,
                ):
                    line = encode_line(b'{"t":"entry","lsn":%d,%s' % (lsn, body[1:]))
                    records.append((lsn, line, code, h, kh, 0, 0))
                waiters.add(loop, fut, first)
            if not records:
                return
            group, lead = self._enqueue(records)
            # settled by whoever finishes the group: after its fdatasync, or with its error
            assert group.waiters is None  # this thread joins a group once, then waits for it
            group.waiters = waiters
        try:
            # the group's error, if any, reached every waiter through its future
            with contextlib.suppress(BaseException):
                self._commit(group, lead)
        finally:
            self._append_done()

    def _close_staging(self) -> None:
        """Refuse later ``append_async`` calls; the flush thread commits what was staged
        before, then ends (``close``)."""
        with self._stage_cond:
            self._stage_closed = True  # later append_async calls are refused
            flusher, self._flusher = self._flusher, None
            self._stage_cond.notify()
        if flusher is not None:
            flusher.join()  # it commits what coroutines staged before the close, then ends
