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
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from service_proc import ServiceProc, auth

BODY = {"symbol": "AAPL", "side": "buy", "quantity": "1"}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _events_url(url: str, token: str) -> str:
    return url.replace("http://", "ws://") + f"/ws/orders/events?token={token}"


async def _until_ready(ws: Any) -> None:
    """Read the stream up to its "ready" message (what a new connection is sent first)."""
    while json.loads(await ws.recv()).get("type") != "ready":
        pass


RETRIES: list[str] = []  # transport errors retried (a kept-alive connection the server closed)


async def _post(c: httpx.AsyncClient, symbol: str) -> float:
    """One new order (a fresh Idempotency-Key); its POST latency in ms, asserted 201 (200 for
    a retry the server had answered). A transport error is retried with the same key, as a
    client should (the key makes it safe): a connection kept alive past the server's idle
    timeout (uvicorn's 5 s) can be closed just as a request is sent on it. The latency is
    from the first attempt."""
    key = uuid.uuid4().hex
    t0 = time.perf_counter()
    for attempt in range(3):
        try:
            r = await c.post(
                "/api/v1/orders", json=BODY | {"symbol": symbol}, headers={"Idempotency-Key": key}
            )
            break
        except httpx.TransportError as exc:
            if attempt == 2:
                raise
            RETRIES.append(type(exc).__name__)
    ms = (time.perf_counter() - t0) * 1000
    assert r.status_code in (200, 201), r.text
    return ms


async def one_trader(
    url: str, token: str, n: int, symbol: str = "AAPL"
) -> tuple[list[float], list[float]]:
    """n sequential POSTs with a WebSocket open: (POST latencies, event latencies) in ms."""
    lat: list[float] = []
    ev_lat: list[float] = []
    async with websockets.connect(_events_url(url, token), max_size=None) as ws:
        await _until_ready(ws)

        async def reader() -> None:
            async for raw in ws:
                now = datetime.now(UTC)
                ev = json.loads(raw)
                at = datetime.fromisoformat(ev["at"])
                ev_lat.append((now - at).total_seconds() * 1000)

        task = asyncio.create_task(reader())
        async with httpx.AsyncClient(base_url=url, headers=auth(token), timeout=30) as c:
            for _ in range(n):
                lat.append(await _post(c, symbol))
        await asyncio.sleep(0.5)  # the last events in flight
        task.cancel()
    return lat, ev_lat


async def many_traders(url: str, tokens: list[str], per: int, own: bool = False) -> list[float]:
    """Every trader connecting and submitting at once, each ``per`` sequential POSTs: the
    first POSTs share the server (and this client) with the other traders' WebSocket and
    HTTP handshakes. ``own``: each trader in a symbol of its own."""
    results = await asyncio.gather(
        *(one_trader(url, t, per, f"S{i:03d}" if own else "AAPL") for i, t in enumerate(tokens))
    )
    return [x for lat, _ in results for x in lat]


@contextlib.asynccontextmanager
async def _connected(url: str, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """A trader connected: its WebSocket open (every event read and dropped) and its HTTP
    connection made (a GET); yields the HTTP client."""
    async with websockets.connect(_events_url(url, token), max_size=None) as ws:
        await _until_ready(ws)

        async def reader() -> None:
            async for raw in ws:
                json.loads(raw)

        task = asyncio.create_task(reader())
        try:
            async with httpx.AsyncClient(base_url=url, headers=auth(token), timeout=60) as c:
                (await c.get("/api/v1/balance")).raise_for_status()
                yield c
        finally:
            task.cancel()


async def _connected_trader(
    url: str,
    token: str,
    symbol: str,
    times: list[float] | None,
    per: int,
    ready: asyncio.Barrier,
    start: list[float],
) -> list[float]:
    """One trader: its WebSocket open (events read) and its HTTP connection made (a GET),
    then every trader's ``ready``; then ``per`` POSTs, back to back (``times`` None) or each
    at its time after the common start (seconds; a POST that is late goes at once)."""
    lat: list[float] = []
    async with _connected(url, token) as c:
        if await ready.wait() == 0:
            start.append(time.perf_counter())
        await ready.wait()  # the start time is set
        for k in range(per):
            if times is not None:
                await asyncio.sleep(max(0.0, start[0] + times[k] - time.perf_counter()))
            lat.append(await _post(c, symbol))
    return lat


async def connected_traders(
    url: str, tokens: list[str], per: int, *, own: bool = False, every: float | None = None
) -> tuple[list[float], float]:
    """Every trader connected first (WebSocket and HTTP), then all start at one instant:
    ``every`` None: each POSTs ``per`` orders back to back (100 requests in flight);
    ``every`` seconds: each POSTs one order every ``every`` s, the traders' first orders
    spread evenly over the first interval (an open load of len(tokens) / every orders/s).
    (POST latencies in ms, seconds from the start to the last answer)."""
    n = len(tokens)
    ready = asyncio.Barrier(n)
    start: list[float] = []

    def times(i: int) -> list[float] | None:
        if every is None:
            return None
        return [every * (i / n + k) for k in range(per)]

    results = await asyncio.gather(
        *(
            _connected_trader(url, t, f"S{i:03d}" if own else "AAPL", times(i), per, ready, start)
            for i, t in enumerate(tokens)
        )
    )
    return [x for lat in results for x in lat], time.perf_counter() - start[0]


async def one_trader_paced(url: str, token: str, n: int, gap: float) -> list[float]:
    """One trader (WebSocket open), an order every ``gap`` s on a fixed schedule (a POST that
    is late goes at once): the same arrivals as ``n`` traders each an order every ``n * gap``
    s, from one trader. POST latencies in ms."""
    lat: list[float] = []
    async with _connected(url, token) as c:
        t0 = time.perf_counter()
        for k in range(n):
            await asyncio.sleep(max(0.0, t0 + k * gap - time.perf_counter()))
            lat.append(await _post(c, "AAPL"))
    return lat


def degradation(
    url: str, tokens: list[str], rounds: int, every: float, seq: int
) -> dict[str, list[float]]:
    """The 100-trader degradation, in alternating rounds so that the disk's and the database's
    drift over the run falls on every series alike. Each round, back to back:
    ``one``: one trader, ``seq`` POSTs back to back (the one-trader row's load);
    ``one_paced``: one trader, ``len(tokens)`` POSTs at the arrival times of ``many``;
    ``many``: every trader connected, then each one POST, spread evenly over ``every`` s.
    POST latencies in ms per series, pooled over the rounds."""
    out: dict[str, list[float]] = {"one": [], "one_paced": [], "many": []}
    n = len(tokens)
    for _ in range(rounds):
        out["one"] += asyncio.run(one_trader(url, tokens[0], seq))[0]
        out["one_paced"] += asyncio.run(one_trader_paced(url, tokens[0], n, every / n))
        out["many"] += asyncio.run(connected_traders(url, tokens, 1, every=every))[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=300, help="orders of the one-trader run")
    ap.add_argument("--traders", type=int, default=100)
    ap.add_argument("--per-trader", type=int, default=5, help="orders each of the N traders")
    ap.add_argument(
        "--every",
        type=float,
        nargs="*",
        default=[6.0, 1.2, 0.6],
        help="paced phases: each trader an order every N seconds (0.6: the default rate limit)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="rounds of the degradation phase (one trader, one trader paced, N traders paced)",
    )
    ap.add_argument(
        "--degradation-every",
        type=float,
        default=6.0,
        help="the degradation phase's pace: each of the N traders an order every N seconds",
    )
    ap.add_argument(
        "--only-degradation", action="store_true", help="warm up, then the degradation phase only"
    )
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
            # every trader's first order: its account's paper funding, outside the timed phases
            asyncio.run(connected_traders(svc.url, tokens, 1, every=2.0))
            deg = degradation(
                svc.url,
                tokens,
                args.rounds,
                args.degradation_every,
                args.orders // max(1, args.rounds),
            )
            if args.only_degradation:
                report_degradation(deg, args.traders, args.degradation_every, args.pg)
                return
            lat, ev = asyncio.run(one_trader(svc.url, tokens[0], args.orders))
            # the first POSTs of the traders: also their accounts' paper funding
            cold = asyncio.run(many_traders(svc.url, tokens, args.per_trader))
            burst = asyncio.run(connected_traders(svc.url, tokens, args.per_trader))
            own = asyncio.run(connected_traders(svc.url, tokens, args.per_trader, own=True))
            paced = [
                (
                    every,
                    asyncio.run(connected_traders(svc.url, tokens, args.per_trader, every=every)),
                )
                for every in args.every
            ]
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
    n = args.traders

    def load(name: str, got: tuple[list[float], float]) -> str:
        lat, secs = got
        return (
            f"{name}  n={len(lat)} in {secs:.2f} s ({len(lat) / secs:.0f} orders/s) "
            f"p50={statistics.median(lat):.2f} ms p95={pct(lat, 95):.2f} ms "
            f"= {pct(lat, 95) / one95:.2f}x one trader's"
        )

    print(load(f"POST, {n} traders connected, then submitting at once", burst), "(target <= 1.1x)")
    print(load("  the same, each trader in a symbol of its own", own))
    print(
        f"  the same, connecting as they submit (the handshakes in the first POSTs)  "
        f"n={len(cold)} p95={pct(cold, 95):.2f} ms = {pct(cold, 95) / one95:.2f}x one trader's"
    )
    for every, got in paced:
        print(load(f"POST, {n} traders connected, each an order every {every:g} s", got))
    report_degradation(deg, n, args.degradation_every, args.pg)
    print(f"transport errors retried with the same key: {len(RETRIES)} {sorted(set(RETRIES))}")


def report_degradation(deg: dict[str, list[float]], n: int, every: float, pg: bool) -> None:
    """The degradation phase's three series and the two ratios (target: <= 1.1x)."""
    if not deg["many"]:
        return  # --rounds 0
    print(f"degradation ({'postgresql' if pg else 'sqlite'}), alternating rounds, pooled:")
    for name, what in (
        ("one", "one trader, back to back"),
        ("one_paced", f"one trader, an order every {every / n * 1000:.0f} ms"),
        ("many", f"{n} traders connected, each an order every {every:g} s"),
    ):
        v = deg[name]
        print(
            f"  {what:45s} n={len(v)} p50={statistics.median(v):.2f} ms "
            f"p95={pct(v, 95):.2f} ms p99={pct(v, 99):.2f} ms"
        )
    many95 = pct(deg["many"], 95)
    print(
        f"  {n} traders' p95 / one trader's (back to back): {many95 / pct(deg['one'], 95):.2f}x; "
        f"/ one trader's at the same arrivals: {many95 / pct(deg['one_paced'], 95):.2f}x "
        "(target <= 1.1x)"
    )


if __name__ == "__main__":
    main()
