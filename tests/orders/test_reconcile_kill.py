"""Kill test of startup reconciliation: the engine is SIGKILLed (or stopped at every named
``order.*`` crash point, inside its trading and inside its reconciliation) while the paper
broker runs as its own process, its market ticking so resting orders and stops fill.

The conditions of issue 19: the engine reaches the broker through a TCP proxy that forwards
some order requests (submits, cancels) and drops their replies (the broker acted, the engine
never hears it: ``reply_drop_proxy.py``); lookups lag (the broker says "not found" although it
holds the order); every fill arrives in two executions; the engine places, resizes and
cancels its user's own stops (under and over cover) and cancels resting orders; SQLite and
PostgreSQL.

Each cycle: a child engine (reconcile, then trade) dies; the broker's clock is paused; a new
engine restarts, reconciles, and reconciles again at once. Checked after every restart from
the broker's own state (read directly, not through the proxy):

* one broker order per client id;
* the active stops of each position are on its reducing side and sum exactly to it;
* no active stop without a position;
* every broker execution booked once, to the order of its client id (no synthetic orphan);
* the broker's net positions equal the journal's;
* every journal order settled: final, or live at the broker with the same filled quantity;
  and every order live at the broker is open in the journal;
* the second reconciliation reports all zeros and made no write call to the broker;
* the audit chain verifies, the digest file included.

CI runs the crash points and a few random kills on SQLite, a few on PostgreSQL.
``WAL_STRESS=1`` runs ``WAL_ORDERS_KILLS`` (default 20) random kills per database, both dedup
scopes, and prints the figures.
"""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from orders_helpers import run_order_child
from paper_process import PaperProcess
from reply_drop_proxy import ReplyDropProxy

from wal.crashpoints import POINTS
from wal.db import DatabaseManager
from wal.log.storage import WALStorage
from wal.orders import Fault, FaultPlan, verify_audit
from wal.orders.audit import digest_path
from wal.orders.journal import read_journal

HERE = Path(__file__).resolve().parents[1] / "support"
CHILD = HERE / "orders_recon_child.py"
ORDER_POINTS = sorted(p for p in POINTS if p.startswith("order."))
STRESS = bool(os.environ.get("WAL_STRESS"))
KILLS = int(os.environ.get("WAL_ORDERS_KILLS", "20")) if STRESS else 2
SCOPES = ["global", "open_only"] if STRESS else ["global"]
SEED = int(os.environ.get("WAL_ORDERS_KILL_SEED", "1409"))
LIVE = ("new", "accepted", "partially_filled")


@pytest.fixture(params=SCOPES)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PaperProcess]:
    plan = FaultPlan(
        seed=SEED, timeout_hang_seconds=0.5, partial_fills=(Decimal("0.3"), Decimal("0.7"))
    )
    plan.randomly("submit_order", {Fault.TIMEOUT_AFTER_ACCEPT: 0.1, Fault.DUPLICATE_ID: 0.05})
    plan.randomly("get_open_orders", {Fault.FETCH_FAILURE: 0.05})
    plan.randomly("get_order_by_client_id", {Fault.NOT_FOUND: 0.1})  # the lookup lags
    plan.on("get_order_by_client_id", Fault.NOT_FOUND, times=2)
    b = PaperProcess(tmp_path, scope=request.param, plan=plan, tick=0.02, seed=SEED)
    try:
        yield b
    finally:
        b.close()


def run_child(
    args: list[str], crash: str | None = None, kill_after: int | None = None
) -> tuple[int, list[str]]:
    return run_order_child(CHILD, args, crash, kill_after)


def restart_and_reconcile(args: list[str]) -> list[str]:
    """A clean engine reconciles twice; a fatal run (the faults) is retried."""
    lines: list[str] = []
    for _ in range(4):
        rc, lines = run_child([*args, "0", "--twice"])
        if rc == 3:
            continue
        assert rc == 0 and lines[-1] == "done", lines
        return lines
    raise AssertionError(f"reconciliation failed four times: {lines}")


def broker_fills(broker: PaperProcess) -> list[dict[str, Any]]:
    r = broker.http.get(
        "/v2/account/activities/FILL", params={"after": "2000-01-01T00:00:00+00:00"}
    )
    r.raise_for_status()
    fills: list[dict[str, Any]] = r.json()
    return fills


def check(broker: PaperProcess, url: str, wal_dir: Path, lines: list[str]) -> None:
    second = next(x for x in lines if x.startswith("second "))
    body, writes = second.removeprefix("second ").rsplit(" writes ", 1)
    result = orjson.loads(body)
    counts = {k: v for k, v in result.items() if isinstance(v, int) and not isinstance(v, bool)}
    assert set(counts.values()) == {0} and result["errors"] == [], result
    assert int(writes) == 0, "the second reconciliation wrote to the broker"
    storage = WALStorage.open_readonly(wal_dir)
    try:
        pending = list(storage.get_pending_entries())
    finally:
        storage.close()
    db = DatabaseManager(url)
    try:
        orders, _, _ = read_journal(db, pending)
        fills = [f for o in orders for f in read_journal(db, pending, o.client_order_id)[2]]
        audit = verify_audit(db, digest=digest_path(wal_dir))
    finally:
        db.dispose()
    assert audit.ok, audit.problems
    at_broker = broker.orders()
    doubled = {c: n for c, n in Counter(o["client_order_id"] for o in at_broker).items() if n > 1}
    assert not doubled, f"client ids sent twice: {doubled}"
    journal = {o.client_order_id: o for o in orders}
    live = [o for o in at_broker if o["status"] in LIVE]
    # every broker execution booked once, to the order of its client id
    booked = Counter((str(f["execution_id"]), str(f["client_order_id"])) for f in fills)
    executions = broker_fills(broker)
    for e in executions:
        key = (str(e["execution_id"]), str(e["client_order_id"]))
        assert booked[key] == 1, f"broker execution {key} booked {booked[key]} times"
    synthetic = [f for f in fills if str(f["client_order_id"]).startswith("orphan-")]
    assert not synthetic, f"fills booked to invented orders: {synthetic}"
    assert sum(booked.values()) == len(executions), "the journal holds executions the broker lacks"
    # positions, and their protection: exact, on the reducing side; no stop without one
    mine: dict[str, Decimal] = {}
    for f in fills:
        q = Decimal(str(f["quantity"]))
        mine[f["symbol"]] = mine.get(f["symbol"], Decimal(0)) + (q if f["side"] == "buy" else -q)
    positions = broker.positions()
    assert {s: q for s, q in mine.items() if q != 0} == positions
    stops = [o for o in live if o["type"] in ("stop", "stop_limit")]
    for sym in sorted(set(positions) | {o["symbol"] for o in stops}):
        q = positions.get(sym, Decimal(0))
        mine_stops = [o for o in stops if o["symbol"] == sym]
        reducing = "sell" if q > 0 else "buy"
        wrong = [o["client_order_id"] for o in mine_stops if q == 0 or o["side"] != reducing]
        assert not wrong, f"{sym} {q}: stops that would open or grow a position: {wrong}"
        cover = sum(
            (Decimal(o["qty"]) - Decimal(o["filled_qty"] or 0) for o in mine_stops), Decimal(0)
        )
        assert cover == abs(q), f"{sym} {q}: the active stops cover {cover}"
    # every journal order settled, every live broker order open in the journal
    by_cid = {o["client_order_id"]: o for o in at_broker}
    for cid, o in journal.items():
        state = o.state.value
        assert state not in ("pending", "submitting", "unknown"), f"{cid} left {state}"
        bo = by_cid.get(cid)
        if state in ("accepted", "partially_filled"):
            assert bo is not None and bo["status"] in LIVE, f"{cid} {state}, broker: {bo}"
        if bo is not None:
            assert Decimal(bo["filled_qty"] or 0) == o.filled_quantity, (cid, state, bo)
    for bo in live:
        o = journal.get(bo["client_order_id"])
        assert o is not None and o.state.value in ("accepted", "partially_filled"), (bo, o)


def plans(rng: random.Random, points: list[str], kills: int) -> list[tuple[str | None, int | None]]:
    return [(f"{p}:{rng.randint(1, 3)}", None) for p in points] + [
        (None, rng.randint(0, 7)) for _ in range(kills)
    ]


def kill_cycles(
    broker: PaperProcess, url: str, tmp_path: Path, points: list[str], kills: int
) -> dict[str, int]:
    wal_dir = tmp_path / "wal"
    rng = random.Random(SEED)
    proxy = ReplyDropProxy(int(broker.url.rsplit(":", 1)[1]), rate=0.15, seed=SEED)
    args = [url, str(wal_dir), proxy.url]
    crashed = cycles = 0
    try:
        for cycle, (crash, kill_after) in enumerate(plans(rng, points, kills)):
            seed = SEED * 100 + cycle
            broker.clock(running=True)  # the market moves: resting orders and stops fill
            rc, lines = run_child([*args, str(seed), "5", "--user-stops"], crash, kill_after)
            assert lines and lines[0] == "ready", lines
            assert rc in (137, -signal.SIGKILL, 0, 3), (rc, lines)
            crashed += rc in (137, -signal.SIGKILL)
            broker.clock(running=False)
            lines = restart_and_reconcile([*args, str(seed)])
            check(broker, url, wal_dir, lines)
            cycles += 1
    finally:
        proxy.close()
    at_broker = broker.orders()
    stops = [o for o in at_broker if o["type"] == "stop"]
    figures = {
        "cycles": cycles,
        "killed": crashed,
        "replies_dropped": proxy.dropped,
        "broker_orders": len(at_broker),
        "executions": len(broker_fills(broker)),
        "user_stops": sum(not o["client_order_id"].startswith("es-") for o in stops),
        "emergency_stops": sum(o["client_order_id"].startswith("es-") for o in stops),
        "stops_cancelled": sum(o["status"] == "canceled" for o in stops),
        "partially_filled_then_cancelled": sum(
            o["status"] == "canceled" and Decimal(o["filled_qty"] or 0) > 0 for o in at_broker
        ),
    }
    print(f"kill test figures ({url.split(':', 1)[0]}): {figures}")
    return figures


def test_kill_at_every_crash_point_then_reconcile(broker: PaperProcess, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    figures = kill_cycles(broker, url, tmp_path, ORDER_POINTS, KILLS)
    assert figures["killed"] >= len(ORDER_POINTS) - 1, figures


@pytest.mark.postgres
def test_random_kills_then_reconcile_on_postgresql(
    broker: PaperProcess, pg_db: str, tmp_path: Path
) -> None:
    points = ORDER_POINTS if STRESS else ["order.after_broker_accept"]
    figures = kill_cycles(broker, pg_db, tmp_path, points, KILLS)
    assert figures["killed"] >= 1, figures
