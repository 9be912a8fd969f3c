"""Unit tests of the order state machine, the intent validation and each risk limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from orders_helpers import Rig, make_rig, run

from wal.orders import (
    FINAL_STATES,
    TRANSITIONS,
    ClientIdRules,
    IllegalTransitionError,
    OrderFillsLookup,
    OrderIntent,
    OrderRejected,
    OrderState,
    PaperBroker,
    RejectReason,
    RiskLimits,
    RiskView,
    check_risk,
    check_transition,
    map_status,
    validate_intent,
)
from wal.orders.broker import BrokerOrder
from wal.orders.errors import BrokerProtocolError, BrokerUnavailable
from wal.orders.faults import Fault, FaultPlan
from wal.orders.models import Fill, Order
from wal.orders.validation import CREATED_AT_MAX_AGE, CREATED_AT_MAX_SKEW

S = OrderState


def test_every_state_has_a_row_and_final_states_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(OrderState)
    for s in FINAL_STATES:
        assert TRANSITIONS[s] == frozenset()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (S.PENDING, S.SUBMITTING),
        (S.SUBMITTING, S.UNKNOWN),
        (S.UNKNOWN, S.ACCEPTED),
        (S.ACCEPTED, S.PARTIALLY_FILLED),
        (S.PARTIALLY_FILLED, S.FILLED),
        (S.UNKNOWN, S.SUBMITTING),
        (S.SUBMITTING, S.SUBMIT_FAILED),
    ],
)
def test_legal_transitions(a: OrderState, b: OrderState) -> None:
    check_transition(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (S.FILLED, S.ACCEPTED),
        (S.REJECTED, S.SUBMITTING),
        (S.CANCELLED, S.FILLED),
        (S.ACCEPTED, S.PENDING),
        (S.ACCEPTED, S.UNKNOWN),
        (S.PENDING, S.UNKNOWN),
        (S.SUBMIT_FAILED, S.ACCEPTED),
        (S.PARTIALLY_FILLED, S.ACCEPTED),
    ],
)
def test_illegal_transitions_raise(a: OrderState, b: OrderState) -> None:
    with pytest.raises(IllegalTransitionError, match=f"{a.value} -> {b.value}"):
        check_transition(a, b)


def test_broker_statuses_map_through_one_table_and_an_unknown_one_raises() -> None:
    assert map_status("filled") is S.FILLED
    assert map_status("pending_cancel") is None
    with pytest.raises(BrokerProtocolError, match="held_for_review"):
        map_status("held_for_review")


def test_client_order_ids_fit_every_listed_broker() -> None:
    ids = {
        OrderIntent(symbol="X", side="buy", quantity=Decimal(1)).client_order_id
        for _ in range(1000)
    }
    assert len(ids) == 1000
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)


def intent(**kw: Any) -> OrderIntent:
    base: dict[str, Any] = {"symbol": "AAPL", "side": "buy", "quantity": Decimal("10")}
    base.update(kw)
    return OrderIntent(**base)


@pytest.mark.parametrize(
    ("kw", "reason", "field"),
    [
        ({"quantity": Decimal(0)}, RejectReason.BAD_QUANTITY, "quantity"),
        ({"quantity": Decimal(-1)}, RejectReason.BAD_QUANTITY, "quantity"),
        ({"quantity": 1.5}, RejectReason.BAD_QUANTITY, "quantity"),
        ({"quantity": Decimal("NaN")}, RejectReason.BAD_QUANTITY, "quantity"),
        ({"quantity": Decimal("1e-11")}, RejectReason.BAD_QUANTITY, "quantity"),
        ({"symbol": "aapl"}, RejectReason.BAD_SYMBOL, "symbol"),
        ({"symbol": ""}, RejectReason.BAD_SYMBOL, "symbol"),
        ({"symbol": "A" * 33}, RejectReason.BAD_SYMBOL, "symbol"),
        ({"side": "long"}, RejectReason.BAD_SIDE, "side"),
        ({"order_type": "iceberg"}, RejectReason.BAD_ORDER_TYPE, "order_type"),
        ({"order_type": "limit"}, RejectReason.BAD_PRICE, "limit_price"),
        ({"limit_price": Decimal(5)}, RejectReason.BAD_PRICE, "limit_price"),
        ({"order_type": "limit", "limit_price": Decimal(0)}, RejectReason.BAD_PRICE, "limit_price"),
        ({"order_type": "stop"}, RejectReason.BAD_PRICE, "stop_price"),
        (
            {"order_type": "stop_limit", "stop_price": Decimal(1)},
            RejectReason.BAD_PRICE,
            "limit_price",
        ),
        ({"client_order_id": "x" * 37}, RejectReason.BAD_CLIENT_ORDER_ID, "client_order_id"),
        ({"client_order_id": "a b"}, RejectReason.BAD_CLIENT_ORDER_ID, "client_order_id"),
        # "$" matched before a trailing newline: "AAPL\n" was journaled and sent
        ({"symbol": "AAPL\n"}, RejectReason.BAD_SYMBOL, "symbol"),
        ({"client_order_id": "abc\n"}, RejectReason.BAD_CLIENT_ORDER_ID, "client_order_id"),
        ({"time_in_force": "bogus"}, RejectReason.BAD_TIME_IN_FORCE, "time_in_force"),
        ({"time_in_force": "GTC"}, RejectReason.BAD_TIME_IN_FORCE, "time_in_force"),
        ({"time_in_force": None}, RejectReason.BAD_TIME_IN_FORCE, "time_in_force"),
        ({"account": None}, RejectReason.BAD_ACCOUNT, "account"),
        ({"account": 7}, RejectReason.BAD_ACCOUNT, "account"),
        ({"account": ""}, RejectReason.BAD_ACCOUNT, "account"),
        ({"account": "x" * 65}, RejectReason.BAD_ACCOUNT, "account"),
        ({"account": "acct\n"}, RejectReason.BAD_ACCOUNT, "account"),
        ({"created_at": datetime(2026, 1, 1)}, RejectReason.BAD_CREATED_AT, "created_at"),
        ({"created_at": "2026-01-01"}, RejectReason.BAD_CREATED_AT, "created_at"),
        (
            {"created_at": datetime.now(UTC) + timedelta(days=30)},
            RejectReason.BAD_CREATED_AT,
            "created_at",
        ),
        (
            {"created_at": datetime.now(UTC) - timedelta(days=2)},
            RejectReason.BAD_CREATED_AT,
            "created_at",
        ),
        (
            {"created_at": datetime.min.replace(tzinfo=UTC)},
            RejectReason.BAD_CREATED_AT,
            "created_at",
        ),
    ],
)
def test_each_bad_intent_has_its_reason(
    kw: dict[str, Any], reason: RejectReason, field: str
) -> None:
    with pytest.raises(OrderRejected) as e:
        validate_intent(intent(**kw), ClientIdRules())
    assert e.value.reason is reason
    assert e.value.field == field
    assert reason.value in str(e.value)


def test_created_at_bounds_and_zones() -> None:
    """A minute of clock skew ahead, a day back; an aware time in another zone is the same
    instant, kept in UTC (as the journal gives it back)."""
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    for ok in (now, now + CREATED_AT_MAX_SKEW, now - CREATED_AT_MAX_AGE):
        validate_intent(intent(created_at=ok), ClientIdRules(), now=now)
    for bad in (
        now + CREATED_AT_MAX_SKEW + timedelta(microseconds=1),
        now - CREATED_AT_MAX_AGE - timedelta(microseconds=1),
    ):
        with pytest.raises(OrderRejected) as e:
            validate_intent(intent(created_at=bad), ClientIdRules(), now=now)
        assert (e.value.reason, e.value.field) == (RejectReason.BAD_CREATED_AT, "created_at")
    new_york = timezone(timedelta(hours=-4))
    i = intent(created_at=now.astimezone(new_york))
    assert i.created_at == now and i.created_at.tzinfo is UTC
    validate_intent(i, ClientIdRules(), now=now)
    for tif in ("day", "gtc", "ioc", "fok"):
        validate_intent(intent(time_in_force=tif, created_at=now), ClientIdRules(), now=now)


def test_times_read_back_without_a_zone_are_utc() -> None:
    """An intent journaled naive before created_at was checked, and a broker's order time
    without a zone, are compared with aware times (the fill fetch, the reconciler): UTC."""
    row = {
        "client_order_id": "c1",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "1",
        "order_type": "market",
        "state": "accepted",
        "created_at": datetime(2026, 1, 2, 3, 4, 5),
    }
    assert Order.from_row(row).intent.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    bo = BrokerOrder.from_dict(
        {
            "id": "b1",
            "client_order_id": "c1",
            "symbol": "AAPL",
            "side": "buy",
            "qty": "1",
            "type": "market",
            "status": "new",
            "created_at": "2026-01-02T03:04:05",
        }
    )
    assert bo.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def assert_nothing_journaled_or_sent(rig: Rig, broker: PaperBroker) -> None:
    """No broker call, no open order, no order entry in the log, no order row."""
    assert broker.submit_calls == 0
    assert rig.om.open_orders() == []
    assert rig.ddb.storage is not None
    assert [
        e for e in rig.ddb.storage.iter_entries() if e.operation.startswith("record_order")
    ] == []
    assert rig.ddb.db.get_order_rows() == []


BAD_SUBMITS: list[dict[str, Any]] = [
    {"symbol": "AAPL\n"},
    {"time_in_force": "bogus"},
    {"time_in_force": None},
    {"account": None},
    {"account": 7},
    {"side": "sell", "account": 7},
    {"created_at": datetime.now()},  # naive: local time
    {"created_at": datetime.now(UTC) + timedelta(days=30)},
]


@pytest.mark.parametrize("kw", BAD_SUBMITS)
def test_a_bad_submit_is_one_order_rejected_and_nothing_is_journaled_or_sent(
    tmp_path: Any, kw: dict[str, Any]
) -> None:
    """Each of these was journaled and sent ("AAPL\n", time_in_force "bogus", a created_at
    that then kept its fills from being booked), or raised WALArgumentError (None, 7), or
    was called insufficient_balance (an int account on a buy)."""
    broker = PaperBroker(seed=1)
    rig = make_rig(tmp_path, broker)
    field = next(k for k in kw if k != "side")

    async def go() -> None:
        await rig.om.start()
        with pytest.raises(OrderRejected) as e:
            await rig.om.submit(intent(**kw))
        assert e.value.field == field
        assert e.value.reason.value == f"bad_{field}"

    try:
        run(go())
        assert_nothing_journaled_or_sent(rig, broker)
    finally:
        rig.close()


def view(**kw: Any) -> RiskView:
    base: dict[str, Any] = {
        "price": Decimal(100),
        "balance": Decimal(10_000),
        "reserved": Decimal(0),
        "position": Decimal(0),
        "daily_pnl": Decimal(0),
    }
    base.update(kw)
    return RiskView(**base)


@pytest.mark.parametrize(
    ("limits", "v", "reason"),
    [
        (RiskLimits(max_position=Decimal(5)), view(), RejectReason.MAX_POSITION),
        (
            RiskLimits(max_position=Decimal(15)),
            view(position=Decimal(6)),
            RejectReason.MAX_POSITION,
        ),
        (RiskLimits(max_order_notional=Decimal(999)), view(), RejectReason.MAX_NOTIONAL),
        (
            RiskLimits(max_daily_loss=Decimal(50)),
            view(daily_pnl=Decimal(-50)),
            RejectReason.DAILY_LOSS,
        ),
        (RiskLimits(), view(balance=Decimal(999)), RejectReason.INSUFFICIENT_BALANCE),
        (RiskLimits(), view(reserved=Decimal(9500)), RejectReason.INSUFFICIENT_BALANCE),
        (RiskLimits(), view(balance=None), RejectReason.INSUFFICIENT_BALANCE),
        (RiskLimits(), view(price=None), RejectReason.NO_PRICE),
    ],
)
def test_each_risk_limit_has_its_reason(
    limits: RiskLimits, v: RiskView, reason: RejectReason
) -> None:
    with pytest.raises(OrderRejected) as e:
        check_risk(intent(), limits, v)
    assert e.value.reason is reason


def test_within_every_limit_passes() -> None:
    limits = RiskLimits(
        max_position=Decimal(10), max_order_notional=Decimal(1000), max_daily_loss=Decimal(50)
    )
    check_risk(intent(), limits, view(daily_pnl=Decimal(-49)))
    check_risk(intent(side="sell"), RiskLimits(), view(balance=None, price=None))


def test_a_rejected_submit_journals_and_sends_nothing(tmp_path: Any) -> None:
    broker = PaperBroker(seed=1)
    rig = make_rig(tmp_path, broker, risk=RiskLimits(max_order_notional=Decimal(100)))

    async def go() -> None:
        await rig.om.start()
        with pytest.raises(OrderRejected) as e:
            await rig.om.submit(intent())
        assert e.value.reason is RejectReason.MAX_NOTIONAL
        with pytest.raises(OrderRejected):
            await rig.om.submit(intent(quantity=Decimal(0)))

    try:
        run(go())
        assert_nothing_journaled_or_sent(rig, broker)
    finally:
        rig.close()


def test_paper_fills_since_are_exact_when_the_clock_stepped_back(tmp_path: Any) -> None:
    """The paper broker answers ``get_fills(since)`` from a time index (not a scan of every
    fill): exactly the fills at or after ``since``, in execution order, also when the wall
    clock stepped back between two fills (here: a state file whose times go back)."""
    path = tmp_path / "paper.json"
    broker = PaperBroker(seed=1, state_path=path)
    for i in range(6):
        broker.submit(intent(quantity=Decimal(1), client_order_id=f"c{i}"))
    state = PaperBroker.read_state(path)
    assert state is not None
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    minutes = [5, 1, 4, 2, 6, 3]  # the clock stepped back between fills
    for f, m in zip(state["fills"], minutes, strict=True):
        f["executed_at"] = (t0 + timedelta(minutes=m)).isoformat()
    path.write_bytes(orjson.dumps(state))  # the whole state: every change folded in
    (tmp_path / "paper.json.changes").unlink()
    loaded = PaperBroker(seed=1, state_path=path)
    every = loaded.all_fills()
    assert len(every) == 6
    for since_m in range(0, 8):
        since = t0 + timedelta(minutes=since_m)
        assert loaded.fills(since) == [f for f in every if f.executed_at >= since]
    assert loaded.fills(None) == every
    # the next execution numbers its order's fills after the loaded ones
    loaded.submit(intent(quantity=Decimal(1), client_order_id="c-next"))
    assert loaded.all_fills()[-1].execution_id.endswith("-1")


def test_paper_fills_of_one_order_are_its_fills_since(tmp_path: Any) -> None:
    """``get_order_fills(cid, since)`` is exactly ``get_fills(since)`` of that order, from an
    index by client id (also after a reload from the state file), and the fault plan's
    ``get_fills`` faults apply to it too."""
    path = tmp_path / "paper.json"
    broker = PaperBroker(seed=1, state_path=path)
    for i in range(8):
        broker.submit(intent(quantity=Decimal(3), client_order_id=f"c{i % 3}-{i}"))
    loaded = PaperBroker(seed=1, state_path=path)
    for b in (broker, loaded):
        every = b.all_fills()
        assert len(every) >= 8
        cids = {f.client_order_id for f in every} | {"never-sent"}
        for since in (None, every[0].executed_at, every[len(every) // 2].executed_at):
            for cid in cids:
                mine = [f for f in b.fills(since) if f.client_order_id == cid]
                assert b.fills_of(cid, since) == mine
                assert run(b.get_order_fills(cid, since)) == mine
    loaded.faults = FaultPlan().on("get_fills", Fault.FETCH_FAILURE)
    with pytest.raises(BrokerUnavailable):
        run(loaded.get_order_fills("c0-0"))


class _CountingPaper(PaperBroker):
    """The paper broker, counting its fill queries (the engine side, not the async face)."""

    def __init__(self) -> None:
        super().__init__(seed=1)
        self.all_queries = 0
        self.order_queries = 0

    def fills(self, since: datetime | None = None) -> list[Fill]:
        self.all_queries += 1
        return super().fills(since)

    def fills_of(self, client_order_id: str, since: datetime | None = None) -> list[Fill]:
        self.order_queries += 1
        return super().fills_of(client_order_id, since)


class _FillsByTimeOnly(_CountingPaper):
    """A broker that cannot list one order's fills: only ``Broker.get_fills(since)``."""

    get_order_fills = None  # type: ignore[assignment]


@pytest.mark.parametrize("broker_cls", [_CountingPaper, _FillsByTimeOnly])
def test_a_submit_books_its_fills_from_its_own_order_not_every_recent_fill(
    tmp_path: Any, broker_cls: type[_CountingPaper]
) -> None:
    """Each submit used to ask for every fill of the last minute (``get_fills(since)``): at a
    steady order rate, every fill of that minute on every submit. A broker that can list one
    order's fills (``OrderFillsLookup``) is asked for the order's own; one that cannot still
    gets ``get_fills`` and every fill is booked either way."""
    broker = broker_cls()
    rig = make_rig(tmp_path, broker, risk=RiskLimits(check_balance=False))

    async def go() -> list[Any]:
        await rig.om.start()
        before = (broker.all_queries, broker.order_queries)
        placed = [
            await rig.om.submit(intent(quantity=Decimal(2), client_order_id=f"own-{i}"))
            for i in range(12)
        ]
        return [before, placed]

    try:
        (all_before, one_before), placed = run(go())
        per_order = broker.order_queries - one_before
        by_time = broker.all_queries - all_before
        if broker_cls is _CountingPaper:
            assert isinstance(broker, OrderFillsLookup)
            assert by_time == 0 and per_order >= len(placed)
        else:
            assert not isinstance(broker, OrderFillsLookup)
            assert per_order == 0 and by_time >= len(placed)
        for o in placed:  # every execution booked, each once
            assert o.state is S.FILLED and o.filled_quantity == Decimal(2)
            booked = rig.om.journal.fills(client_order_id=o.client_order_id)
            at_broker = [f for f in broker.all_fills() if f.client_order_id == o.client_order_id]
            assert sorted(str(f["execution_id"]) for f in booked) == sorted(
                f.execution_id for f in at_broker
            )
    finally:
        rig.close()


def test_a_paper_double_that_shapes_get_fills_shapes_one_orders_fills_too() -> None:
    """A subclass that overrides ``get_fills`` (a test double: lag, pages, hidden fills) sees
    ``get_order_fills`` answered from that same view, not around it."""

    class Hiding(PaperBroker):
        async def get_fills(self, since: datetime | None = None) -> list[Fill]:
            return [f for f in self.fills(since) if not f.client_order_id.startswith("hid")]

    b = Hiding(seed=1)
    b.submit(intent(quantity=Decimal(1), client_order_id="hidden-1"))
    b.submit(intent(quantity=Decimal(1), client_order_id="shown-1"))
    assert run(b.get_order_fills("hidden-1")) == []
    assert [f.client_order_id for f in run(b.get_order_fills("shown-1"))] == ["shown-1"]
    # the same for a patch of one instance's get_fills
    p = PaperBroker(seed=1)
    p.submit(intent(quantity=Decimal(1), client_order_id="lagging-1"))

    async def nothing_yet(since: datetime | None = None) -> list[Fill]:
        return []

    p.get_fills = nothing_yet  # type: ignore[method-assign]
    assert run(p.get_order_fills("lagging-1")) == []
