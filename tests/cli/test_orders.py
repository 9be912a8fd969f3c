"""``atb orders list|show`` (and their --json contract) on a journal written by a real run."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner
from orders_helpers import buy, make_rig, run

from cli.main import atb
from wal.orders import PaperBroker


def test_orders_list_and_show(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=3))

    async def go() -> str:
        await rig.om.start()
        return (await rig.om.submit(buy("2"))).client_order_id

    cid = run(go())
    rig.close()
    env = {"WAL_DIR": str(tmp_path / "wal"), "DATABASE_URL": f"sqlite:///{tmp_path / 'atb.db'}"}
    r = CliRunner().invoke(atb, ["orders", "list", "--json"], env=env)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [(o["client_order_id"], o["state"]) for o in rows] == [(cid, "filled")]
    assert Decimal(rows[0]["filled_quantity"]) == 2
    r = CliRunner().invoke(atb, ["orders", "show", cid, "--json"], env=env)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert [e["kind"] for e in d["events"]] == ["created", "submitted", "accepted", "fill"]
    assert len(d["fills"]) == 1
    r = CliRunner().invoke(atb, ["orders", "show", "nope"], env=env)
    assert r.exit_code == 1 and "no order" in r.output
    r = CliRunner().invoke(atb, ["orders", "list"], env=env)
    assert cid in r.output and "filled" in r.output
