"""The engine of ``tests/orders/test_reconcile_kill.py``: reconcile at start, then trade.

    python tests/support/orders_recon_child.py DB_URL WAL_DIR BROKER_URL SEED N [--twice]
        [--user-stops]

Opens the durable database on the log in WAL_DIR and an ``OrderManager`` on the paper broker
at BROKER_URL (``HttpBroker``, 0.3 s socket timeout, zero backoff); a ``StartupReconciler``
runs first (submit is refused until it succeeds) and prints ``reconciled <result JSON>``;
then N orders made from SEED are submitted (``ack <client id> <state>`` after each), then the
user's own stops are worked on, seeded (``--user-stops``): for each position one is placed (a
half, all, or one and a half of it: under and over cover), or one is resized (cancelled,
another placed) or cancelled, and a resting limit order may be cancelled (``ack`` lines too);
fills are polled, the session ends with an anchor of the audit chain, ``done``.
``WAL_CRASH_POINT`` (``order.*``) stops it at that point: also inside the reconciliation.
A ``ReconciliationFatalError`` prints ``fatal <message>`` and exits 3. ``--twice``: a second
reconciliation right after the first, printed as ``second <result JSON> writes <n>`` with the
broker write calls (submits + cancels, from ``/_paper/stats``) it made.
"""

from __future__ import annotations

import asyncio
import random
import sys
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
from orders_child import intents
from trading_child import fast_config

from wal import DurableDatabaseManager
from wal.db import DatabaseManager
from wal.orders import (
    OrderIntent,
    OrderManager,
    ReconcilerConfig,
    ReconciliationFatalError,
    RetryPolicy,
    RiskLimits,
    StartupReconciler,
)
from wal.orders.http_broker import HttpBroker

CONFIG = ReconcilerConfig(fetch_timeout=5.0, fetch_backoff=(0.01, 0.02, 0.04))


def writes(broker_url: str) -> int:
    st = httpx.get(f"{broker_url}/_paper/stats", timeout=10).json()
    return int(st["submit_calls"]) + int(st["cancel_calls"])


async def cancel(om: OrderManager, cid: str) -> str:
    try:
        return (await om.cancel(cid)).state.value
    except Exception as exc:  # a lost reply, a refusal: the next reconciliation settles it
        return f"cancel-failed:{type(exc).__name__}"


async def user_stops(om: OrderManager, rng: random.Random) -> None:
    """The user's stops, placed, resized and cancelled; a resting limit order cancelled."""
    for sym, pos in sorted(om.positions().items()):
        if pos == 0:
            continue
        side = "sell" if pos > 0 else "buy"
        mine = [
            o
            for o in om.open_orders()
            if o.symbol == sym
            and o.intent.order_type == "stop"
            and not o.client_order_id.startswith("es-")
            and o.broker_order_id is not None
        ]
        roll = rng.random()
        if mine and roll < 0.3:
            state = await cancel(om, mine[0].client_order_id)
            print(f"ack {mine[0].client_order_id} user-cancel {state}", flush=True)
            continue
        if mine and roll < 0.6:
            state = await cancel(om, mine[0].client_order_id)
            print(f"ack {mine[0].client_order_id} user-resize-cancel {state}", flush=True)
        qty = (abs(pos) * Decimal(rng.choice(("0.5", "1", "1.5")))).quantize(Decimal("0.25"))
        if qty <= 0:
            continue
        intent = OrderIntent(
            symbol=sym,
            side=side,
            quantity=qty,
            order_type="stop",
            stop_price=Decimal("90") if side == "sell" else Decimal("110"),
            time_in_force="gtc",
        )
        order = await om.submit(intent)
        print(f"ack {order.client_order_id} user-stop {order.state.value}", flush=True)
    resting = [o for o in om.open_orders() if o.intent.order_type == "limit"]
    if resting and rng.random() < 0.5:
        state = await cancel(om, resting[0].client_order_id)
        print(f"ack {resting[0].client_order_id} user-cancel-limit {state}", flush=True)


async def main(
    url: str,
    wal_dir: Path,
    broker_url: str,
    seed: int,
    n: int,
    twice: bool = False,
    stops: bool = False,
) -> int:
    ddb = DurableDatabaseManager(DatabaseManager(url), config=fast_config(wal_dir, url))
    ddb.start()
    broker = await HttpBroker.connect(broker_url, timeout=0.3)
    om = OrderManager(
        ddb,
        broker,
        risk=RiskLimits(check_balance=False),
        retry=RetryPolicy(max_attempts=3, base_delay=0.0, call_timeout=5.0),
    )
    rec = StartupReconciler(om, CONFIG)
    print("ready", flush=True)
    try:
        result = await rec.run()
    except ReconciliationFatalError as exc:
        print(f"fatal {exc}", flush=True)
        await broker.aclose()
        ddb.stop()
        return 3
    print("reconciled " + orjson.dumps(result.to_dict()).decode(), flush=True)
    if twice:
        before = writes(broker_url)
        again = await StartupReconciler(om, CONFIG).run()
        delta = writes(broker_url) - before
        print(f"second {orjson.dumps(again.to_dict()).decode()} writes {delta}", flush=True)
    for intent in intents(seed, n):
        order = await om.submit(intent)
        print(f"ack {order.client_order_id} {order.state.value}", flush=True)
    if stops:
        await user_stops(om, random.Random(seed))
    await om.poll_fills()
    await om.close()
    await broker.aclose()
    ddb.stop()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    db_url, wal_dir, broker_url, seed, n = sys.argv[1:6]
    twice = "--twice" in sys.argv[6:]
    stops = "--user-stops" in sys.argv[6:]
    sys.exit(asyncio.run(main(db_url, Path(wal_dir), broker_url, int(seed), int(n), twice, stops)))
