"""wal.orders.table: the order table keeps its open orders exactly (the risk check and the
fill poll read only them), whatever the sequence of states, a final order reopened by a
correction included."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wal.orders.models import Order, OrderIntent
from wal.orders.states import OrderState, is_final
from wal.orders.table import OrderTable

INTENTS = [OrderIntent(symbol="AAPL", side="buy", quantity=Decimal("1")) for _ in range(4)]


@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(list(OrderState))), max_size=40))
def test_open_is_every_order_not_final(changes: list[tuple[int, OrderState]]) -> None:
    table = OrderTable()
    for i, state in changes:
        table[INTENTS[i].client_order_id] = Order(INTENTS[i], state)
        assert table.open == {c: o for c, o in table.items() if not is_final(o.state)}
    for cid in list(table):
        del table[cid]
        assert cid not in table.open
    assert table.open == {}


def test_a_corrected_final_order_is_open_again() -> None:
    table = OrderTable()
    cid = INTENTS[0].client_order_id
    table[cid] = Order(INTENTS[0], OrderState.SUBMITTING)
    table[cid] = replace(table[cid], state=OrderState.CANCELLED)
    assert table.open == {}
    table[cid] = replace(table[cid], state=OrderState.PARTIALLY_FILLED)
    assert list(table.open) == [cid]


@pytest.mark.parametrize("method", ["update", "setdefault", "pop", "popitem", "clear"])
def test_changes_that_would_bypass_the_index_are_refused(method: str) -> None:
    table = OrderTable()
    with pytest.raises(TypeError, match="item assignment"):
        getattr(table, method)()
