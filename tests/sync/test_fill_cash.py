"""A fill moves cash (issue 20, item 1).

A fill moves the cash of its order's account in the same log entry and the same database
transaction as its position change: a buy ``-quantity x price - fee``, a sell
``+quantity x price - fee``, exactly once (a replay after a crash between the COMMIT and the
COMPLETED mark moves nothing more), and ``get_balance()`` includes it through the overlay
while the database is down. The order risk check reads that balance: money already spent on
fills is not available to the next buy.

Real parts: log directories, a SQLite file or the PostgreSQL fixture, the paper broker, a
real subprocess killed at ``manager.after_apply_before_status``, a real SQLite outage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from orders_helpers import buy, make_rig, run
from trading_child import fast_config, make_outage

from wal import WALEntryStatus
from wal.db import DatabaseManager
from wal.db.schema import balance_changes, positions
from wal.errors import WALArgumentError
from wal.orders import (
    ClientIdRules,
    Fill,
    OrderRejected,
    PaperBroker,
    RejectReason,
    RiskLimits,
)
from wal.sync.durable import DurableDatabaseManager

SUPPORT = Path(__file__).resolve().parents[1] / "support"
NOW = datetime(2026, 1, 2, tzinfo=UTC)


def intent(ddb: DurableDatabaseManager, cid: str, side: str = "buy") -> None:
    ddb.record_order_intent(
        idempotency_key=cid,
        client_order_id=cid,
        symbol="AAPL",
        side=side,
        quantity=Decimal(10),
        order_type="limit",
        limit_price=Decimal(100),
        account="acct",
    )


def fill_call(
    cid: str, n: int, *, side: str = "buy", qty: str = "4", fee: str = "1.5"
) -> dict[str, Any]:
    q, p, f = Decimal(qty), Decimal("100"), Decimal(fee)
    gross = q * p
    cash = -gross - f if side == "buy" else gross - f
    return {
        "execution_id": f"E{n}",
        "execution_key": f"E{n}",
        "client_order_id": cid,
        "symbol": "AAPL",
        "side": side,
        "quantity": q,
        "price": p,
        "executed_at": NOW,
        "seq": 2,
        "kind": "fill",
        "state": "partially_filled",
        "filled_quantity": q,
        "avg_fill_price": p,
        "trade_id": f"t{n}",
        "position_ops": [
            {
                "op": "log_position",
                "kwargs": {
                    "position_id": f"ord-{cid}",
                    "symbol": "AAPL",
                    "side": "long" if side == "buy" else "short",
                    "quantity": q,
                    "entry_price": p,
                },
            }
        ],
        "account": "acct",
        "fee": f,
        "cash": cash,
    }


@pytest.mark.parametrize(
    ("side", "moved"), [("buy", Decimal("-401.5")), ("sell", Decimal("398.5"))]
)
def test_a_fill_moves_cash_with_its_position_in_one_transaction(
    db_url: str, tmp_path: Path, side: str, moved: Decimal
) -> None:
    db = DatabaseManager(db_url)
    with DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", db_url)) as ddb:
        ddb.atomic_balance_update(Decimal(1000), account="acct")
        intent(ddb, "c1", side)
        ddb.record_order_fill(idempotency_key="fill:E1", **fill_call("c1", 1, side=side))
        assert ddb.get_balance("acct") == Decimal(1000) + moved
        assert ddb.drain(timeout=10) == 0
        assert db.get_balance("acct") == Decimal(1000) + moved
        with db.engine.connect() as conn:
            reasons = [
                (r.reason, r.delta)
                for r in conn.execute(
                    sa.select(balance_changes).where(balance_changes.c.account == "acct")
                )
            ]
            assert ("fill E1", moved) in reasons
            assert conn.execute(sa.select(positions.c.position_id)).scalars().all() == ["ord-c1"]
    db.dispose()


def test_a_fill_whose_cash_does_not_match_is_refused_before_the_log(
    db_url: str, tmp_path: Path
) -> None:
    db = DatabaseManager(db_url)
    with DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", db_url)) as ddb:
        intent(ddb, "c1")
        assert ddb.storage is not None
        before = ddb.storage.last_lsn
        for bad in ({"cash": Decimal("-400")}, {"fee": Decimal("-1")}, {"account": None}):
            with pytest.raises(WALArgumentError):
                ddb.record_order_fill(idempotency_key="fill:E1", **(fill_call("c1", 1) | bad))
        assert ddb.storage.last_lsn == before
    db.dispose()


CHILD = """
import sys
from datetime import UTC, datetime
from decimal import Decimal
sys.path.insert(0, sys.argv[3])
sys.path.insert(0, sys.argv[4])
from trading_child import fast_config
from test_fill_cash import fill_call, intent
from wal.db import DatabaseManager
from wal.sync.durable import DurableDatabaseManager

url, wal_dir = sys.argv[1], sys.argv[2]
# inline: the deposit and the intent are applied (one batch each) before the fill's drain
config = fast_config(wal_dir, url, apply_mode="inline")
ddb = DurableDatabaseManager(DatabaseManager(url), config=config)
ddb.atomic_balance_update(Decimal(1000), account="acct")
intent(ddb, "c1")
assert ddb.manager is not None
ddb.manager.write_deferred([("record_order_fill", fill_call("c1", 1), "fill:E1")])
ddb.drain(timeout=30)  # the crash point: committed, not COMPLETED in the log
print("the crash point was not reached", flush=True)
"""


def test_a_fill_replayed_after_a_kill_moves_its_cash_once(db_url: str, tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAL_")}
    # the third time: the deposit and the intent were applied inline before the fill
    env["WAL_CRASH_POINT"] = "manager.after_apply_before_status:3"
    here = Path(__file__).resolve().parent
    done = subprocess.run(
        [sys.executable, "-c", CHILD, db_url, str(wal_dir), str(SUPPORT), str(here)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 137, (done.returncode, done.stdout, done.stderr)
    db = DatabaseManager(db_url)
    assert db.get_balance("acct") == Decimal("598.5")  # committed before the kill
    ddb = DurableDatabaseManager(db, config=fast_config(wal_dir, db_url))
    try:
        assert ddb.storage is not None
        assert ddb.storage.count(WALEntryStatus.PENDING) == 1
        assert ddb.get_balance("acct") == Decimal("598.5")
        ddb.start()
        assert ddb.drain(timeout=30) == 0
        assert ddb.get_balance("acct") == Decimal("598.5")
        assert db.get_balance("acct") == Decimal("598.5")  # replayed: moved once
    finally:
        ddb.stop()
        db.dispose()


def test_the_balance_includes_a_fill_while_the_database_is_down(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    db = DatabaseManager(url)
    outage = make_outage(url, None)
    outage.attach(db)
    ddb = DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", url))
    try:
        ddb.atomic_balance_update(Decimal(1000), account="acct")
        intent(ddb, "c1")
        assert ddb.get_balance("acct") == Decimal(1000)
        outage.begin()
        assert ddb.manager is not None
        ddb.manager.write_deferred([("record_order_fill", fill_call("c1", 1), "fill:E1")])
        assert ddb.get_balance("acct") == Decimal("598.5")  # the kept state plus the fill
        outage.end()
        assert ddb.drain(timeout=30) == 0
        assert ddb.get_balance("acct") == Decimal("598.5")
        assert db.get_balance("acct") == Decimal("598.5")
    finally:
        outage.close()
        ddb.stop()
        db.dispose()


def test_fills_spend_the_balance_the_next_buy_is_checked_against(
    db_url: str, tmp_path: Path
) -> None:
    """The issue's case: buys worth 4,000 on a balance of 1,000 must not pass."""
    broker = PaperBroker(seed=1)
    rig = make_rig(tmp_path, broker, url=db_url, deposit=Decimal(1500), risk=RiskLimits())

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("10"))  # 10 x 100 = 1000: fits 1500
        assert order.filled_quantity == Decimal(10)
        assert rig.ddb.get_balance() == Decimal(500)  # the fill moved its cash
        with pytest.raises(OrderRejected) as info:
            await rig.om.submit(buy("10"))  # another 1000: only 500 left
        assert info.value.reason is RejectReason.INSUFFICIENT_BALANCE
        assert rig.ddb.drain(timeout=30) == 0
        assert rig.ddb.db.get_balance() == Decimal(500)

    try:
        run(go())
    finally:
        rig.close()


def test_a_fee_is_paid_once_and_a_correction_moves_the_difference(
    db_url: str, tmp_path: Path
) -> None:
    rules = ClientIdRules(correction_separator=".")
    broker = PaperBroker(seed=1, auto_fill=False, rules=rules)
    rig = make_rig(tmp_path, broker, url=db_url, deposit=Decimal(5000), risk=RiskLimits())

    async def go() -> None:
        await rig.om.start()
        order = await rig.om.submit(buy("10", order_type="limit", limit_price=Decimal(100)))
        cid = order.client_order_id
        f = Fill("X-1", cid, "AAPL", "buy", Decimal(4), Decimal(100), fee=Decimal(2))
        await rig.om.on_fill(f)
        assert rig.ddb.get_balance() == Decimal(5000 - 402)
        await rig.om.on_fill(f)  # the same execution again: nothing more
        assert rig.ddb.get_balance() == Decimal(5000 - 402)
        # a correction of the same execution key: 5 at 100, fee 3 (replaces, never adds)
        fixed = Fill("X-1.1", cid, "AAPL", "buy", Decimal(5), Decimal(100), fee=Decimal(3))
        await rig.om.on_fill(fixed)
        assert rig.ddb.get_balance() == Decimal(5000 - 503)
        assert rig.ddb.drain(timeout=30) == 0
        assert rig.ddb.get_balance() == Decimal(5000 - 503)
        assert rig.ddb.db.get_balance() == Decimal(5000 - 503)

    try:
        run(go())
    finally:
        rig.close()
