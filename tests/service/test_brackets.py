"""stop_loss / take_profit placed at the broker (``wal.service.brackets``), on real parts: the
log on real files, SQLite, the in-process paper broker with its durable state file and its
FaultPlan. A "restart" drops every object and opens the same files again (after an
in-process crash point where the test needs one)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from orders_helpers import FAST_RETRY, open_ddb
from service_runtime import FAST_REC, started_runtime

from wal.crashpoints import set_in_process_handler
from wal.db.versioning import ensure_schema
from wal.orders import (
    ClientIdRules,
    OrderIntent,
    OrderManager,
    OrderState,
    PaperBroker,
    StartupReconciler,
)
from wal.orders.broker import BrokerOrder
from wal.orders.faults import Fault, FaultPlan
from wal.service.brackets import Brackets, child_order_id, oco_group_of, parse_child_id
from wal.service.errors import ApiError
from wal.service.owners import OwnerRow, OwnerStore, client_order_id_for
from wal.service.schemas import OrderRequest

D = Decimal


class Crash(Exception):
    """The process "died" at a crash point."""


class Env:
    """One engine on ``tmp``'s files: the log, SQLite, the paper broker's state file."""

    def __init__(
        self,
        tmp: Path,
        *,
        faults: FaultPlan | None = None,
        auto_fill: bool = True,
        oco_groups: bool | None = None,
    ):
        self.tmp = tmp
        self.oco_groups = oco_groups
        self.url = f"sqlite:///{tmp / 'atb.db'}"
        self.faults = faults
        self.auto_fill = auto_fill
        self.open()

    def open(self) -> None:
        self.ddb = open_ddb(self.tmp / "wal", self.url)
        ensure_schema(self.ddb.db.engine, self.ddb.db.safe_url)
        if self.ddb.get_balance("trader:t1") == 0:
            self.ddb.atomic_balance_update(D(1000000), reason="deposit", account="trader:t1")
        self.broker = PaperBroker(
            rules=ClientIdRules(visibility_window_seconds=0.0, oco_groups=self.oco_groups),
            faults=self.faults,
            state_path=self.tmp / "paper.json",
            auto_fill=self.auto_fill,
        )
        self.om = OrderManager(
            self.ddb, self.broker, retry=FAST_RETRY, price_source=self.broker.price
        )
        self.owners = OwnerStore(self.ddb.db.engine)
        self.owners.load()
        self.brackets = Brackets(self.om, self.owners)
        self.brackets.load()

    def close(self) -> None:
        self.ddb.stop()
        self.ddb.db.dispose()

    def restart(self, faults: FaultPlan | None = None) -> None:
        self.close()
        self.faults = faults
        self.open()

    async def startup(self) -> Any:
        """What ``ServiceRuntime`` does at start: recovery, brackets, reconciliation, brackets."""
        rec = StartupReconciler(self.om, FAST_REC)
        await self.om.start()
        await self.brackets.sweep()
        result = await rec.run()
        await self.brackets.sweep()
        return result

    async def place(
        self, key: str, qty: str = "10", *, sl: str | None = "90", tp: str | None = "110", **kw: Any
    ) -> str:
        cid = client_order_id_for("t1", key)
        sl_d = None if sl is None else D(sl)
        tp_d = None if tp is None else D(tp)
        self.owners.claim(OwnerRow(cid, "t1", key, "0" * 64, sl_d, tp_d))
        intent = OrderIntent(
            symbol="AAPL",
            side=kw.pop("side", "buy"),
            quantity=D(qty),
            account="trader:t1",
            client_order_id=cid,
            **kw,
        )
        await self.om.submit(intent)
        self.brackets.track(cid)
        return cid

    async def market_buy(self) -> str:
        """The engine loaded and trading; a market buy of 10 with its bracket (stop-loss 90,
        take-profit 110) submitted under key "k1": its client id."""
        await self.om.load()
        self.om.resume()
        return await self.place("k1", order_type="market")

    async def refresh_all(self) -> None:
        for o in self.om.open_orders():
            await self.om.refresh(o.client_order_id)

    def live(self) -> list[BrokerOrder]:
        """The broker's open orders (its own word, no fault applies)."""
        return sorted(
            (o for o in self.broker.all_orders() if o.status in ("new", "partially_filled")),
            key=lambda o: o.client_order_id,
        )

    def protection(self) -> dict[str, D]:
        """Open quantity at the broker per (kind) of bracket child."""
        out: dict[str, D] = {}
        for o in self.live():
            parsed = parse_child_id(o.client_order_id)
            if parsed is not None:
                out[parsed[0]] = out.get(parsed[0], D(0)) + o.remaining
        return out


@pytest.fixture
def env(tmp_path: Path) -> Any:
    e = Env(tmp_path)
    yield e
    e.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_filled_order_gets_both_children_at_the_broker(env: Env) -> None:
    async def go() -> None:
        await env.om.load()
        env.om.resume()
        cid = await env.place("k1")
        await env.brackets.converge(cid)
        live = env.live()
        assert [(o.client_order_id, o.side, o.order_type, o.quantity) for o in live] == [
            (child_order_id(cid, "sl", 1), "sell", "stop", D(10)),
            (child_order_id(cid, "tp", 1), "sell", "limit", D(10)),
        ]
        assert live[0].stop_price == D(90) and live[1].limit_price == D(110)
        await env.brackets.converge(cid)  # again: nothing more
        assert len(env.broker.all_orders()) == 3
        assert env.brackets.active == [cid]

    run(go())


def test_take_profit_fill_cancels_the_stop_and_finishes_the_bracket(env: Env) -> None:
    async def go() -> None:
        await env.om.load()
        env.om.resume()
        cid = await env.place("k1")
        await env.brackets.converge(cid)
        env.broker.set_price("AAPL", D(111))  # the take-profit executes
        await env.refresh_all()
        await env.brackets.converge(cid)
        assert env.live() == []
        sl = env.om.get(child_order_id(cid, "sl", 1))
        assert sl is not None and sl.state is OrderState.CANCELLED
        assert env.broker.net_positions() == {}
        assert env.brackets.active == []

    run(go())


def test_stop_loss_fill_cancels_the_take_profit(env: Env) -> None:
    async def go() -> None:
        await env.om.load()
        env.om.resume()
        cid = await env.place("k1", side="sell", sl="110", tp="90")  # a short's bracket
        await env.brackets.converge(cid)
        assert {o.side for o in env.live()} == {"buy"}
        env.broker.set_price("AAPL", D(112))  # the buy stop triggers
        await env.refresh_all()
        await env.brackets.converge(cid)
        assert env.live() == [] and env.broker.net_positions() == {}

    run(go())


def test_partial_fills_grow_and_shrink_the_children(tmp_path: Path) -> None:
    e = Env(tmp_path, faults=FaultPlan(partial_fills=(D("0.4"), D("0.6"))), auto_fill=False)

    async def go() -> None:
        cid = await e.market_buy()
        assert e.broker.advance() == 1  # 4 of 10
        await e.refresh_all()
        await e.brackets.converge(cid)
        assert e.protection() == {"sl": D(4), "tp": D(4)}
        e.broker.advance()  # the other 6: filled
        await e.refresh_all()
        await e.brackets.converge(cid)
        assert e.protection() == {"sl": D(10), "tp": D(10)}  # cancelled and replaced
        assert {o.client_order_id for o in e.live()} == {
            child_order_id(cid, "sl", 2),
            child_order_id(cid, "tp", 2),
        }
        e.broker.set_price("AAPL", D(111))
        e.broker.advance()  # the take-profit executes 4 of 10
        await e.refresh_all()
        await e.brackets.converge(cid)
        assert e.protection() == {"sl": D(6), "tp": D(6)}  # the stop shrinks to what is held
        assert e.broker.net_positions() == {"AAPL": D(6)}
        e.broker.advance()
        await e.refresh_all()
        await e.brackets.converge(cid)
        assert e.live() == [] and e.broker.net_positions() == {}

    try:
        run(go())
    finally:
        e.close()


def test_a_dropped_reply_and_lookup_lag_never_place_a_second_child(tmp_path: Path) -> None:
    # the stop-loss's submit is accepted, its reply lost; the first lookups say "not found"
    plan = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT, nth=2)
        .on("get_order_by_client_id", Fault.NOT_FOUND, nth=1, times=3)
    )
    e = Env(tmp_path, faults=plan)

    async def go() -> None:
        await e.om.load()
        e.om.resume()
        cid = await e.place("k1")
        await e.brackets.converge(cid)  # the stop-loss is UNKNOWN: nothing placed on top
        sl = child_order_id(cid, "sl", 1)
        assert e.brackets.stalled == [cid]
        await e.brackets.converge(cid)  # looked up: adopted, then the take-profit
        assert len(e.broker.orders_with_client_id(sl)) == 1
        assert e.protection() == {"sl": D(10), "tp": D(10)}
        order = e.om.get(sl)
        assert order is not None and order.state is OrderState.ACCEPTED

    try:
        run(go())
    finally:
        e.close()


def test_restart_after_the_parent_filled_places_the_children_before_the_reconciler(
    env: Env,
) -> None:
    async def first() -> str:
        await env.om.load()
        env.om.resume()
        return await env.place("k1")  # filled; the process dies before its bracket

    cid = run(first())
    env.restart()
    result = run(env.startup())
    assert env.protection() == {"sl": D(10), "tp": D(10)}
    # the reconciler found the position protected exactly: no emergency stop, no cancel
    assert result.emergency_stops_placed == 0 and result.stops_canceled == 0
    assert env.brackets.active == [cid]
    env.restart()
    result = run(env.startup())  # and again: nothing moves
    assert result.emergency_stops_placed == 0 and result.stops_canceled == 0
    assert len(env.broker.all_orders()) == 3


def _crash_in_a_resize(tmp_path: Path, point: str) -> tuple[Env, str]:
    """A market buy of 10 filled 5 then 5: its bracket protects 5, then the resize to 10
    dies at crash point ``point``. The engine (not restarted) and the parent's id."""
    e = Env(tmp_path, faults=FaultPlan(partial_fills=(D("0.5"), D("0.5"))), auto_fill=False)
    armed = {"on": False}

    def crash(name: str) -> None:
        if armed["on"] and name == point:
            armed["on"] = False
            raise Crash(name)

    async def first() -> str:
        cid = await e.market_buy()
        e.broker.advance()
        await e.refresh_all()
        await e.brackets.converge(cid)  # 5 protected
        e.broker.advance()
        await e.refresh_all()
        armed["on"] = True
        with pytest.raises(Crash):
            await e.brackets.converge(cid)  # the resize to 10 dies in the middle
        return cid

    set_in_process_handler(crash)
    try:
        return e, run(first())
    finally:
        set_in_process_handler(None)


@pytest.mark.parametrize(
    "point", ["bracket.after_cancel", "order.after_broker_accept", "order.after_intent_fsync"]
)
def test_a_crash_in_the_middle_of_a_resize_leaves_exact_children(
    tmp_path: Path, point: str
) -> None:
    e, cid = _crash_in_a_resize(tmp_path, point)
    try:
        e.restart(FaultPlan(partial_fills=(D("0.5"), D("0.5"))))
        result = run(e.startup())
        assert e.protection() == {"sl": D(10), "tp": D(10)}
        for kind in ("sl", "tp"):  # never two orders under one client id
            for gen in (1, 2, 3):
                assert len(e.broker.orders_with_client_id(child_order_id(cid, kind, gen))) <= 1
        assert result.emergency_stops_placed == 0
        assert e.broker.net_positions() == {"AAPL": D(10)}
    finally:
        e.close()


def test_the_traders_stop_replaces_the_reconcilers_emergency_stop(env: Env) -> None:
    async def go() -> None:
        rec = StartupReconciler(env.om, FAST_REC)
        await env.om.start()
        await rec.run()
        cid = await env.place("k1", sl="90", tp=None)
        result = await StartupReconciler(env.om, FAST_REC).run()  # no bracket yet: an es- stop
        assert result.emergency_stops_placed == 1
        await env.brackets.converge(cid)
        live = env.live()
        assert [o.client_order_id for o in live] == [child_order_id(cid, "sl", 1)]
        result = await StartupReconciler(env.om, FAST_REC).run()
        assert result.emergency_stops_placed == 0 and result.stops_canceled == 0

    run(go())


def test_children_are_capped_by_the_room_the_position_leaves(env: Env) -> None:
    async def go() -> None:
        await env.om.load()
        env.om.resume()
        await env.place("k0", sl=None, tp=None)  # 10 held, no bracket
        stop = OrderIntent(
            symbol="AAPL",
            side="sell",
            quantity=D(15),
            order_type="stop",
            stop_price=D(80),
            time_in_force="gtc",
            account="trader:t1",
            client_order_id="userstop1",
        )
        await env.om.submit(stop)  # the trader's own stop covers 15 of the 20 after k1
        cid = await env.place("k1", sl="90", tp="110")
        await env.brackets.converge(cid)
        # stops sum to the position; the take-profit is capped by the trader's stop outside
        # its group too (a take-profit of 10 filled, then the stop of 15: a short of 5)
        assert env.protection() == {"sl": D(5), "tp": D(5)}
        sell = OrderIntent(
            symbol="AAPL",
            side="sell",
            quantity=D(12),
            account="trader:t1",
            client_order_id="sell12",
        )
        await env.om.cancel("userstop1")
        await env.om.submit(sell)  # 8 held: the bracket's children shrink to it
        await env.brackets.converge(cid)
        assert env.protection() == {"sl": D(8), "tp": D(8)}

    run(go())


def test_the_runtime_places_the_children_of_a_posted_order(tmp_path: Path) -> None:
    async def go() -> None:
        async with started_runtime(tmp_path) as (rt, paper):
            req = OrderRequest(
                symbol="AAPL",
                side="buy",
                quantity=D(3),
                order_type="market",
                stop_loss=D(95),
                take_profit=D(105),
            )
            placed = await rt.place("t9", "key-1", req)
            await rt.brackets.converge(placed.order.client_order_id)
            kids = sorted(
                (o.client_order_id, o.order_type, o.quantity)
                for o in paper.all_orders()
                if o.status == "new"
            )
            cid = placed.order.client_order_id
            assert kids == [
                (child_order_id(cid, "sl", 1), "stop", D(3)),
                (child_order_id(cid, "tp", 1), "limit", D(3)),
            ]
            assert rt.owners.trader_of(child_order_id(cid, "sl", 1)) == "t9"

    run(go())


def test_a_retry_of_a_protective_order_is_the_same_order_after_the_position_moved(
    env: Env,
) -> None:
    """A protective child's retry (its outcome chased) is never refused by the protective
    check on a position that moved since: it names an order that may exist at the broker."""

    async def go() -> None:
        await env.om.load()
        env.om.resume()
        await env.place("k0", sl=None, tp=None)  # 10 held
        stop = OrderIntent(
            symbol="AAPL",
            side="sell",
            quantity=D(10),
            order_type="stop",
            stop_price=D(80),
            time_in_force="gtc",
            account="trader:t1",
            client_order_id="protect1",
        )
        first = await env.om.submit(stop, protective=True)
        sell = OrderIntent(
            symbol="AAPL",
            side="sell",
            quantity=D(5),
            account="trader:t1",
            client_order_id="sell5",
        )
        await env.om.submit(sell)  # 5 held now: a new protective stop of 10 would be refused
        again = await env.om.submit(stop, protective=True)
        assert again.client_order_id == first.client_order_id and again.state is first.state
        assert len(env.broker.orders_with_client_id("protect1")) == 1

    run(go())


# ---------------------------------------------------------------------- OCO at the broker


def test_a_price_through_the_take_profit_then_the_stop_before_converge_ends_flat(
    env: Env,
) -> None:
    """The window between a child's fill and the sweep that cancels the other: the price
    crosses the take-profit, then the stop-loss, before converge runs. The two children
    were independent orders: both filled, the long of 10 became a short of 10. Linked in
    the bracket's OCO group the take-profit's fill cancels the stop at the broker."""

    async def go() -> None:
        await env.om.load()
        env.om.resume()
        cid = await env.place("k1")
        await env.brackets.converge(cid)
        assert len(env.live()) == 2
        env.broker.set_price("AAPL", D(111))  # the take-profit fills
        env.broker.set_price("AAPL", D(89))  # and the stop is crossed: no converge between
        assert env.broker.net_positions() == {}  # flat, never short
        await env.refresh_all()
        await env.brackets.converge(cid)
        assert env.live() == [] and env.broker.net_positions() == {}
        sl = env.om.get(child_order_id(cid, "sl", 1))
        assert sl is not None and sl.state is OrderState.CANCELLED and sl.filled_quantity == 0
        assert env.brackets.active == [] and env.brackets.problems == {}
        assert env.om.positions().get("AAPL", D(0)) == 0  # the journal agrees

    run(go())


def test_a_partial_take_profit_shrinks_the_stop_before_converge_runs(tmp_path: Path) -> None:
    """The take-profit executes 4 of 10: the stop is reduced to 6 by the broker, at once
    (it stayed at 10 until the next sweep; triggered, it sold 10 of the 6 held)."""
    e = Env(tmp_path, faults=FaultPlan(partial_fills=(D("0.4"), D("0.6"))), auto_fill=False)

    async def go() -> None:
        cid = await e.market_buy()
        e.broker.advance()
        e.broker.advance()  # the parent: 10 filled
        await e.refresh_all()
        await e.brackets.converge(cid)
        assert e.protection() == {"sl": D(10), "tp": D(10)}
        e.broker.set_price("AAPL", D(111))
        assert e.broker.advance() == 1  # the take-profit executes 4
        assert e.protection() == {"sl": D(6), "tp": D(6)}  # before any converge
        e.broker.set_price("AAPL", D(89))  # the stop triggers, still no converge
        while e.broker.advance():
            assert e.broker.net_positions().get("AAPL", D(0)) >= 0
        assert e.broker.net_positions() == {}
        await e.refresh_all()
        await e.brackets.converge(cid)
        assert e.live() == [] and e.brackets.active == []
        assert e.om.positions().get("AAPL", D(0)) == 0

    try:
        run(go())
    finally:
        e.close()


def test_a_replaced_child_joins_the_group_of_the_one_still_live(tmp_path: Path) -> None:
    """One group for the bracket's life: the stop resized after a partial take-profit (sl2)
    is linked to the take-profit still live (tp1), so their fills still reduce each other."""
    e = Env(tmp_path, faults=FaultPlan(partial_fills=(D("0.4"), D("0.6"))), auto_fill=False)

    async def go() -> None:
        cid = await e.market_buy()
        e.broker.advance()
        e.broker.advance()
        await e.refresh_all()
        await e.brackets.converge(cid)
        e.broker.set_price("AAPL", D(111))
        e.broker.advance()  # tp1 executes 4; sl1 reduced to 6 at the broker
        await e.refresh_all()
        await e.brackets.converge(cid)  # sl1 (10 in the journal) cancelled, sl2 of 6 placed
        live = {o.client_order_id: o for o in e.live()}
        assert set(live) == {child_order_id(cid, "sl", 2), child_order_id(cid, "tp", 1)}
        assert {o.oco_group for o in live.values()} == {oco_group_of(cid)}
        assert e.protection() == {"sl": D(6), "tp": D(6)}
        e.broker.advance()  # tp1 executes its last 6: sl2 is cancelled by the broker
        assert e.live() == [] and e.broker.net_positions() == {}

    try:
        run(go())
    finally:
        e.close()


def test_the_children_of_a_bracket_placed_again_after_a_restart_keep_their_group(
    tmp_path: Path,
) -> None:
    e = Env(tmp_path)

    async def go() -> str:
        await e.om.load()
        e.om.resume()
        return await e.place("k1")  # filled; its children not placed yet (the process dies)

    try:
        cid = run(go())
        e.restart()
        run(e.startup())
        assert {(o.client_order_id, o.oco_group) for o in e.live()} == {
            (child_order_id(cid, "sl", 1), oco_group_of(cid)),
            (child_order_id(cid, "tp", 1), oco_group_of(cid)),
        }
        e.broker.set_price("AAPL", D(111))
        e.broker.set_price("AAPL", D(89))
        assert e.broker.net_positions() == {}
    finally:
        e.close()


def test_a_broker_without_oco_groups_refuses_a_two_leg_bracket_and_places_one_leg(
    tmp_path: Path,
) -> None:
    """Two independent reducing orders for the whole position is the over-protection: a
    broker that declares no OCO groups gets no two-leg bracket (422 ``oco_unsupported``,
    nothing claimed, journaled or sent); a single stop-loss is placed as before."""

    async def go() -> None:
        async with started_runtime(tmp_path, oco_groups=False) as (rt, paper):
            both = OrderRequest(
                symbol="AAPL",
                side="buy",
                quantity=D(3),
                order_type="market",
                stop_loss=D(95),
                take_profit=D(105),
            )
            with pytest.raises(ApiError) as exc:
                await rt.place("t9", "key-1", both)
            assert exc.value.status == 422 and exc.value.code == "oco_unsupported"
            assert "one-cancels-other" in exc.value.message
            cid = client_order_id_for("t9", "key-1")
            assert rt.om.get(cid) is None and rt.owners.get(cid) is None
            assert paper.submit_calls == 0
            one = OrderRequest(
                symbol="AAPL", side="buy", quantity=D(3), order_type="market", stop_loss=D(95)
            )
            placed = await rt.place("t9", "key-2", one)
            pid = placed.order.client_order_id
            await rt.brackets.converge(pid)
            kids = [o for o in paper.all_orders() if o.status == "new"]
            assert [(k.client_order_id, k.oco_group) for k in kids] == [
                (child_order_id(pid, "sl", 1), None)
            ]

    run(go())


def test_the_reconciler_finds_a_stop_reduced_by_its_group_exact(tmp_path: Path) -> None:
    """A stop-loss the broker reduced (a partial take-profit: 6 left of 10) is exactly the
    position's protection to the reconciler (its arithmetic is the broker's remaining, less
    the group's reduction): kept, no emergency stop, nothing resized."""
    e = Env(tmp_path, faults=FaultPlan(partial_fills=(D("0.4"), D("0.6"))), auto_fill=False)

    async def go() -> None:
        cid = await e.market_buy()
        e.broker.advance()
        e.broker.advance()
        await e.refresh_all()
        await e.brackets.converge(cid)
        e.broker.set_price("AAPL", D(111))
        e.broker.advance()  # the take-profit executes 4: the stop is 6 at the broker
        await e.refresh_all()
        result = await StartupReconciler(e.om, FAST_REC).run()
        assert result.stops_canceled == 0 and result.emergency_stops_placed == 0, result
        assert result.errors == ()
        sl = {o.client_order_id: o for o in e.live()}[child_order_id(cid, "sl", 1)]
        assert sl.remaining == 6 and e.broker.net_positions() == {"AAPL": D(6)}

    try:
        run(go())
    finally:
        e.close()


# ---------------------------------------------------------------------- beside the reconciler

UP_THEN_DOWN = ("111", "97", "89")  # through the take-profit (110), then every stop
DOWN_THEN_UP = ("97", "89", "111")


def _walk(e: Env, path: tuple[str, ...]) -> list[D]:
    """Move the paper market through ``path``; the broker's position after each step."""
    seen = []
    for p in path:
        e.broker.set_price("AAPL", D(p))
        seen.append(e.broker.net_positions().get("AAPL", D(0)))
    return seen


@pytest.mark.parametrize("path", [UP_THEN_DOWN, DOWN_THEN_UP], ids=["tp_first", "stop_first"])
def test_a_refused_stop_loss_keeps_the_emergency_stop_linked_to_its_take_profit(
    tmp_path: Path, path: tuple[str, ...]
) -> None:
    """The stop-loss is refused at startup, the take-profit placed: the reconciler's
    emergency stop joins the bracket's group, and the sweep after it keeps it (the old sweep
    cancelled it to make room for a stop-loss it would not send again: the position was
    left with its take-profit only). The market through both, either order: flat, never
    short."""
    e = Env(tmp_path)

    async def placed() -> str:
        await e.om.load()
        e.om.resume()
        return await e.place("k1")  # filled; its children not placed yet (the process dies)

    try:
        cid = run(placed())
        e.restart(faults=FaultPlan().on("submit_order", Fault.REJECT, nth=1))  # the stop-loss
        result = run(e.startup())
        assert result.emergency_stops_placed == 1 and result.exits_canceled == 0, result
        live = {o.client_order_id: o for o in e.live()}
        es = [o for c, o in live.items() if c.startswith("es-")]
        assert len(es) == 1 and set(live) == {es[0].client_order_id, child_order_id(cid, "tp", 1)}
        assert {o.oco_group for o in live.values()} == {oco_group_of(cid)}
        assert es[0].remaining == 10  # the stops cover the position exactly
        assert "stop-loss" in e.brackets.problems[cid]
        again = run(StartupReconciler(e.om, FAST_REC).run())
        assert again.changes == 0 and again.errors == (), again
        seen = _walk(e, path)
        assert all(q >= 0 for q in seen) and e.broker.net_positions() == {}, seen
    finally:
        e.close()


@pytest.mark.parametrize("refused", [True, False], ids=["refused_again", "accepted"])
def test_after_a_restart_the_stop_loss_is_placed_before_the_emergency_stop_in_its_group_goes(
    tmp_path: Path, refused: bool
) -> None:
    """The reconciler's emergency stop joined the bracket's group (its stop-loss refused). A
    new process has no record of the refusal and tries the stop-loss again: it is placed in
    the group beside the emergency stop first, and the emergency stop is cancelled only once
    the stop-loss is live. Refused again: the same emergency stop still protects the
    position (the old sweep cancelled it first, leaving the position bare until the
    reconciler placed another). Accepted: the stop-loss and take-profit, flat through both."""
    e = Env(tmp_path)

    async def placed() -> str:
        await e.om.load()
        e.om.resume()
        return await e.place("k1")

    try:
        cid = run(placed())
        e.restart(faults=FaultPlan().on("submit_order", Fault.REJECT, nth=1))  # the stop-loss
        assert run(e.startup()).emergency_stops_placed == 1
        (es,) = [o.client_order_id for o in e.live() if o.client_order_id.startswith("es-")]
        plan = FaultPlan().on("submit_order", Fault.REJECT, nth=1) if refused else None
        e.restart(faults=plan)

        async def first_sweep() -> None:  # the sweep before the reconciler (``startup``)
            await e.om.start()
            await e.brackets.sweep()

        run(first_sweep())
        tp = child_order_id(cid, "tp", 1)
        # refused: never bare, the stand-in stays beside the take-profit; accepted: made
        # before broken, the stand-in went once the stop-loss was live (the sweep's doing)
        expected = {es, tp} if refused else {child_order_id(cid, "sl", 2), tp}
        assert {o.client_order_id for o in e.live()} == expected
        result = run(StartupReconciler(e.om, FAST_REC).run())
        run(e.brackets.sweep())
        assert result.emergency_stops_placed == 0 and result.errors == (), result
        live = {o.client_order_id: o for o in e.live()}
        assert set(live) == expected and {o.oco_group for o in live.values()} == {oco_group_of(cid)}
        assert refused is ("stop-loss" in e.brackets.problems.get(cid, ""))
        seen = _walk(e, DOWN_THEN_UP)  # through the stops, then the take-profit's price
        assert all(q >= 0 for q in seen) and e.broker.net_positions() == {}, seen
    finally:
        e.close()


@pytest.mark.parametrize("path", [UP_THEN_DOWN, DOWN_THEN_UP], ids=["tp_first", "stop_first"])
@pytest.mark.parametrize("oco", [False, True], ids=["no_groups", "groups"])
def test_a_take_profit_is_not_placed_again_beside_an_emergency_stop_outside_its_group(
    tmp_path: Path, path: tuple[str, ...], oco: bool
) -> None:
    """A take-profit-only bracket at a restart. On a broker without OCO groups (no group):
    the reconciler cancels it for its emergency stop; the sweep after it must not place it
    again beside that stop (the old one did: tp2 of 10 beside es- of 10, a short of 10
    through 110 then 98). On a broker with groups its one leg is in the bracket's group, and
    the emergency stop joins it: the take-profit is kept, and never both execute."""
    e = Env(tmp_path, oco_groups=oco)

    async def placed() -> str:
        await e.om.load()
        e.om.resume()
        cid = await e.place("k1", sl=None)
        await e.brackets.converge(cid)
        return cid

    try:
        cid = run(placed())
        assert [o.client_order_id for o in e.live()] == [child_order_id(cid, "tp", 1)]
        e.restart()
        result = run(e.startup())
        assert result.emergency_stops_placed == 1, result
        assert result.exits_canceled == (0 if oco else 1), result
        live = {o.client_order_id: o for o in e.live()}
        es = [c for c in live if c.startswith("es-")]
        assert len(es) == 1, live
        if oco:
            assert set(live) == {es[0], child_order_id(cid, "tp", 1)}
            assert {o.oco_group for o in live.values()} == {oco_group_of(cid)}
        else:
            assert set(live) == {es[0]}
        run(e.brackets.sweep())  # and again: nothing more beside it
        assert set(o.client_order_id for o in e.live()) == set(live)
        seen = _walk(e, path)
        assert all(q >= 0 for q in seen) and e.broker.net_positions() == {}, seen
    finally:
        e.close()


@pytest.mark.parametrize("path", [UP_THEN_DOWN, DOWN_THEN_UP], ids=["tp_first", "stop_first"])
def test_a_grown_stop_loss_is_placed_before_the_old_one_is_cancelled(
    tmp_path: Path, path: tuple[str, ...]
) -> None:
    """The parent fills 4, then its other 6: the stop-loss grows from 4 to 10. Its
    replacement is placed in the bracket's group before the old stop is cancelled, and the
    broker refuses it: the old stop (4) stays live, a problem is listed, and the position
    is never left without a stop (the old order of work cancelled the stop first: nothing
    covered the 10 held). The market through both prices: never short."""
    # submits: the parent, sl1, tp1, then sl2 (refused), tp2
    plan = FaultPlan(partial_fills=(D("0.4"), D("0.6"))).on("submit_order", Fault.REJECT, nth=4)
    e = Env(tmp_path, faults=plan, auto_fill=False)

    async def go() -> str:
        cid = await e.market_buy()
        e.broker.advance()  # 4 of 10
        await e.refresh_all()
        await e.brackets.converge(cid)
        assert e.protection() == {"sl": D(4), "tp": D(4)}
        e.broker.advance()  # the other 6
        await e.refresh_all()
        await e.brackets.converge(cid)
        return cid

    try:
        cid = run(go())
        live = {o.client_order_id: o for o in e.live()}
        assert set(live) == {child_order_id(cid, "sl", 1), child_order_id(cid, "tp", 2)}
        assert {o.oco_group for o in live.values()} == {oco_group_of(cid)}
        assert e.protection() == {"sl": D(4), "tp": D(10)}
        assert "stop-loss" in e.brackets.problems[cid]
        seen = _walk(e, path)
        assert all(q >= 0 for q in seen), seen
    finally:
        e.close()


def test_a_crash_between_the_replacement_and_the_cancel_keeps_the_replacement(
    tmp_path: Path,
) -> None:
    """Killed after the grown stop-loss (sl2) is placed, before sl1 is cancelled: at the
    restart both are live in one group (never more than 10 sold); the sweep cancels sl1
    only, keeps sl2, and the reconciler finds the stops exact."""
    e, cid = _crash_in_a_resize(tmp_path, "bracket.after_replacement")
    try:
        sl1, sl2 = child_order_id(cid, "sl", 1), child_order_id(cid, "sl", 2)
        assert {sl1, sl2} <= {o.client_order_id for o in e.live()}  # both live: one group
        e.restart(FaultPlan(partial_fills=(D("0.5"), D("0.5"))))
        result = run(e.startup())
        assert e.protection() == {"sl": D(10), "tp": D(10)}
        assert sl2 in {o.client_order_id for o in e.live()}  # the replacement kept
        assert sl1 not in {o.client_order_id for o in e.live()}
        assert result.emergency_stops_placed == 0 and result.stops_canceled == 0, result
    finally:
        e.close()
