"""Client ids the startup reconciler makes for itself are nobody else's.

The reconciler tells its own orders by their client ids: a synthetic order
``orphan-{symbol}-{YYYYMMDD}`` (journaled, never sent; a half-written one is completed with
a synthetic fill), an emergency stop ``es-...`` (cancelled and replaced whenever the cover is
not exact), a market close ``close-...``. A user's order under such an id was taken for the
reconciler's own: a resting limit ``orphan-AAPL-<today>`` was "completed" with a synthetic fill
of its whole quantity at the broker's entry price while it rested unfilled at the broker, and
every later pass found the journal and the broker apart (trading halted for good; had the
broker filled it, the fill would have been refused as an overfill).

Now ``validate_intent`` refuses a reserved prefix (any letter case) with
``reserved_client_order_id``, nothing journaled or sent; only the reconciler's own submits
pass (``_reconciliation=True``). And a journal written before that (a user's order under an
``orphan-`` id that was sent) is reconciled like any other order: the reconciler completes
only an order it never sent (``is_synthetic``). Real SQLite files, the in-process paper broker.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from orders_helpers import Rig, journal_positions, make_rig, run

import wal.orders.validation as validation
from wal.orders import (
    ClientIdRules,
    DedupScope,
    Fault,
    FaultPlan,
    OrderIntent,
    OrderRejected,
    OrderState,
    PaperBroker,
    ReconcilerConfig,
    RejectReason,
    StartupReconciler,
    validate_intent,
)
from wal.orders.reconcile_model import emergency_stop_id, orphan_order_id
from wal.orders.validation import RESERVED_PREFIXES

FAST = ReconcilerConfig(fetch_timeout=5.0, fetch_backoff=(0.001, 0.002, 0.004))
RULES = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)
TODAY = datetime.now(UTC)

RESERVED = [
    orphan_order_id("AAPL", TODAY),  # the id the reconciler makes for today's first orphan
    orphan_order_id("AAPL", TODAY, 2),
    emergency_stop_id("AAPL", TODAY, 1),
    "close-AAPL-20260101-1",
    "ORPHAN-AAPL",  # any letter case: a broker may not tell them apart
    "Es-1",
    "CLOSE-x",
]


def resting(cid: str, limit: str = "90") -> OrderIntent:
    return OrderIntent(
        symbol="AAPL",
        side="buy",
        quantity=Decimal(10),
        order_type="limit",
        limit_price=Decimal(limit),
        client_order_id=cid,
    )


@pytest.mark.parametrize("cid", RESERVED)
def test_validation_refuses_a_reserved_prefix_except_to_the_reconciler(cid: str) -> None:
    with pytest.raises(OrderRejected) as e:
        validate_intent(resting(cid), RULES)
    assert e.value.reason is RejectReason.RESERVED_CLIENT_ORDER_ID
    assert e.value.field == "client_order_id"
    assert "reserved_client_order_id" in str(e.value)
    validate_intent(resting(cid), RULES, reconciler=True)  # its own orders pass


@pytest.mark.parametrize("cid", ["escrow-1", "orphaned1", "closed-1", "my-es-1", "a-orphan-"])
def test_ids_that_only_look_alike_are_allowed(cid: str) -> None:
    validate_intent(resting(cid), RULES)


def test_the_reserved_prefixes_are_the_reconcilers() -> None:
    assert RESERVED_PREFIXES == ("orphan-", "es-", "close-")
    for made in (orphan_order_id("X", TODAY), emergency_stop_id("X", TODAY, 3)):
        assert made.startswith(RESERVED_PREFIXES)


@pytest.mark.parametrize("cid", RESERVED)
@pytest.mark.parametrize("protective", [False, True], ids=["order", "protective"])
def test_submit_refuses_a_reserved_id_and_nothing_is_journaled_or_sent(
    tmp_path: Path, cid: str, protective: bool
) -> None:
    """Through ``OrderManager.submit``, a protective order too (the CLI's flatten and the
    service's brackets submit protective orders; only the reconciler's pass)."""
    broker = PaperBroker(seed=1, rules=RULES)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        await rig.om.start()
        if protective:  # a position for a protective sell to reduce
            await rig.om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(10)))
        calls = broker.submit_calls
        intent = OrderIntent(
            symbol="AAPL",
            side="sell" if protective else "buy",
            quantity=Decimal(10),
            order_type="limit",
            limit_price=Decimal("90") if not protective else Decimal("120"),
            client_order_id=cid,
        )
        with pytest.raises(OrderRejected) as e:
            await rig.om.submit(intent, protective=protective)
        assert e.value.reason is RejectReason.RESERVED_CLIENT_ORDER_ID
        assert broker.submit_calls == calls  # nothing sent
        assert rig.om.get(cid) is None  # nothing journaled
        assert rig.ddb.storage is not None
        assert rig.ddb.storage.find_by_idempotency_key(cid) is None

    try:
        run(go())
    finally:
        rig.close()


def test_only_protective_orders_may_claim_the_reconcilers_ids(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1, rules=RULES))

    async def go() -> None:
        await rig.om.start()
        with pytest.raises(RuntimeError, match="reconciler"):
            await rig.om.submit(resting("es-x"), _reconciliation=True)

    try:
        run(go())
    finally:
        rig.close()


def restart(rig: Rig, tmp_path: Path) -> Rig:
    rig.close()
    return make_rig(tmp_path, rig.broker)


def test_a_users_order_under_an_orphan_id_is_never_completed_by_the_reconciler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal written before the prefix was refused (validation patched to let it
    through): the user's resting limit ``orphan-AAPL-<today>``, and a position someone else
    opened at the broker. The reconciler journals that orphan under the next id (``-2``),
    and the user's order stays what the broker says it is: accepted, nothing filled.

    Before, it took the user's order for a half-written synthetic one and booked a fill of
    10 to it (the broker: 0 filled), then failed every end check (trading halted)."""
    broker = PaperBroker(seed=7, rules=RULES)
    rig = make_rig(tmp_path, broker)
    cid = orphan_order_id("AAPL", datetime.now(UTC))
    monkeypatch.setattr(validation, "_not_reserved", lambda _cid: None)  # the old validation

    async def first() -> None:
        await rig.om.start()
        assert (await StartupReconciler(rig.om, FAST).run()).changes == 0
        order = await rig.om.submit(resting(cid, limit="99"))
        assert order.state is OrderState.ACCEPTED and order.filled_quantity == 0

    try:
        run(first())
        # someone else buys 5 at the broker: a position the journal does not explain
        broker.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(5)))
        rig = restart(rig, tmp_path)

        async def second() -> None:
            result = await StartupReconciler(rig.om, FAST).run()
            assert not result.errors, result.errors
            assert result.orphans_detected == 1
            mine = rig.om.get(cid)
            assert mine is not None
            assert (mine.state, mine.filled_quantity) == (OrderState.ACCEPTED, 0)
            synthetic = rig.om.get(orphan_order_id("AAPL", datetime.now(UTC), 2))
            assert synthetic is not None
            assert (synthetic.intent.side, synthetic.filled_quantity) == ("buy", 5)
            assert rig.om.positions() == {"AAPL": Decimal(5)}
            # the broker fills the user's order later: booked to it, not an overfill (and
            # the emergency stop the orphan got, 2 % below 100, is not reached)
            broker.set_price("AAPL", Decimal("98.5"))
            filled = await rig.om.refresh(cid)
            assert (filled.state, filled.filled_quantity) == (OrderState.FILLED, 10)
            assert rig.om.positions() == {"AAPL": Decimal(15)}

        run(second())
        assert rig.ddb.drain(10) == 0
        assert journal_positions(rig.ddb) == broker.net_positions() == {"AAPL": Decimal(15)}
    finally:
        rig.close()


def test_a_users_unresolved_order_under_an_orphan_id_is_looked_up_not_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same old journal, the user's ``orphan-`` order without a broker id: its submit
    timed out after the broker accepted and filled it, and no lookup answered (UNKNOWN).
    It was sent (its ``submitted`` event), so the reconciler looks it up and books the
    broker's executions to it, as for any order; no synthetic order, no synthetic fill."""
    plan = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.SERVER_ERROR, times=3)
    )
    broker = PaperBroker(seed=7, rules=RULES, faults=plan)
    rig = make_rig(tmp_path, broker)
    cid = orphan_order_id("AAPL", datetime.now(UTC))
    monkeypatch.setattr(validation, "_not_reserved", lambda _cid: None)  # the old validation

    async def first() -> None:
        await rig.om.start()
        assert (await StartupReconciler(rig.om, FAST).run()).changes == 0
        order = await rig.om.submit(
            OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(10), client_order_id=cid)
        )
        assert (order.state, order.broker_order_id) == (OrderState.UNKNOWN, None)

    try:
        run(first())
        assert broker.net_positions() == {"AAPL": Decimal(10)}
        rig = restart(rig, tmp_path)

        async def second() -> None:
            result = await StartupReconciler(rig.om, FAST).run()
            assert not result.errors, result.errors
            assert result.orphans_detected == 0
            mine = rig.om.get(cid)
            assert mine is not None
            assert (mine.state, mine.filled_quantity) == (OrderState.FILLED, 10)
            assert [f["execution_id"] for f in rig.om.journal.fills()] == ["paper-00000001-1"]
            assert rig.om.positions() == {"AAPL": Decimal(10)}

        run(second())
        assert rig.ddb.drain(10) == 0
        assert journal_positions(rig.ddb) == broker.net_positions() == {"AAPL": Decimal(10)}
    finally:
        rig.close()
