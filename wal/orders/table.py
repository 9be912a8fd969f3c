"""``OrderTable``: this run's orders by client id, with the open ones indexed.

The risk check of every submit (``OrderManager._check_reserved``) and every fill poll look at
the open orders only. They scanned every order of the run for them, final ones included, so
each submit got slower with each order placed since the engine started (a day of trading:
thousands). ``OrderTable`` is a dict whose item assignment also keeps ``open`` (the orders
not in a final state, in the order they were first seen open): the one way the manager
changes an order is ``table[cid] = order``.
"""

from __future__ import annotations

from typing import Any, NoReturn

from wal.orders.models import Order
from wal.orders.states import is_final

__all__ = ["OrderTable"]


class OrderTable(dict[str, Order]):
    """Orders by client id; ``open``: those not final (kept by item assignment)."""

    def __init__(self) -> None:
        super().__init__()
        self.open: dict[str, Order] = {}

    def __setitem__(self, client_order_id: str, order: Order) -> None:
        super().__setitem__(client_order_id, order)
        if is_final(order.state):
            self.open.pop(client_order_id, None)
        else:
            self.open[client_order_id] = order

    def __delitem__(self, client_order_id: str) -> None:
        super().__delitem__(client_order_id)
        self.open.pop(client_order_id, None)

    def _bypass(self, *_: Any, **__: Any) -> NoReturn:
        raise TypeError("an OrderTable changes by item assignment only (it keeps `open`)")

    update = setdefault = pop = popitem = clear = __ior__ = _bypass
