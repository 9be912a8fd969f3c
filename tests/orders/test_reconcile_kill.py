"""Kill test of startup reconciliation: the engine is SIGKILLed (or stopped at every named
``order.*`` crash point, inside its trading and inside its reconciliation) while the paper
broker runs as its own process, its market ticking so resting orders and stops fill.

Each cycle: a child engine (reconcile, then trade) dies; the broker's clock is paused; a new
engine restarts, reconciles, and reconciles again at once. Checked from outside both
processes after every restart:

* at most one broker order per client id;
* the broker's net positions equal the journal's (the sum of its journaled fills);
* every position has exactly one active stop, covering all of it;
* the second reconciliation reports all zeros and made no write call to the broker;
* the audit chain of the order events verifies.

``WAL_STRESS=1`` runs more random kills and both dedup scopes.
"""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from orders_helpers import run_order_child
from paper_process import PaperProcess

from wal.crashpoints import POINTS
from wal.db import DatabaseManager
from wal.log.storage import WALStorage
from wal.orders import Fault, FaultPlan, verify_audit
from wal.orders.journal import read_journal

HERE = Path(__file__).resolve().parents[1] / "support"
CHILD = HERE / "orders_recon_child.py"
ORDER_POINTS = sorted(p for p in POINTS if p.startswith("order."))
STRESS = bool(os.environ.get("WAL_STRESS"))
RANDOM_KILLS = 10 if STRESS else 2
SCOPES = ["global", "open_only"] if STRESS else ["global"]
SEED = int(os.environ.get("WAL_ORDERS_KILL_SEED", "1409"))


@pytest.fixture(params=SCOPES)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PaperProcess]:
    plan = (
        FaultPlan(seed=SEED, timeout_hang_seconds=0.5)
        .randomly("submit_order", {Fault.TIMEOUT_AFTER_ACCEPT: 0.15, Fault.DUPLICATE_ID: 0.05})
        .randomly("get_open_orders", {Fault.FETCH_FAILURE: 0.1})
        .on("get_order_by_client_id", Fault.NOT_FOUND, times=2)
    )
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
    """A clean engine reconciles twice; a fatal fetch failure (the faults) is retried."""
    for _ in range(4):
        rc, lines = run_child([*args, "0", "--twice"])
        if rc == 3:
            continue
        assert rc == 0 and lines[-1] == "done", lines
        return lines
    raise AssertionError(f"reconciliation failed four times: {lines}")


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
        audit = verify_audit(db)
    finally:
        db.dispose()
    assert audit.ok, audit.problems
    at_broker = broker.orders()
    doubled = {c: n for c, n in Counter(o["client_order_id"] for o in at_broker).items() if n > 1}
    assert not doubled, f"client ids sent twice: {doubled}"
    journal = {o.client_order_id for o in orders}
    forgotten = {o["client_order_id"] for o in at_broker} - journal
    cancelled = {o["client_order_id"] for o in at_broker if o["status"] == "canceled"}
    assert forgotten <= cancelled, f"live broker orders the journal forgot: {forgotten}"
    mine: dict[str, Decimal] = {}
    for f in fills:
        q = Decimal(str(f["quantity"]))
        mine[f["symbol"]] = mine.get(f["symbol"], Decimal(0)) + (q if f["side"] == "buy" else -q)
    positions = broker.positions()
    assert {s: q for s, q in mine.items() if q != 0} == positions
    live = [o for o in at_broker if o["status"] in ("new", "accepted", "partially_filled")]
    for sym, q in positions.items():
        stops = [
            o
            for o in live
            if o["symbol"] == sym
            and o["type"] == "stop"
            and o["side"] == ("sell" if q > 0 else "buy")
        ]
        assert len(stops) == 1, f"{sym} {q}: {len(stops)} active stops"
        assert Decimal(stops[0]["qty"]) - Decimal(stops[0]["filled_qty"] or 0) == abs(q)
    unresolved = [o for o in orders if o.state.value in ("pending", "submitting", "unknown")]
    assert not unresolved, f"left unresolved after reconciliation: {unresolved}"


def test_kill_at_every_crash_point_then_reconcile(broker: PaperProcess, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    wal_dir = tmp_path / "wal"
    args = [url, str(wal_dir), broker.url]
    rng = random.Random(SEED)
    plans: list[tuple[str | None, int | None]] = [
        (f"{p}:{rng.randint(1, 3)}", None) for p in ORDER_POINTS
    ] + [(None, rng.randint(0, 3)) for _ in range(RANDOM_KILLS)]
    crashed = 0
    for cycle, (crash, kill_after) in enumerate(plans):
        seed = SEED * 100 + cycle
        broker.clock(running=True)  # the market moves: resting orders and stops fill
        rc, lines = run_child([*args, str(seed), "5"], crash, kill_after)
        assert lines and lines[0] == "ready", lines
        assert rc in (137, -signal.SIGKILL, 0, 3), (rc, lines)
        crashed += crash is not None and rc == 137
        broker.clock(running=False)
        lines = restart_and_reconcile([*args, str(seed)])
        check(broker, url, wal_dir, lines)
    assert crashed >= len(ORDER_POINTS) - 1, f"only {crashed} crash points were reached"
