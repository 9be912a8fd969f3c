"""``GET /api/v1/orders`` paged in the database (``wal.service.listing``): against the real
service (pages with no gap and no repeat while orders are placed between fetches, filters,
bad cursors, another trader's orders), and in process with order entries held in the log
(the applier kept out by its lock), which must be listed exactly once."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from orders_helpers import make_rig
from pg import PgServer
from service_proc import ServiceProc, auth

from wal.db.classify import is_transient
from wal.orders import EventKind, OrderIntent, OrderState
from wal.orders.models import OrderEvent
from wal.service.errors import ApiError
from wal.service.listing import cursor_key, list_orders, list_page
from wal.service.owners import OwnerRow, OwnerStore
from wal.service.views import OrderFilter

EVERY = OrderFilter()
LIMIT = {"symbol": "AAPL", "side": "buy", "quantity": "1", "order_type": "limit", "price": "50"}


def post(svc: ServiceProc, token: str, body: dict[str, Any]) -> str:
    headers = auth(token) | {"Idempotency-Key": uuid.uuid4().hex}
    r = httpx.post(svc.url + "/api/v1/orders", json=body, headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def page(svc: ServiceProc, token: str, **params: Any) -> dict[str, Any]:
    r = httpx.get(svc.url + "/api/v1/orders", headers=auth(token), params=params, timeout=30)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def every_page(svc: ServiceProc, token: str, **params: Any) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        doc = page(svc, token, **params, **({"cursor": cursor} if cursor else {}))
        seen += [o["id"] for o in doc["orders"]]
        cursor = doc["next_cursor"]
        if cursor is None:
            return seen


def test_pages_have_no_gap_and_no_repeat_while_orders_are_placed(svc: ServiceProc) -> None:
    token = svc.token("pager")
    first = [post(svc, token, LIMIT) for _ in range(10)]
    seen: list[str] = []
    later: list[str] = []
    cursor = None
    while True:
        doc = page(svc, token, limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [o["id"] for o in doc["orders"]]
        later += [post(svc, token, LIMIT), post(svc, token, LIMIT)]  # between two fetches
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(first))  # newest first: each once, none of the later ones
    assert every_page(svc, token, limit=4) == list(reversed(first + later))


def test_filters_on_state_symbol_and_time(svc: ServiceProc) -> None:
    token = svc.token("filterer")
    ids = [post(svc, token, {**LIMIT, "symbol": "MSFT" if i % 2 else "AAPL"}) for i in range(6)]
    r = httpx.post(svc.url + f"/api/v1/orders/{ids[0]}/cancel", headers=auth(token), timeout=30)
    assert r.status_code == 200, r.text
    assert every_page(svc, token, limit=2, symbol="MSFT") == [ids[5], ids[3], ids[1]]
    assert every_page(svc, token, limit=2, state="cancelled") == [ids[0]]
    assert every_page(svc, token, limit=2, state="accepted", symbol="AAPL") == [ids[4], ids[2]]
    at = {o["id"]: o["created_at"] for o in page(svc, token)["orders"]}
    window = every_page(svc, token, limit=1, **{"from": at[ids[2]], "to": at[ids[4]]})
    assert window == [ids[3], ids[2]]  # from inclusive, to exclusive


def test_a_bad_cursor_is_422_naming_the_field(svc: ServiceProc) -> None:
    token = svc.token("cursed")
    post(svc, token, LIMIT)

    def b64(v: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(v).encode()).decode().rstrip("=")

    for bad in ("!!", "e30", b64({"a": 1}), b64(["not a time", "x"]), b64(["2026-01-01", "x"])):
        r = httpx.get(
            svc.url + "/api/v1/orders", headers=auth(token), params={"cursor": bad}, timeout=30
        )
        assert r.status_code == 422, (bad, r.text)
        err = r.json()["error"]
        assert err["code"] == "validation_error" and err["field"] == "cursor", err


def test_another_traders_orders_never_appear(svc: ServiceProc) -> None:
    ann, ben = svc.token("ann-l"), svc.token("ben-l")
    mine = [post(svc, ann, LIMIT) for _ in range(3)]
    theirs = [post(svc, ben, LIMIT) for _ in range(3)]
    assert every_page(svc, ann, limit=2) == list(reversed(mine))
    assert every_page(svc, ben, limit=2) == list(reversed(theirs))
    # ben's cursor in ann's hands pages ann's orders (keys only): never one of ben's
    cursor = page(svc, ben, limit=1)["next_cursor"]
    got = [o["id"] for o in page(svc, ann, cursor=cursor)["orders"]]
    assert not set(got) & set(theirs)


# ---------------------------------------------------------------- orders only in the log


def test_orders_only_in_the_log_are_listed_exactly_once(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    try:
        ddb, journal = rig.ddb, rig.om.journal
        owners = OwnerStore(ddb.db.engine)
        owners.load()
        t0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

        def journal_order(i: int, trader: str, symbol: str = "AAPL") -> str:
            cid = hashlib.sha256(f"{trader}/{i}".encode()).hexdigest()[:32]
            owners.claim(OwnerRow(cid, trader, f"k{i}", "h", None, None))
            journal.record_intent(
                OrderIntent(
                    symbol=symbol,
                    side="buy",
                    quantity=Decimal(1),
                    order_type="limit",
                    limit_price=Decimal(50),
                    account=f"trader:{trader}",
                    client_order_id=cid,
                    created_at=t0 + timedelta(seconds=i),
                )
            )
            return cid

        applied = [journal_order(i, "t1") for i in range(4)]
        journal_order(100, "t2")  # another trader's
        ddb.drain(timeout=30)
        with ddb.db.engine.connect() as c:
            n = c.execute(sa.text("SELECT count(*) FROM orders")).scalar_one()
        assert n == 5  # applied

        def listed(flt: OrderFilter = EVERY, limit: int = 3) -> tuple[list[str], list[str]]:
            out: list[str] = []
            after = None
            states: list[str] = []
            while True:
                orders, nxt = list_page(ddb, owners, "t1", "trader:t1", flt, limit, after)
                out += [o.client_order_id for o in orders]
                states += [o.state.value for o in orders]
                if nxt is None:
                    return out, states
                after = cursor_key(nxt)

        assert ddb.manager is not None and ddb.storage is not None
        with ddb.manager.apply_lock:  # the sync thread cannot apply: entries stay pending
            pending = [journal_order(i, "t1") for i in (4, 5)]
            # an applied order's cancel, only in the log
            journal.record_event(
                OrderEvent(applied[1], 2, EventKind.CANCELLED, OrderState.CANCELLED, t0)
            )
            journal_order(101, "t2")
            assert {e.kwargs["client_order_id"] for e in ddb.storage.get_pending_entries()} >= {
                *pending,
                applied[1],
            }
            ids, states = listed()
            assert ids == list(reversed(applied + pending))  # each once, newest first
            assert states[ids.index(applied[1])] == "cancelled"
            assert listed(OrderFilter(state=OrderState.CANCELLED))[0] == [applied[1]]
            pend = listed(OrderFilter(state=OrderState.PENDING), limit=1)[0]
            assert pend == [pending[1], pending[0], applied[3], applied[2], applied[0]]
            assert listed(OrderFilter(since=t0 + timedelta(seconds=3)), limit=1)[0] == [
                pending[1],
                pending[0],
                applied[3],
            ]
        ddb.drain(timeout=30)
        assert listed()[0] == list(reversed(applied + pending))  # applied now: the same
    finally:
        rig.close()


@pytest.mark.postgres
def test_while_the_database_is_unreachable_the_kept_state_is_paged(
    tmp_path: Path, pg_url: PgServer, pg_db: str
) -> None:
    """PostgreSQL stopped (immediate shutdown): the list answers from the journal's kept
    state (its last full read and every entry written since), an order journaled during the
    outage included, each once; a bad cursor is still 422."""
    rig = make_rig(tmp_path, url=pg_db)
    try:
        ddb, journal = rig.ddb, rig.om.journal
        owners = OwnerStore(ddb.db.engine)
        owners.load()
        t0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

        def claim(i: int) -> OrderIntent:
            cid = f"out-{i}"
            owners.claim(OwnerRow(cid, "t1", f"k{i}", "h", None, None))
            return OrderIntent(
                symbol="AAPL",
                side="buy",
                quantity=Decimal(1),
                order_type="limit",
                limit_price=Decimal(50),
                account="trader:t1",
                client_order_id=cid,
                created_at=t0 + timedelta(seconds=i),
            )

        for i in range(3):
            journal.record_intent(claim(i))
        ddb.drain(timeout=30)
        journal.orders()  # the full read the service makes at start (OrderManager.start)
        late = claim(3)  # its owner row committed before the outage
        pg_url.stop_immediate()  # the database is unreachable from here on
        journal.record_intent(late)  # the log only

        def page(cursor: str | None) -> tuple[list[str], str | None]:
            orders, nxt = list_orders(
                ddb, journal.orders, owners, "t1", "trader:t1", EVERY, 2, cursor
            )
            return [o.client_order_id for o in orders], nxt

        with pytest.raises(sa.exc.DBAPIError) as down:  # the database's own read fails
            list_page(ddb, owners, "t1", "trader:t1", EVERY, 2, None)
        assert is_transient(down.value)
        first, nxt = page(None)
        assert first == ["out-3", "out-2"] and nxt is not None
        second, end = page(nxt)
        assert second == ["out-1", "out-0"] and end is None
        with pytest.raises(ApiError) as bad:
            page("!!")
        assert bad.value.status == 422 and bad.value.field == "cursor"
    finally:
        rig.close()
        pg_url.ensure_running()
