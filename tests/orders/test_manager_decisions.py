"""The ``OrderManager``'s decisions under a hostile broker (issue 19, the manager's side).

Each test drives the in-process ``PaperBroker`` with a ``FaultPlan`` (a reply dropped after the
broker acted, lookups that lag or fail, partial fills, fill fetches that fail) and asserts what
the manager *decided*: which state the journal holds, which broker calls it made, what it
reports. Lookups with visibility rules use a **non-zero** window, so a start-up that ignores it
(or measures it from the wrong moment) is caught. Real parts: a log directory, SQLite (and
PostgreSQL where ``db_url`` is used), the paper broker (in process, and as its own HTTP
process for the cancel whose reply times out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from orders_helpers import FAST_RETRY, buy, journal_positions, make_rig, open_ddb, run
from paper_process import PaperProcess

from wal import DurableDatabaseManager, WALEntryStatus
from wal.entry import utc_now
from wal.orders import (
    DUPLICATE_ANSWER,
    ClientIdRules,
    DedupScope,
    EventKind,
    Fault,
    FaultPlan,
    OrderEvent,
    OrderIntent,
    OrderJournal,
    OrderManager,
    OrderRejected,
    OrderState,
    PaperBroker,
    RejectReason,
    RetryPolicy,
    RiskLimits,
)
from wal.orders.http_broker import HttpBroker

S = OrderState
WINDOW = 1.0  # seconds: a real (small) visibility window; every wait in here is bounded by it
LAGGING = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY, visibility_window_seconds=WINDOW)
GLOBAL = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)
OPEN_ONLY = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY, visibility_window_seconds=0)
NO_RETRY = RetryPolicy(max_attempts=0, base_delay=0, call_timeout=5.0)


def kinds(ddb: DurableDatabaseManager, cid: str) -> list[str]:
    return [str(e["kind"]) for e in OrderJournal(ddb).events(cid)]


def fills_of(ddb: DurableDatabaseManager, cid: str) -> list[tuple[str, Decimal]]:
    return [
        (str(r["execution_id"]), Decimal(str(r["quantity"])))
        for r in OrderJournal(ddb).fills(client_order_id=cid)
    ]


@dataclass
class Engine:
    """One process on a log + database: ``restart()`` is the next process on the same files."""

    tmp: Path
    broker: PaperBroker
    url: str
    retry: RetryPolicy = FAST_RETRY
    risk: RiskLimits | None = None
    deposit: Decimal = Decimal("1000000")

    def __post_init__(self) -> None:
        rig = make_rig(self.tmp, self.broker, url=self.url, risk=self.risk, deposit=self.deposit)
        self.ddb = rig.ddb
        self.om = self._manager()

    def _manager(self) -> OrderManager:
        return OrderManager(
            self.ddb,
            self.broker,
            risk=self.risk,
            retry=self.retry,
            price_source=self.broker.price,
        )

    def restart(self, retry: RetryPolicy = FAST_RETRY) -> OrderManager:
        self.close()
        self.retry = retry
        self.ddb = open_ddb(self.tmp / "wal", self.url)
        self.om = self._manager()
        return self.om

    def close(self) -> None:
        self.ddb.stop()
        self.ddb.db.dispose()


def engine(tmp_path: Path, broker: PaperBroker, url: str | None = None, **kw: object) -> Engine:
    return Engine(tmp_path, broker, url or f"sqlite:///{tmp_path / 'atb.db'}", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- item 1


def test_a_fill_behind_a_cancel_is_booked_to_its_order_before_it_is_cancelled(
    db_url: str, tmp_path: Path
) -> None:
    """Issue 19 item 1: 3 of 10 filled, the fill fetch fails, the order is cancelled. The
    fetch is retried and the execution booked to this order; only then CANCELLED."""
    plan = FaultPlan(partial_fills=(Decimal("0.3"), Decimal("0.7"))).on(
        "get_fills", Fault.FETCH_FAILURE
    )
    broker = PaperBroker(seed=21, rules=GLOBAL, faults=plan, auto_fill=False)
    eng = engine(tmp_path, broker, db_url)

    async def go() -> None:
        om = eng.om
        await om.start()
        order = await om.submit(buy("10"))
        cid = order.client_order_id
        assert order.state is S.ACCEPTED
        assert broker.advance() == 1  # 3 executed at the broker; the journal has not heard
        order = await om.cancel(cid)
        assert order.state is S.CANCELLED
        assert order.filled_quantity == Decimal("3")
        assert plan.calls("get_fills") == 2  # the failed fetch was retried
        assert fills_of(eng.ddb, cid) == [(f.execution_id, f.quantity) for f in broker.fills()]
        assert kinds(eng.ddb, cid)[-3:] == ["cancel_requested", "fill", "cancelled"]
        assert om.unsettled() == {}
        assert journal_positions(eng.ddb) == broker.net_positions() == {"AAPL": Decimal("3")}

    try:
        run(go())
    finally:
        eng.close()


def test_an_order_whose_fills_cannot_be_fetched_never_reaches_a_final_state(
    tmp_path: Path,
) -> None:
    """Every fetch fails: the broker says CANCELLED with 3 filled, the journal has 0 booked.
    The order stays open (PARTIALLY_FILLED / ACCEPTED), listed by ``unsettled()``; a later
    poll books the execution to it and only then is it CANCELLED."""
    plan = FaultPlan(partial_fills=(Decimal("0.3"), Decimal("0.7"))).on(
        "get_fills", Fault.FETCH_FAILURE, times=FAST_RETRY.max_attempts
    )
    broker = PaperBroker(seed=22, rules=GLOBAL, faults=plan, auto_fill=False)
    eng = engine(tmp_path, broker)

    async def go() -> None:
        om = eng.om
        await om.start()
        cid = (await om.submit(buy("10"))).client_order_id
        broker.advance()
        order = await om.cancel(cid)
        assert order.state is S.ACCEPTED  # not final: its fills are not all booked
        assert plan.calls("get_fills") == FAST_RETRY.max_attempts
        assert cid in om.unsettled() and "canceled with 3" in om.unsettled()[cid]
        assert "cancelled" not in kinds(eng.ddb, cid)
        assert [o.client_order_id for o in om.open_orders()] == [cid]
        # the fetch works again: the fill is booked to this order, then the broker's state
        assert await om.poll_fills() == 1
        order = om.get(cid)  # type: ignore[assignment]
        assert (order.state, order.filled_quantity) == (S.CANCELLED, Decimal("3"))
        assert kinds(eng.ddb, cid)[-2:] == ["fill", "cancelled"]
        assert om.unsettled() == {}
        assert journal_positions(eng.ddb) == broker.net_positions()

    try:
        run(go())
    finally:
        eng.close()


def test_an_unsettled_order_is_settled_by_the_next_start(tmp_path: Path) -> None:
    plan = FaultPlan(partial_fills=(Decimal("0.5"), Decimal("0.5"))).on(
        "get_fills", Fault.FETCH_FAILURE, times=FAST_RETRY.max_attempts
    )
    broker = PaperBroker(seed=23, rules=GLOBAL, faults=plan, auto_fill=False)
    eng = engine(tmp_path, broker)

    async def first() -> str:
        await eng.om.start()
        cid = (await eng.om.submit(buy("4"))).client_order_id
        broker.advance()
        assert (await eng.om.cancel(cid)).state is S.ACCEPTED
        return cid

    try:
        cid = run(first())
        om = eng.restart()
        result = run(om.start())
        order = om.get(cid)
        assert order is not None
        assert (order.state, order.filled_quantity) == (S.CANCELLED, Decimal("2"))
        assert result.fills_journaled == 1 and result.unsettled == 0
        assert journal_positions(eng.ddb) == broker.net_positions() == {"AAPL": Decimal("2")}
    finally:
        eng.close()


def test_an_execution_of_an_order_the_journal_holds_final_is_booked_to_it(
    tmp_path: Path,
) -> None:
    """A journal that says CANCELLED with 0 filled (what the old code wrote) gets the broker's
    execution of that order: it is booked to it (never an orphan), the order reopened
    (``forced``) and then set to the broker's state."""
    broker = PaperBroker(seed=24, rules=GLOBAL, auto_fill=False)
    eng = engine(tmp_path, broker)

    async def go() -> None:
        om = eng.om
        await om.start()
        cid = (await om.submit(buy("4"))).client_order_id
        broker.advance()  # filled at the broker
        await om.force_state(cid, S.CANCELLED, reason="a wrong final state", _reconciliation=True)
        [execution] = broker.fills()
        order = await om.on_fill(execution)
        assert (order.state, order.filled_quantity) == (S.FILLED, Decimal("4"))
        assert kinds(eng.ddb, cid)[-3:] == ["forced", "forced", "fill"]
        assert journal_positions(eng.ddb) == broker.net_positions()

    try:
        run(go())
    finally:
        eng.close()


@pytest.mark.parametrize("filled", [False, True], ids=["live", "filled"])
def test_start_takes_back_an_order_journaled_submit_failed_that_the_broker_holds(
    tmp_path: Path, filled: bool
) -> None:
    """Broker evidence wins over a final journal state: an order an earlier run made
    SUBMIT_FAILED (the broker did not show it) that the broker holds live (or filled) is
    looked up by the next start(): ``forced`` back open, its fills booked."""
    broker = PaperBroker(seed=25, rules=GLOBAL, auto_fill=False)
    eng = engine(tmp_path, broker)

    async def go() -> str:
        om = eng.om
        await om.start()
        cid = (await om.submit(buy("4"))).client_order_id
        await om.force_state(
            cid, S.SUBMIT_FAILED, reason="not at the broker (lagging)", _reconciliation=True
        )
        if filled:
            broker.advance()
        return cid

    try:
        cid = run(go())
        om = eng.restart()
        result = run(om.start())
        assert result.adopted == 1
        order = om.get(cid)
        assert order is not None
        want = (S.FILLED, Decimal("4")) if filled else (S.ACCEPTED, Decimal("0"))
        assert (order.state, order.filled_quantity) == want
        assert kinds(eng.ddb, cid)[4] == EventKind.FORCED.value  # submit_failed -> reopened
        assert journal_positions(eng.ddb) == broker.net_positions()
    finally:
        eng.close()


def test_poll_fills_books_an_execution_of_an_order_journaled_submit_failed(
    tmp_path: Path,
) -> None:
    """The order fills at the broker after this run made it SUBMIT_FAILED: the next poll
    books the execution to it (reopened), never leaves it to become an orphan."""
    broker = PaperBroker(seed=40, rules=OPEN_ONLY, auto_fill=False)
    plan = FaultPlan().on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
    broker.faults = plan
    eng = engine(tmp_path, broker, retry=NO_RETRY)
    try:
        cid = _unknown_in_a_first_run(eng, buy("2"))
        plan.on("get_order_by_client_id", Fault.NOT_FOUND, times=FAST_RETRY.max_attempts)
        om = eng.restart()
        assert run(om.start()).submit_failed == 1  # window 0: three "not found" are final
        broker.advance()  # ... but the broker had it, and it fills

        async def poll() -> None:
            assert await om.poll_fills() == 1

        run(poll())
        order = om.get(cid)
        assert order is not None
        assert (order.state, order.filled_quantity) == (S.FILLED, Decimal("2"))
        assert journal_positions(eng.ddb) == broker.net_positions() == {"AAPL": Decimal("2")}
    finally:
        eng.close()


def test_a_lookup_corrects_a_final_journal_state_the_broker_contradicts(tmp_path: Path) -> None:
    broker = PaperBroker(seed=41, rules=GLOBAL, auto_fill=False)
    eng = engine(tmp_path, broker)

    async def go() -> None:
        om = eng.om
        await om.start()
        cid = (await om.submit(buy("4"))).client_order_id
        await om.force_state(cid, S.CANCELLED, reason="wrong", _reconciliation=True)
        order = await om.refresh(cid)
        assert order.state is S.ACCEPTED  # live at the broker: the broker's word wins
        assert kinds(eng.ddb, cid)[-2:] == ["forced", "forced"]

    try:
        run(go())
    finally:
        eng.close()


# ---------------------------------------------------------------------------- one write


def journal_writes(ddb: DurableDatabaseManager) -> list[list[str]]:
    """Record each ``journal_orders`` call (one group commit) as its entries' kinds: a
    spy that writes through to the real log, so the journal is what it always is."""
    writes: list[list[str]] = []
    real = ddb.journal_orders

    def spy(calls: Any) -> Any:
        calls = list(calls)
        writes.append([str(kw.get("kind", op)) for op, kw, _ in calls])
        return real(calls)

    ddb.journal_orders = spy  # type: ignore[method-assign]
    return writes


@pytest.mark.parametrize("rules", [GLOBAL, OPEN_ONLY], ids=["global", "open_only"])
def test_an_order_filled_at_once_is_acknowledged_and_filled_in_one_write(
    db_url: str, tmp_path: Path, rules: ClientIdRules
) -> None:
    """A market order that fills at once: its acknowledgement and its fill are ONE group
    commit (two writes for the whole order: the intent with SUBMITTED, then ACCEPTED with
    the fill), so no crash leaves it acknowledged without the fill it came with; the
    events keep their order and seqs, and the books follow the fill."""
    broker = PaperBroker(seed=31, rules=rules)
    eng = engine(tmp_path, broker, db_url)

    async def go() -> str:
        om = eng.om
        await om.start()
        stream = om.events()
        first = asyncio.ensure_future(anext(stream))  # subscribed once it runs
        writes = journal_writes(eng.ddb)
        await asyncio.wait([first], timeout=0)  # lets it run (nothing published yet)
        order = await om.submit(buy("3"))
        assert (order.state, order.filled_quantity) == (S.FILLED, Decimal("3"))
        assert writes == [["record_order_intent", "submitted"], ["accepted", "fill"]]
        published = [await first] + [await anext(stream) for _ in range(3)]
        # published in seq order, the acknowledgement before its fill
        assert [(e.kind.value, e.seq) for e in published] == [
            ("created", 1),
            ("submitted", 2),
            ("accepted", 3),
            ("fill", 4),
        ]
        return order.client_order_id

    try:
        cid = run(go())
        assert kinds(eng.ddb, cid) == ["created", "submitted", "accepted", "fill"]
        assert journal_positions(eng.ddb) == broker.net_positions() == {"AAPL": Decimal("3")}
    finally:
        eng.close()


def test_an_acknowledgement_whose_fill_cannot_be_fetched_is_journaled_alone(
    tmp_path: Path,
) -> None:
    """The first fetch of the fills fails: ACCEPTED is journaled alone at once (the order
    is known live), and the fill follows in its own write when the retried fetch works."""
    plan = FaultPlan().on("get_fills", Fault.FETCH_FAILURE, times=1)
    broker = PaperBroker(seed=32, rules=GLOBAL, faults=plan)
    eng = engine(tmp_path, broker)

    async def go() -> str:
        await eng.om.start()
        writes = journal_writes(eng.ddb)
        order = await eng.om.submit(buy("2"))
        assert order.state is S.FILLED and plan.calls("get_fills") == 2
        assert writes == [["record_order_intent", "submitted"], ["accepted"], ["fill"]]
        return order.client_order_id

    try:
        cid = run(go())
        assert kinds(eng.ddb, cid) == ["created", "submitted", "accepted", "fill"]
        assert journal_positions(eng.ddb) == broker.net_positions() == {"AAPL": Decimal("2")}
    finally:
        eng.close()


# ---------------------------------------------------------------------------- item 2: start()


def _unknown_in_a_first_run(eng: Engine, intent: OrderIntent) -> str:
    """The first process sends ``intent``, gets no answer and ends with it UNKNOWN (no
    lookups in that run: ``max_attempts=0``)."""

    async def first() -> str:
        await eng.om.start()
        order = await eng.om.submit(intent)
        assert order.state is S.UNKNOWN
        return order.client_order_id

    return run(first())


def test_start_waits_the_visibility_window_before_submit_failed(tmp_path: Path) -> None:
    """Accepted, the reply lost; at start the broker does not show it for three lookups
    (visibility lag, window 1 s). Those answers come before the window has passed since the
    last send: they decide nothing. The lookup after the window finds it: adopted."""
    plan = FaultPlan().on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
    broker = PaperBroker(seed=26, rules=LAGGING, faults=plan)
    eng = engine(tmp_path, broker, retry=NO_RETRY)
    try:
        cid = _unknown_in_a_first_run(eng, buy("2"))
        plan.on("get_order_by_client_id", Fault.NOT_FOUND, times=FAST_RETRY.max_attempts)
        om = eng.restart()
        result = run(om.start())
        assert (result.adopted, result.submit_failed) == (1, 0)
        assert om.get(cid).state is S.FILLED  # type: ignore[union-attr]
        assert plan.calls("get_order_by_client_id") == FAST_RETRY.max_attempts + 1
        assert "submit_failed" not in kinds(eng.ddb, cid)
    finally:
        eng.close()


def test_the_window_is_measured_from_the_last_send_not_the_first(tmp_path: Path) -> None:
    """The first send an hour ago timed out; the resend just now reached the broker. Lookups
    lag. Measured from the first send the window is long over and the order would be
    SUBMIT_FAILED while the broker holds it; from the last send, start() waits and finds it."""
    plan = FaultPlan()
    broker = PaperBroker(seed=27, rules=LAGGING, faults=plan, auto_fill=False)
    eng = engine(tmp_path, broker)
    try:
        an_hour_ago = utc_now() - timedelta(hours=1)
        intent = buy("2", created_at=an_hour_ago)
        cid = intent.client_order_id
        j = OrderJournal(eng.ddb)
        j.record_submission(
            intent, OrderEvent(cid, 2, EventKind.SUBMITTED, S.SUBMITTING, an_hour_ago)
        )
        j.record_event(
            OrderEvent(cid, 3, EventKind.UNKNOWN, S.UNKNOWN, an_hour_ago + timedelta(seconds=10)),
            "timed out",
        )
        j.record_event(OrderEvent(cid, 4, EventKind.SUBMITTED, S.SUBMITTING, utc_now()))
        broker.submit(intent)  # the resend arrived; then the process died
        plan.on("get_order_by_client_id", Fault.NOT_FOUND, times=FAST_RETRY.max_attempts)
        om = eng.restart()
        result = run(om.start())
        assert (result.adopted, result.submit_failed) == (1, 0)
        assert om.get(cid).state is S.ACCEPTED  # type: ignore[union-attr]
        assert "submit_failed" not in kinds(eng.ddb, cid)
    finally:
        eng.close()


def test_after_the_window_definite_not_found_answers_make_submit_failed(tmp_path: Path) -> None:
    """The other side of the rule: a request the broker never saw ends SUBMIT_FAILED once
    ``max_attempts`` lookups asked after the window say "not found"."""
    plan = FaultPlan().on("submit_order", Fault.TIMEOUT_BEFORE_ACCEPT)
    broker = PaperBroker(seed=28, rules=LAGGING, faults=plan)
    eng = engine(tmp_path, broker, retry=NO_RETRY)
    try:
        cid = _unknown_in_a_first_run(eng, buy("2"))
        om = eng.restart()
        result = run(om.start())
        assert (result.submit_failed, result.unknown) == (1, 0)
        assert om.get(cid).state is S.SUBMIT_FAILED  # type: ignore[union-attr]
        assert broker.all_orders() == []
        assert plan.calls("get_order_by_client_id") > FAST_RETRY.max_attempts  # waited, asked
    finally:
        eng.close()


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.FETCH_FAILURE])
@pytest.mark.parametrize("window", [0.0, WINDOW], ids=["window0", "window1"])
def test_a_failed_lookup_at_start_is_never_taken_for_not_found(
    tmp_path: Path, fault: Fault, window: float
) -> None:
    """Every start-up lookup fails (5xx): the order is not at the broker, but nobody knows
    that. It stays UNKNOWN for reconciliation, never SUBMIT_FAILED."""
    plan = FaultPlan().on("submit_order", Fault.TIMEOUT_BEFORE_ACCEPT)
    rules = ClientIdRules(dedup_scope=DedupScope.OPEN_ONLY, visibility_window_seconds=window)
    broker = PaperBroker(seed=29, rules=rules, faults=plan)
    eng = engine(tmp_path, broker, retry=NO_RETRY)
    try:
        cid = _unknown_in_a_first_run(eng, buy("2"))
        plan.on("get_order_by_client_id", fault, times=100)
        om = eng.restart()
        result = run(om.start())
        assert (result.submit_failed, result.unknown) == (0, 1)
        assert om.get(cid).state is S.UNKNOWN  # type: ignore[union-attr]
        assert "submit_failed" not in kinds(eng.ddb, cid)
    finally:
        eng.close()


def test_a_failed_lookup_of_a_pending_order_is_not_not_found(tmp_path: Path) -> None:
    broker = PaperBroker(seed=30, rules=OPEN_ONLY)
    eng = engine(tmp_path, broker)
    try:
        intent = buy("1")
        OrderJournal(eng.ddb).record_intent(intent)  # the process stopped right after this
        broker.faults.on("get_order_by_client_id", Fault.SERVER_ERROR, times=100)
        om = eng.restart()
        result = run(om.start())
        assert (result.submit_failed, result.unknown) == (0, 1)
        assert om.get(intent.client_order_id).state is S.PENDING  # type: ignore[union-attr]
    finally:
        eng.close()


@pytest.mark.parametrize("how", ["first_answer", "resend_answer"])
def test_retries_exhausted_after_a_duplicate_answer_never_end_final(
    tmp_path: Path, how: str
) -> None:
    """ "Duplicate client id" proves the order exists. Lookups that never show it (lag) use up
    the retries: the order stays UNKNOWN, in this run and after a restart whose lookups lag
    too (never SUBMIT_FAILED, whatever the window); once it shows it is adopted."""
    if how == "first_answer":
        plan = FaultPlan().on("submit_order", Fault.DUPLICATE_ID)
        rules = OPEN_ONLY
    else:  # accepted, reply lost; not found; the resend is answered "duplicate"
        plan = FaultPlan().on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        rules = GLOBAL
    plan.on("get_order_by_client_id", Fault.NOT_FOUND, times=100)
    broker = PaperBroker(seed=31, rules=rules, faults=plan)
    eng = engine(tmp_path, broker)
    try:
        order = run(_submit_started(eng.om, buy("2")))
        cid = order.client_order_id
        assert order.state is S.UNKNOWN
        assert len(broker.orders_with_client_id(cid)) == 1
        assert broker.submitted_client_ids == [cid] * (1 if how == "first_answer" else 2)
        assert DUPLICATE_ANSWER in [e["detail"] for e in OrderJournal(eng.ddb).events(cid)]
        om = eng.restart()
        result = run(om.start())
        assert (result.submit_failed, result.unknown) == (0, 1)
        assert om.get(cid).state is S.UNKNOWN  # type: ignore[union-attr]
        broker.faults = FaultPlan()
        om = eng.restart()
        assert run(om.start()).adopted == 1
        assert om.get(cid).state is S.FILLED  # type: ignore[union-attr]
    finally:
        eng.close()


async def _submit_started(om: OrderManager, intent: OrderIntent) -> object:
    await om.start()
    return await om.submit(intent)


# ---------------------------------------------------------------------------- item 8: cancel


@pytest.mark.parametrize(
    ("fault", "cancels"),
    [
        (Fault.TIMEOUT_AFTER_ACCEPT, 1),  # the broker cancelled, the reply was lost
        (Fault.TIMEOUT_BEFORE_ACCEPT, 2),  # it never arrived: the lookup shows it live
        (Fault.SERVER_ERROR, 2),
    ],
)
def test_a_cancel_whose_answer_is_lost_is_resolved_by_lookup(
    tmp_path: Path, fault: Fault, cancels: int
) -> None:
    plan = FaultPlan().on("cancel_order", fault)
    broker = PaperBroker(seed=32, rules=GLOBAL, faults=plan)
    eng = engine(tmp_path, broker)

    async def go() -> None:
        om = eng.om
        await om.start()
        o = await om.submit(buy("1", order_type="limit", limit_price=Decimal("90")))
        o = await om.cancel(o.client_order_id)  # no BrokerUnavailable: the order as it stands
        assert o.state is S.CANCELLED
        assert broker.cancel_calls == cancels  # sent again only while the broker showed it live
        assert kinds(eng.ddb, o.client_order_id)[-2:] == ["cancel_requested", "cancelled"]

    try:
        run(go())
    finally:
        eng.close()


def test_a_cancel_whose_answer_and_lookups_are_lost_returns_the_order_as_it_stands(
    tmp_path: Path,
) -> None:
    plan = (
        FaultPlan()
        .on("cancel_order", Fault.TIMEOUT_AFTER_ACCEPT)
        # the lookup before the cancel answers (it names the broker id); every one after fails
        .on(
            "get_order_by_client_id",
            Fault.SERVER_ERROR,
            nth=2,
            times=FAST_RETRY.max_attempts + 1,
        )
    )
    broker = PaperBroker(seed=33, rules=GLOBAL, faults=plan)
    eng = engine(tmp_path, broker)

    async def go() -> None:
        om = eng.om
        await om.start()
        o = await om.submit(buy("1", order_type="limit", limit_price=Decimal("90")))
        o = await om.cancel(o.client_order_id)
        assert o.state is S.ACCEPTED  # unknown: as it stands, cancel_requested journaled
        assert kinds(eng.ddb, o.client_order_id)[-1] == "cancel_requested"
        assert broker.cancel_calls == 1
        assert (await om.refresh(o.client_order_id)).state is S.CANCELLED  # later, resolved

    try:
        run(go())
    finally:
        eng.close()


def test_cancelling_an_unknown_order_looks_it_up_before_anything_is_sent(tmp_path: Path) -> None:
    """Item 3's discipline: an UNKNOWN order is resolved by lookup before anything else is
    sent for it (never resent, never a cancel by guess)."""
    plan = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.NOT_FOUND, times=FAST_RETRY.max_attempts)
    )
    broker = PaperBroker(seed=34, rules=OPEN_ONLY, faults=plan)
    eng = engine(tmp_path, broker)

    async def go() -> None:
        om = eng.om
        await om.start()
        o = await om.submit(buy("1", order_type="limit", limit_price=Decimal("90")))
        assert o.state is S.UNKNOWN and o.broker_order_id is None
        o = await om.cancel(o.client_order_id)
        assert o.state is S.CANCELLED
        assert broker.submitted_client_ids == [o.client_order_id]  # never resent
        assert broker.cancel_calls == 1
        assert kinds(eng.ddb, o.client_order_id)[-4:] == [
            "unknown",
            "recovered",
            "cancel_requested",
            "cancelled",
        ]

    try:
        run(go())
    finally:
        eng.close()


def test_cancelling_an_unknown_order_the_broker_does_not_show_sends_nothing(
    tmp_path: Path,
) -> None:
    plan = FaultPlan().on("submit_order", Fault.TIMEOUT_BEFORE_ACCEPT)
    broker = PaperBroker(seed=35, rules=OPEN_ONLY, faults=plan)
    eng = engine(tmp_path, broker)

    async def go() -> None:
        om = eng.om
        await om.start()
        o = await om.submit(buy("1"))
        assert o.state is S.UNKNOWN
        with pytest.raises(OrderRejected, match="not found at the broker"):
            await om.cancel(o.client_order_id)
        assert broker.cancel_calls == 0 and broker.submit_calls == 1
        assert om.get(o.client_order_id).state is S.UNKNOWN  # type: ignore[union-attr]

    try:
        run(go())
    finally:
        eng.close()


# ---------------------------------------------------------------------------- risk decisions


def test_the_daily_loss_limit_counts_this_sessions_losses(tmp_path: Path) -> None:
    """A loss realized in this session stops the next order at once, and after a restart."""
    broker = PaperBroker(seed=36, rules=GLOBAL)
    limits = RiskLimits(max_daily_loss=Decimal("50"), check_balance=False)
    eng = engine(tmp_path, broker, risk=limits)

    async def go() -> None:
        om = eng.om
        await om.start()
        await om.submit(buy("10"))  # at 100
        broker.set_price("AAPL", Decimal("90"))
        sell = OrderIntent(symbol="AAPL", side="sell", quantity=Decimal("10"))
        assert (await om.submit(sell)).state is S.FILLED  # a loss of 100
        with pytest.raises(OrderRejected) as e:
            await om.submit(buy("1"))
        assert e.value.reason is RejectReason.DAILY_LOSS

    try:
        run(go())
        om = eng.restart()

        async def again() -> None:
            await om.start()
            with pytest.raises(OrderRejected) as e:
                await om.submit(buy("1"))
            assert e.value.reason is RejectReason.DAILY_LOSS

        run(again())
        assert broker.submit_calls == 2
    finally:
        eng.close()


def test_open_sells_count_against_the_position_as_sells(tmp_path: Path) -> None:
    """An open sell of 8 and a position limit of 10: a buy of 5 leaves -3 (allowed); counted
    as a buy it would be 13 (refused). A buy of 19 would be 11: refused."""
    broker = PaperBroker(seed=37, rules=GLOBAL)
    eng = engine(tmp_path, broker, risk=RiskLimits(max_position=Decimal("10"), check_balance=False))

    async def go() -> None:
        om = eng.om
        await om.start()
        sell = OrderIntent(
            symbol="AAPL",
            side="sell",
            quantity=Decimal("8"),
            order_type="limit",
            limit_price=Decimal("120"),
        )
        assert (await om.submit(sell)).state is S.ACCEPTED  # resting
        assert (
            await om.submit(buy("5", order_type="limit", limit_price=Decimal("90")))
        ).state is S.ACCEPTED
        with pytest.raises(OrderRejected) as e:
            await om.submit(buy("14", order_type="limit", limit_price=Decimal("90")))
        assert e.value.reason is RejectReason.MAX_POSITION

    try:
        run(go())
    finally:
        eng.close()


def test_open_sells_reserve_no_cash(tmp_path: Path) -> None:
    """The balance pays for open buys only: an open sell of 50 at 120 reserves nothing, so a
    buy of 5 at 100 fits a balance of 1,000 (counted as a buy, 6,000 would be reserved)."""
    broker = PaperBroker(seed=38, rules=GLOBAL)
    eng = engine(tmp_path, broker, deposit=Decimal("1000"))

    async def go() -> None:
        om = eng.om
        await om.start()
        sell = OrderIntent(
            symbol="AAPL",
            side="sell",
            quantity=Decimal("50"),
            order_type="limit",
            limit_price=Decimal("120"),
        )
        assert (await om.submit(sell)).state is S.ACCEPTED
        o = await om.submit(buy("5", order_type="limit", limit_price=Decimal("90")))
        assert o.state is S.ACCEPTED
        with pytest.raises(OrderRejected) as e:  # the open buy's 450 is reserved
            await om.submit(buy("6", order_type="limit", limit_price=Decimal("100")))
        assert e.value.reason is RejectReason.INSUFFICIENT_BALANCE

    try:
        run(go())
    finally:
        eng.close()


def test_sells_reduce_the_position_they_are_never_counted_as_buys(tmp_path: Path) -> None:
    broker = PaperBroker(seed=39, rules=GLOBAL)
    eng = engine(tmp_path, broker)

    async def go() -> None:
        om = eng.om
        await om.start()
        await om.submit(buy("10"))
        await om.submit(OrderIntent(symbol="AAPL", side="sell", quantity=Decimal("4")))
        assert om.positions() == {"AAPL": Decimal("6")}
        assert journal_positions(eng.ddb) == broker.net_positions() == {"AAPL": Decimal("6")}

    try:
        run(go())
    finally:
        eng.close()


# ---------------------------------------------------------------------------- over HTTP


def _over_http(
    tmp_path: Path,
    paper: PaperProcess,
    timeout: float,
    body: Callable[[OrderManager, HttpBroker], Awaitable[None]],
) -> None:
    """``body(om, broker)``: an ``OrderManager`` on SQLite, started, over ``HttpBroker`` to
    the paper broker's own process; everything closed afterwards."""
    try:
        ddb = open_ddb(tmp_path / "wal", f"sqlite:///{tmp_path / 'atb.db'}")
    except BaseException:
        paper.close()
        raise

    async def go() -> None:
        broker = await HttpBroker.connect(paper.url, timeout=timeout)
        try:
            om = OrderManager(ddb, broker, risk=RiskLimits(check_balance=False), retry=FAST_RETRY)
            await om.start()
            await body(om, broker)
        finally:
            await broker.aclose()

    try:
        run(go())
    finally:
        paper.close()
        ddb.stop()
        ddb.db.dispose()


@pytest.mark.parametrize(
    ("fault", "writes"),
    [(Fault.TIMEOUT_AFTER_ACCEPT, 2), (Fault.TIMEOUT_BEFORE_ACCEPT, 3)],
    ids=["cancelled_reply_dropped", "never_arrived"],
)
def test_over_http_a_cancel_whose_reply_times_out_is_resolved_by_lookup(
    tmp_path: Path, fault: Fault, writes: int
) -> None:
    """The paper broker in its own process holds the cancel's reply past the client's socket
    timeout (after it cancelled, or without acting): the manager looks the order up, sends
    the cancel again only if the broker still shows it live, and returns it CANCELLED."""
    paper = PaperProcess(
        tmp_path, plan=FaultPlan(timeout_hang_seconds=1.0).on("cancel_order", fault)
    )

    async def body(om: OrderManager, broker: HttpBroker) -> None:
        o = await om.submit(buy("1", order_type="limit", limit_price=Decimal("90")))
        assert o.state is S.ACCEPTED
        o = await om.cancel(o.client_order_id)  # no BrokerUnavailable
        assert o.state is S.CANCELLED
        assert paper.writes() == writes  # one submit, one or two cancels
        assert [x["status"] for x in paper.orders()] == ["canceled"]

    _over_http(tmp_path, paper, 0.5, body)


def test_over_http_a_submit_fetches_only_its_own_orders_fills(tmp_path: Path) -> None:
    """``HttpBroker.get_order_fills`` asks the paper broker's process for one order's
    executions (``?client_order_id=``): the server answers only those, and a submit books its
    fills from them."""
    paper = PaperProcess(tmp_path)

    async def body(om: OrderManager, broker: HttpBroker) -> None:
        placed = [await om.submit(buy("1")) for _ in range(3)]
        every = await broker.get_fills()
        assert len(every) >= 3
        for o in placed:
            cid = o.client_order_id
            assert o.state is S.FILLED
            mine = await broker.get_order_fills(cid)
            assert mine == [f for f in every if f.client_order_id == cid] != []
            async with httpx.AsyncClient(base_url=paper.url) as c:
                r = await c.get("/v2/account/activities/FILL", params={"client_order_id": cid})
            assert [x["client_order_id"] for x in r.json()] == [cid] * len(mine)

    _over_http(tmp_path, paper, 2.0, body)


# ---------------------------------------------------------------------------- per-order locks


def test_polling_fills_while_submits_run_journals_each_seq_once(
    db_url: str, tmp_path: Path
) -> None:
    """Real concurrency on one event loop: market orders submitted (the paper broker fills
    them at once) while a poller calls ``poll_fills()`` as often as the loop lets it. The
    poller reaches an order while its submit is fsyncing ACCEPTED; without the order's lock
    it journaled the fill with the seq ACCEPTED took (seqs [1, 2, 3, 3]: the database's
    primary key refuses the second). Every order's events must be 1..last_seq once, every
    execution booked once, and the database must take every entry."""
    broker = PaperBroker(seed=31, rules=GLOBAL)
    eng = engine(tmp_path, broker, db_url)

    async def go() -> None:
        om = eng.om
        await om.start()
        done = asyncio.Event()
        polls = 0

        async def poller() -> None:
            nonlocal polls
            while not done.is_set():
                await om.poll_fills()
                polls += 1
                await asyncio.sleep(0)

        async def submitter() -> list[str]:
            try:
                return [(await om.submit(buy("1"))).client_order_id for _ in range(5)]
            finally:
                done.set()

        cids, _ = await asyncio.gather(submitter(), poller())
        assert polls > 0
        for cid in cids:
            o = om.get(cid)
            assert o is not None and o.state is S.FILLED, o
            seqs = [int(e["seq"]) for e in OrderJournal(eng.ddb).events(cid)]
            assert seqs == list(range(1, o.last_seq + 1)), (cid, seqs)
            assert len(fills_of(eng.ddb, cid)) == 1
        assert len(om._locks) == 0  # nobody holds an order's lock: none is kept
        assert eng.ddb.manager is not None and eng.ddb.storage is not None
        result = eng.ddb.manager.force_sync()
        assert result.pending == 0 and result.failed == 0, result
        assert eng.ddb.storage.count(WALEntryStatus.FAILED) == 0
        for cid in cids:
            assert [int(e["seq"]) for e in eng.ddb.db.get_order_events(cid)] == [1, 2, 3, 4]
        assert journal_positions(eng.ddb) == broker.net_positions() == {"AAPL": Decimal("5")}

    try:
        run(go())
    finally:
        eng.close()


def test_the_per_order_locks_are_dropped_once_nobody_holds_them(tmp_path: Path) -> None:
    """``OrderManager`` kept one lock per order forever (one entry per order ever seen). A
    lock now lives while someone holds or waits for it: after 20 orders (filled, cancelled,
    polled), none is kept. A waiter keeps its lock: the holder and the waiter of one order
    share it, and a third caller meanwhile queues on the same one (mutual exclusion kept)."""
    broker = PaperBroker(seed=32, rules=GLOBAL, auto_fill=False)
    eng = engine(tmp_path, broker)

    async def go() -> None:
        om = eng.om
        await om.start()
        cids = [(await om.submit(buy("1"))).client_order_id for _ in range(20)]
        for cid in cids[:10]:
            await om.cancel(cid)
        broker.advance()
        await om.poll_fills()
        assert len(om._locks) == 0

        locks = om._locks
        inside: list[str] = []

        async def worker(name: str, gate: asyncio.Event | None) -> None:
            async with locks.hold("x"):
                inside.append(name)
                assert len(inside) == 1, inside  # never two at once
                if gate is not None:
                    await gate.wait()
                inside.remove(name)

        gate_a, gate_b = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(worker("a", gate_a))
        await asyncio.sleep(0)
        b = asyncio.create_task(worker("b", gate_b))  # waits for a's lock
        await asyncio.sleep(0)
        assert len(locks) == 1 and inside == ["a"]
        gate_a.set()  # a leaves while b waits: the lock stays, b holds it now
        await a
        for _ in range(3):
            await asyncio.sleep(0)
        assert inside == ["b"] and len(locks) == 1
        c = asyncio.create_task(worker("c", None))  # arrives while b holds it: must wait
        for _ in range(3):
            await asyncio.sleep(0)
        assert inside == ["b"]
        gate_b.set()
        await asyncio.gather(b, c)
        assert len(locks) == 0

    try:
        run(go())
    finally:
        eng.close()


def test_protective_orders_never_cover_more_than_the_position(tmp_path: Path) -> None:
    """A protective order only reduces, counting the protective orders of its kind already
    open: a second stop for the whole position is refused (both would fill on a drop and
    flip the position), a bracket's take-profit beside its stop is not (one cancels the
    other), and once the first stop is cancelled a new one fits again."""
    broker = PaperBroker(seed=1, rules=GLOBAL)
    rig = make_rig(tmp_path, broker)

    def stop(qty: str) -> OrderIntent:
        return OrderIntent(
            symbol="AAPL",
            side="sell",
            quantity=Decimal(qty),
            order_type="stop",
            stop_price=Decimal("90"),
            time_in_force="gtc",
        )

    async def go() -> None:
        om = rig.om
        await om.start()
        await om.submit(buy("10"))
        first = await om.submit(stop("6"), protective=True)
        assert first.state is S.ACCEPTED
        with pytest.raises(OrderRejected, match="cover more than"):
            await om.submit(stop("10"), protective=True)
        assert (await om.submit(stop("4"), protective=True)).state is S.ACCEPTED  # 6 + 4 = 10
        take = OrderIntent(
            symbol="AAPL",
            side="sell",
            quantity=Decimal("10"),
            order_type="limit",
            limit_price=Decimal("120"),
            time_in_force="gtc",
        )
        assert (await om.submit(take, protective=True)).state is S.ACCEPTED  # the other kind
        await om.cancel(first.client_order_id)
        assert (await om.submit(stop("6"), protective=True)).state is S.ACCEPTED
        broker.set_price("AAPL", Decimal("89"))  # every stop fills: flat, never short
        await om.poll_fills()
        assert om.positions().get("AAPL", Decimal(0)) == 0
        assert journal_positions(rig.ddb).get("AAPL", Decimal(0)) == 0

    try:
        run(go())
    finally:
        rig.close()
