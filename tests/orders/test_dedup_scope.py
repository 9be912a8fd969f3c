"""A broker's dedup scope that nobody declared is never taken for ``GLOBAL``.

The manager resends an order whose outcome is unknown (after a lookup that did not find it)
only when the broker refuses a reused client id forever (``DedupScope.GLOBAL``): the resend
then either places the order that never arrived or is refused as a duplicate. A broker that
accepts the id again once the first order is closed (``OPEN_ONLY``, Binance) takes the
resend of an order that filled meanwhile for a second order. ``ClientIdRules()`` used to mean
``GLOBAL``, so an ``HttpBroker`` built without rules (a broker whose rule nobody stated)
resent: a submit that timed out after the broker accepted and filled it, and one lookup that
lagged ("not found"), made a second order of 10 at an ``OPEN_ONLY`` paper broker (20 held,
and the second order's fill refused as an overfill of the first).

Now the default scope is ``UNKNOWN``: never resent, only looked up. A paper broker keeps a
rule of its own (``GLOBAL`` unless told ``OPEN_ONLY``) and declares it at ``/_paper/rules``,
which ``HttpBroker.connect`` reads. The paper broker is its own process here
(``atb paper-broker serve``), the log and the database real files.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from orders_helpers import FAST_RETRY, open_ddb, run
from paper_process import HERE, PaperProcess

from wal.orders import (
    ClientIdRules,
    DedupScope,
    Fault,
    FaultPlan,
    OrderIntent,
    OrderManager,
    OrderState,
    PaperBroker,
    RiskLimits,
)
from wal.orders.http_broker import HttpBroker


def test_rules_nobody_declared_never_resend_and_a_paper_broker_declares_its_own() -> None:
    assert ClientIdRules().dedup_scope is DedupScope.UNKNOWN
    assert ClientIdRules.from_dict({}).dedup_scope is DedupScope.UNKNOWN
    assert ClientIdRules.from_dict({"dedup_scope": "open_only"}).dedup_scope is (
        DedupScope.OPEN_ONLY
    )
    assert HttpBroker("http://127.0.0.1:9").rules.dedup_scope is DedupScope.UNKNOWN
    # a broker keeps a rule: GLOBAL unless told OPEN_ONLY, and says so
    assert PaperBroker().rules.dedup_scope is DedupScope.GLOBAL
    assert PaperBroker(rules=ClientIdRules(correction_separator=".")).rules.dedup_scope is (
        DedupScope.GLOBAL
    )
    open_only = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY)
    assert PaperBroker(rules=open_only).rules.dedup_scope is DedupScope.OPEN_ONLY


def test_the_paper_broker_cannot_be_served_with_an_unknown_scope() -> None:
    """``unknown`` is a client's word; a broker enforces a rule (usage error, exit 2)."""
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "paper-broker", "serve", "--dedup-scope", "unknown"],
        cwd=HERE.parents[1],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert b"unknown" in r.stderr


@pytest.mark.parametrize("scope", ["open_only", "global"])
@pytest.mark.parametrize("declared", [False, True], ids=["undeclared", "connect"])
def test_a_timed_out_submit_whose_lookup_lags_is_never_a_second_order(
    tmp_path: Path, scope: str, declared: bool
) -> None:
    """The broker accepts (and fills) the order and the reply is lost (the socket timeout
    fires); the first lookup does not see it yet (visibility lag); the second does. With
    ``HttpBroker(url)`` (its rules unknown) nothing is ever resent: one submit call, one
    order of 10 at the broker, adopted FILLED. With ``HttpBroker.connect`` the client has
    the broker's own rule: an ``open_only`` broker is never resent to either; a ``global``
    one may be (a duplicate answer then proves the order exists): one order all the same."""
    plan = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.NOT_FOUND)
    )
    paper = PaperProcess(tmp_path, scope=scope, plan=plan)
    ddb = open_ddb(tmp_path / "wal", f"sqlite:///{tmp_path / 'atb.db'}")

    async def go() -> tuple[OrderState, Decimal, DedupScope]:
        if declared:
            broker = await HttpBroker.connect(paper.url, timeout=0.3)
        else:
            broker = HttpBroker(paper.url, timeout=0.3)
        try:
            om = OrderManager(ddb, broker, risk=RiskLimits(check_balance=False), retry=FAST_RETRY)
            await om.start()
            order = await om.submit(
                OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(10), client_order_id="c1")
            )
            return order.state, order.filled_quantity, broker.rules.dedup_scope
        finally:
            await broker.aclose()

    try:
        state, filled, seen = run(go())
        assert seen is (DedupScope(scope) if declared else DedupScope.UNKNOWN)
        assert (state, filled) == (OrderState.FILLED, 10)
        orders = paper.orders()
        assert [(o["client_order_id"], o["qty"], o["status"]) for o in orders] == [
            ("c1", "10", "filled")
        ]
        assert paper.positions() == {"AAPL": Decimal(10)}
        calls = paper.http.get("/_paper/stats").json()["submit_calls"]
        assert calls == (2 if declared and scope == "global" else 1)
    finally:
        paper.close()
        ddb.stop()
        ddb.db.dispose()
