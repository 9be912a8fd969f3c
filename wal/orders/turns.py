"""``KeyedWriters``: writes that must follow each other per key, gathered into groups.

A fill's journal entry holds its symbol's position itself, so the fills of one symbol must be
written one write after another, each computed from the position the last write made durable.
Written one fill per write, a busy symbol's fills queue an fsync each. Here each key (a
symbol) has one writer, a task that lives while the key has work: the items queued while a
write is in flight are handed to the next call of ``write_group`` together, in the order
they came, and ``write_group`` settles each item's future (durable, or the error). ::

    writers = KeyedWriters(write_group)          # write_group(key, items) -> None
    await writers.submit(key, item)               # returns once the item's write settled it

The owner (``wal.orders.fills``) computes the group's entries in turn and writes them as one
unit, all or none. A caller that gives up waiting does not withdraw its item (shielded): it
was a fact at the broker. Used from a new event loop, the old loop's queues are dropped
(their writers died with it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["KeyedWriters", "Settled"]


class Settled(Protocol):
    """An item with the future its write settles."""

    done: asyncio.Future[None]


T = TypeVar("T", bound=Settled)


class KeyedWriters(Generic[T]):
    """One writer per key; the items queued behind a write go together in the next one."""

    def __init__(self, write_group: Callable[[str, list[T]], Awaitable[None]]) -> None:
        self._write_group = write_group
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: dict[str, list[T]] = {}
        self._writers: dict[str, asyncio.Future[None]] = {}

    def queued(self) -> bool:
        """True while an item waits for its key's next write."""
        return any(self._queue.values())

    async def submit(self, key: str, item: T) -> None:
        """Queue ``item`` (its ``done`` is set here) and wait until its write settled it."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # used from a new loop: the old loop's writers died
            self._loop, self._queue, self._writers = loop, {}, {}
        item.done = loop.create_future()
        self._queue.setdefault(key, []).append(item)
        if key not in self._writers:
            self._writers[key] = asyncio.ensure_future(self._writer(key))
        # shielded: a caller that gives up does not withdraw its item
        await asyncio.shield(item.done)

    async def _writer(self, key: str) -> None:
        """Write the key's queued items, a group per write, until none is left."""
        me = asyncio.current_task()
        try:
            while group := self._queue.pop(key, None):
                try:
                    await self._write_group(key, group)
                except BaseException as exc:  # the write failed: each of its items raises it
                    for item in group:
                        if not item.done.done():
                            item.done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise  # cancelled: the loop is closing
        finally:
            if self._writers.get(key) is me:
                del self._writers[key]
