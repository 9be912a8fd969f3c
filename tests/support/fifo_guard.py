"""A call that may block on a FIFO, run so that a block fails the test instead of hanging it.

``answers(fn, *fifos)`` runs ``fn()`` in a thread and waits up to ``GUARD_S`` (far above any
answer: reached only by a call that blocks); a call still blocked then is released (each FIFO
opened from the other side) and the test fails naming the FIFOs. Otherwise ``fn``'s value, or
what it raised.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

__all__ = ["GUARD_S", "answers", "release"]

T = TypeVar("T")
GUARD_S = 60.0  # far above any answer; reached only by a call that blocks


def release(*fifos: Path) -> None:
    """Open each FIFO from the other side, so a call blocked on it returns."""
    for f in fifos:
        for flags in (os.O_WRONLY, os.O_RDONLY):
            with contextlib.suppress(OSError):
                os.close(os.open(f, flags | os.O_NONBLOCK))


def answers(fn: Callable[[], T], *fifos: Path) -> T:
    """``fn()``, failing the test (not hanging it) when it blocks."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(GUARD_S)
    if t.is_alive():
        release(*fifos)
        t.join(GUARD_S)
        pytest.fail(f"blocked on {', '.join(map(str, fifos))}")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
