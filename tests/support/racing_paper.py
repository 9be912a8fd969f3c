"""A paper broker that moves the market when a request arrives, for flatten's races.

``StopTriggersAsTheCloseArrives``: the market falls through a stop at 95 the moment a market
sell arrives. ``StopFillsBeforeItsCancel``: it falls as a cancel arrives, before the cancel is
processed (the stop fills; the cancel is refused). Both in-process (the async ``Broker``
calls) and behind the HTTP app (its sync ``submit``/``cancel``); ``ServedPaper`` serves one
from a thread (``atb paper-broker``'s app, uvicorn) for the CLI.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import uvicorn

from cli._common import listen_socket
from wal.orders import BrokerOrder, OrderIntent, OrderManager, OrderState, PaperBroker
from wal.orders.server import create_app

BELOW_STOP = Decimal("94")


class StopTriggersAsTheCloseArrives(PaperBroker):
    """The market falls through the stop (95) at the moment a market sell arrives."""

    def _fall(self, intent: OrderIntent) -> None:
        if intent.order_type == "market" and intent.side == "sell":
            self.set_price(intent.symbol, BELOW_STOP)

    async def submit_order(self, intent: OrderIntent) -> BrokerOrder:
        self._fall(intent)
        return await super().submit_order(intent)

    def submit(self, intent: OrderIntent) -> BrokerOrder:  # the HTTP server's call
        self._fall(intent)
        return super().submit(intent)


class StopFillsBeforeItsCancel(PaperBroker):
    """The market falls through the stop while its cancel is on its way: the stop fills,
    and the cancel arrives for a filled order (refused)."""

    def _fall(self) -> None:
        self.set_price("AAPL", BELOW_STOP)

    async def cancel_order(self, broker_order_id: str) -> None:
        self._fall()
        await super().cancel_order(broker_order_id)

    def cancel(self, broker_order_id: str) -> None:  # the HTTP server's call
        self._fall()
        super().cancel(broker_order_id)


def protective_stop() -> OrderIntent:
    return OrderIntent(
        symbol="AAPL",
        side="sell",
        quantity=Decimal(10),
        order_type="stop",
        stop_price=Decimal(95),
        time_in_force="gtc",
    )


async def long_with_stop(om: OrderManager) -> str:
    """10 AAPL bought at 100 and its stop (sell 10 at 95) resting; the stop's client id."""
    bought = await om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(10)))
    assert bought.state is OrderState.FILLED
    stop = await om.submit(protective_stop(), protective=True)
    assert stop.state is OrderState.ACCEPTED
    return stop.client_order_id


def sells(broker: PaperBroker) -> list[tuple[str, str, Decimal]]:
    """Every executed sell at the broker: (client id, order type, quantity)."""
    types = {o.client_order_id: o.order_type for o in broker.all_orders()}
    return [
        (f.client_order_id, types[f.client_order_id], f.quantity)
        for f in broker.all_fills()
        if f.side == "sell"
    ]


class ServedPaper:
    """``atb paper-broker``'s app serving ``broker`` from a thread (a subclass's timing)."""

    def __init__(self, broker: PaperBroker) -> None:
        sock = listen_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(broker), log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the paper broker did not start"
            time.sleep(0.01)  # polling a condition with a deadline, not a timing assumption

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
