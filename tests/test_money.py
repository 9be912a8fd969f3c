"""``wal.money``: the fixed context of money arithmetic and the ``exact`` decorator.

The caller's decimal context (a low precision, another rounding, traps) never reaches a
function under ``exact``; the caller's own context is back when it returns, raises, or (an
``async def``) is suspended.
"""

from __future__ import annotations

import asyncio
import decimal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from wal.money import MONEY_CONTEXT, exact, in_money_context


@exact
def third(x: Decimal) -> Decimal:
    return (x / 3).quantize(Decimal("1E-10"))


@exact
def total(*xs: Decimal) -> Decimal:
    return sum(xs, Decimal(0))


@exact
def fails() -> None:
    raise ValueError("inside")


@exact
async def total_async(*xs: Decimal) -> Decimal:
    await asyncio.sleep(0)  # suspended once: another task runs in its own context meanwhile
    return sum(xs, Decimal(0))


def hostile() -> decimal.Context:
    """A caller's context as an engine may set it: 6 digits, rounding down, traps on."""
    ctx = decimal.Context(prec=6, rounding=decimal.ROUND_DOWN)
    ctx.traps[decimal.Inexact] = True
    ctx.traps[decimal.Rounded] = True
    ctx.traps[decimal.FloatOperation] = True
    return ctx


def test_the_context_is_fixed_field_by_field() -> None:
    c = MONEY_CONTEXT
    assert (c.prec, c.rounding, c.Emin, c.Emax, c.clamp) == (
        80,
        decimal.ROUND_HALF_EVEN,
        -999_999,
        999_999,
        0,
    )
    assert {s for s, on in c.traps.items() if on} == {
        decimal.InvalidOperation,
        decimal.DivisionByZero,
        decimal.Overflow,
    }


def test_a_hostile_callers_context_changes_nothing_and_is_restored() -> None:
    with decimal.localcontext(hostile()) as ctx:
        # the caller's own arithmetic would round (and here raise): ours does not
        with pytest.raises(decimal.Inexact):
            _ = Decimal("1000000.01") + Decimal("0.07")
        assert total(Decimal("1000000.01"), Decimal("0.07"), Decimal("0.14")) == Decimal(
            "1000000.22"
        )
        assert third(Decimal("100.05")) == Decimal("33.3500000000")
        assert third(Decimal("1")) == Decimal("0.3333333333")
        with pytest.raises(ValueError, match="inside"):
            fails()
        assert decimal.getcontext() is ctx  # restored, after a return and after a raise
        assert ctx.prec == 6 and ctx.traps[decimal.Inexact]


def test_an_async_function_keeps_the_money_context_across_awaits() -> None:
    async def caller(prec: int) -> tuple[Decimal, int]:
        decimal.setcontext(decimal.Context(prec=prec))  # this task's own context object
        got = await total_async(Decimal("1000000.01"), Decimal("0.07"))
        return got, decimal.getcontext().prec

    async def both() -> list[tuple[Decimal, int]]:
        return list(await asyncio.gather(caller(6), caller(3)))

    assert asyncio.run(both()) == [(Decimal("1000000.08"), 6), (Decimal("1000000.08"), 3)]


def test_a_generator_function_is_refused() -> None:
    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        exact(gen)


def test_a_thread_made_from_a_lowered_default_context_gets_the_money_context() -> None:
    decimal.getcontext()  # this thread's context exists before the template changes
    saved = decimal.DefaultContext.prec
    decimal.DefaultContext.prec = 6
    try:
        with ThreadPoolExecutor(1, initializer=in_money_context) as pool:
            got = pool.submit(lambda: Decimal("1000000.01") + Decimal("0.07")).result()
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(decimal.getcontext().prec))
        t.start()
        t.join()
    finally:
        decimal.DefaultContext.prec = saved
    assert got == Decimal("1000000.08")
    assert seen == [6]  # what a thread without it would have computed with
