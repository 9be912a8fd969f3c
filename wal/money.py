"""Money arithmetic in one fixed decimal context, whatever the caller's.

Python's ``decimal`` rounds every operation (``+``, ``-``, ``*``, ``/``, ``sum``, ``abs``,
unary minus, ``quantize``, ``normalize``, ...) to the *current* context: the calling thread's
(or asyncio task's) ``decimal.getcontext()``. That context belongs to the trading engine, not
to this library: an engine that prices with ``getcontext().prec = 6``, or lowers
``decimal.DefaultContext`` at startup (every new thread's context is a copy of it), or traps
``Inexact`` would otherwise make a stored balance, a fill's average price or a risk check
come out rounded, or raise, and the database keeps the wrong figure for good.

So every piece of the library that computes with money, quantities or prices runs in
``MONEY_CONTEXT``:

* ``MONEY_CONTEXT``: 80 significant digits (a ``NUMERIC(28, 10)`` value times another is at
  most 56 digits: exact; a quotient is rounded at the 80th digit, then quantized by the
  code that divides), ``ROUND_HALF_EVEN``, the default exponent limits, and the default
  traps (``InvalidOperation``, ``DivisionByZero``, ``Overflow``). Every field is given, none
  is taken from ``decimal.DefaultContext``: a ``Context(prec=80)`` would copy the rest from
  it, and so from an engine that changed it before importing ``wal``.
* ``exact``: a decorator that runs a function in a fresh copy of ``MONEY_CONTEXT``
  (``decimal.localcontext``) and restores the caller's on return. It takes a plain function
  or method and an ``async def`` (the context is set inside the coroutine: an asyncio task's
  decimal context is its own, so the suspension points between ``await`` s are safe); it
  refuses a generator function (its body would run in whatever context resumes it).
  It goes on the function whose body does the arithmetic (or on the entry point of a small
  class whose private helpers compute, like the read overlay's public methods); what such a
  function calls (a ``Broker``, a hook) also runs in the money context.
* ``in_money_context``: an executor's ``initializer`` (and a thread's first call) making the
  money context the thread's own: the threads the library owns (the sync thread, its
  executors) never run in a context inherited from ``decimal.DefaultContext``.

A ``Decimal``'s value does not depend on any context once made, so the results handed back
(a balance, an average price) are the same in the caller's context as they were in ours.
Comparisons (``==``, ``<``), ``Decimal(str)``, ``str(d)``, ``copy_abs`` and ``adjusted``
are exact in any context and need no decorator.

This is a foundation module: every layer may import it.
"""

from __future__ import annotations

import decimal
import functools
import inspect
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

__all__ = ["MONEY_CONTEXT", "exact", "in_money_context"]

MONEY_CONTEXT: Final = decimal.Context(
    prec=80,
    rounding=decimal.ROUND_HALF_EVEN,
    Emin=-999_999,
    Emax=999_999,
    capitals=1,
    clamp=0,
    flags=[],
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
"""The one context of the library's money arithmetic (used through copies: never changed)."""

_F = TypeVar("_F", bound=Callable[..., Any])


def exact(fn: _F) -> _F:
    """Run ``fn`` (a function, method or ``async def``) in a copy of ``MONEY_CONTEXT``."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"exact cannot wrap the generator function {fn.__qualname__}: its body runs in "
            "the context of whoever resumes it; decorate the functions it calls instead"
        )
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with decimal.localcontext(MONEY_CONTEXT):
                return await fn(*args, **kwargs)

        return cast(_F, run_async)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with decimal.localcontext(MONEY_CONTEXT):
            return fn(*args, **kwargs)

    return cast(_F, run)


def in_money_context() -> None:
    """Make a copy of ``MONEY_CONTEXT`` the current thread's decimal context (for a thread
    the library owns: ``ThreadPoolExecutor(initializer=in_money_context)``)."""
    decimal.setcontext(MONEY_CONTEXT.copy())
