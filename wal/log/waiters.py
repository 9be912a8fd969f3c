"""Coroutines waiting for a group commit: how a flush thread wakes them on their event loop.

An ``append_async`` coroutine awaits its own ``asyncio.Future`` (made on its loop). The flush
that makes its records durable runs in another thread, which must not touch a future
directly: ``AsyncWaiters`` collects a group's futures by loop, and ``settle`` hands each loop
one callback (``call_soon_threadsafe``: one wake-up of the loop per group, not per waiter)
that resolves them all, with their value or with the group's error.

A future that is already done when the callback runs belongs to a cancelled coroutine: it
is skipped. The write it stood for went on regardless (a cancelled append may be durable).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["AsyncWaiters"]

Waiter = tuple["asyncio.Future[Any]", Any]


def _resolve(waiters: list[Waiter], error: BaseException | None) -> None:
    """On the loop: give each waiting future its value, or the error (skip cancelled ones)."""
    for fut, value in waiters:
        if fut.done():
            continue  # its coroutine was cancelled; the write was not
        if error is None:
            fut.set_result(value)
        else:
            fut.set_exception(error)


class AsyncWaiters:
    """The futures of one group, by event loop, each with the value it resolves to."""

    __slots__ = ("by_loop",)

    def __init__(self) -> None:
        self.by_loop: dict[asyncio.AbstractEventLoop, list[Waiter]] = {}

    def add(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], value: Any) -> None:
        got = self.by_loop.get(loop)
        if got is None:
            self.by_loop[loop] = [(fut, value)]
        else:
            got.append((fut, value))

    def settle(self, error: BaseException | None) -> None:
        """From any thread: resolve every future on its own loop, once."""
        by_loop, self.by_loop = self.by_loop, {}
        for loop, waiters in by_loop.items():
            # a loop already closed has nobody left to wake (its coroutines are gone)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, waiters, error)
