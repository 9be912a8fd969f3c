"""The order service against its targets: POST p95, journal event to WebSocket p99, and 100
traders connected and submitting at once. A real ``atb serve`` (the in-process paper broker),
clients in this process (httpx, websockets).

Reproduce: python benchmarks/service.py [--orders 300] [--traders 100] [--pg]
(--pg: a throwaway PostgreSQL from pgserver, or WAL_TEST_PG_DSN.)

Targets (issue 23): POST p95 <= 20 ms; event to WebSocket p99 <= 50 ms; with 100 traders at
once, p95 within 1.1x of one trader's. The event latency is the client's receipt time minus
the event's own time (``at``: taken before its fsync), so it includes the fsync: an upper
bound of "journal event to client".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from service_proc import ServiceProc, auth

BODY = {"symbol": "AAPL", "side": "buy", "quantity": "1"}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def one_trader(
    url: str, token: str, n: int, symbol: str = "AAPL"
) -> tuple[list[float], list[float]]:
    """n sequential POSTs with a WebSocket open: (POST latencies, event latencies) in ms."""
    lat: list[float] = []
    ev_lat: list[float] = []
    ws_url = url.replace("http://", "ws://") + f"/ws/orders/events?token={token}"
    async with websockets.connect(ws_url, max_size=None) as ws:
        while json.loads(await ws.recv()).get("type") != "ready":
            pass

        async def reader() -> None:
            async for raw in ws:
                now = datetime.now(UTC)
                ev = json.loads(raw)
                at = datetime.fromisoformat(ev["at"])
                ev_lat.append((now - at).total_seconds() * 1000)

        task = asyncio.create_task(reader())
        async with httpx.AsyncClient(base_url=url, headers=auth(token), timeout=30) as c:
            for _ in range(n):
                t0 = time.perf_counter()
                r = await c.post(
                    "/api/v1/orders",
                    json=BODY | {"symbol": symbol},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                lat.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 201, r.text
        await asyncio.sleep(0.5)  # the last events in flight
        task.cancel()
    return lat, ev_lat


async def many_traders(url: str, tokens: list[str], per: int, own: bool = False) -> list[float]:
    """Every trader at once, each ``per`` sequential POSTs; ``own``: each in a symbol of its
    own (fills of one symbol are booked one after another: each waits for the last one's
    fsync, so that its position follows a durable one)."""
    results = await asyncio.gather(
        *(one_trader(url, t, per, f"S{i:03d}" if own else "AAPL") for i, t in enumerate(tokens))
    )
    return [x for lat, _ in results for x in lat]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=300, help="orders of the one-trader run")
    ap.add_argument("--traders", type=int, default=100)
    ap.add_argument("--per-trader", type=int, default=5, help="orders each of the N traders")
    ap.add_argument("--pg", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.pg:
            from pg import launch

            server = launch()
            url = server.database_url(server.create_database())
        else:
            url = f"sqlite:///{tmp}/atb.db"
        env = {
            "ORDER_RATE_LIMIT": "100000",
            "SERVICE_PAPER_BALANCE": "100000000",
            "SERVICE_POLL_INTERVAL": "0.5",
            "WAL_SYNC_INTERVAL": "1",
        }
        svc = ServiceProc(Path(tmp), url, env=env)
        tokens = [svc.token(f"t{i}") for i in range(args.traders)]
        svc.start()
        try:
            svc.wait_ready()
            asyncio.run(one_trader(svc.url, tokens[0], 30))  # warm up
            lat, ev = asyncio.run(one_trader(svc.url, tokens[0], args.orders))
            many = asyncio.run(many_traders(svc.url, tokens, args.per_trader))
            own = asyncio.run(many_traders(svc.url, tokens, args.per_trader, own=True))
        finally:
            svc.stop()
            if args.pg:
                server.teardown()
    one95 = pct(lat, 95)
    print(f"database          {'postgresql' if args.pg else 'sqlite'}")
    print(
        f"POST, one trader  n={len(lat)} p50={statistics.median(lat):.2f} ms "
        f"p95={one95:.2f} ms (target <= 20 ms)"
    )
    print(
        f"event -> WS       n={len(ev)} p50={statistics.median(ev):.2f} ms "
        f"p99={pct(ev, 99):.2f} ms (target <= 50 ms)"
    )
    print(
        f"POST, {args.traders} traders at once  n={len(many)} p95={pct(many, 95):.2f} ms "
        f"= {pct(many, 95) / one95:.2f}x one trader's (target <= 1.1x)"
    )
    print(
        f"  the same, each trader in a symbol of its own  n={len(own)} "
        f"p95={pct(own, 95):.2f} ms = {pct(own, 95) / one95:.2f}x one trader's"
    )


if __name__ == "__main__":
    main()
