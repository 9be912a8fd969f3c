"""The trading engine of ``tests/orders/test_kill.py``: orders through a paper broker process.

    python tests/support/orders_child.py DB_URL WAL_DIR BROKER_URL SEED N

Opens the durable database on the log in WAL_DIR, an ``OrderManager`` on the paper broker at
BROKER_URL (``HttpBroker``, 0.2 s socket timeout, zero backoff), runs ``start()`` (recovery of
what a killed predecessor left), prints ``ready``, then submits N orders made from SEED,
printing ``ack <client id> <state>`` after each ``submit`` returned, polls fills, prints
``done``. ``WAL_CRASH_POINT`` (``order.*``) stops it at that point.
"""

from __future__ import annotations

import asyncio
import random
import sys
from decimal import Decimal
from pathlib import Path

from trading_child import fast_config

from wal import DurableDatabaseManager
from wal.db import DatabaseManager
from wal.orders import OrderIntent, OrderManager, RetryPolicy, RiskLimits
from wal.orders.http_broker import HttpBroker

SYMBOLS = ("AAPL", "MSFT", "BTC-USD")


def intents(seed: int, n: int) -> list[OrderIntent]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        side = rng.choice(("buy", "buy", "sell"))
        qty = Decimal(rng.randint(1, 40)) / 4
        if rng.random() < 0.3:
            out.append(
                OrderIntent(
                    symbol=rng.choice(SYMBOLS),
                    side=side,
                    quantity=qty,
                    order_type="limit",
                    limit_price=Decimal("100"),
                )
            )
        else:
            out.append(OrderIntent(symbol=rng.choice(SYMBOLS), side=side, quantity=qty))
    return out


async def main(url: str, wal_dir: Path, broker_url: str, seed: int, n: int) -> None:
    ddb = DurableDatabaseManager(DatabaseManager(url), config=fast_config(wal_dir, url))
    ddb.start()
    broker = await HttpBroker.connect(broker_url, timeout=0.2)
    om = OrderManager(
        ddb,
        broker,
        risk=RiskLimits(check_balance=False),
        retry=RetryPolicy(max_attempts=3, base_delay=0.0, call_timeout=5.0),
    )
    await om.start()
    print("ready", flush=True)
    for intent in intents(seed, n):
        order = await om.submit(intent)
        print(f"ack {order.client_order_id} {order.state.value}", flush=True)
    await om.poll_fills()
    await broker.aclose()
    ddb.stop()
    print("done", flush=True)


if __name__ == "__main__":
    db_url, wal_dir, broker_url, seed, n = sys.argv[1:6]
    asyncio.run(main(db_url, Path(wal_dir), broker_url, int(seed), int(n)))
