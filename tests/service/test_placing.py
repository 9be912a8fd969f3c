"""wal.service.placing: the owner row's commit is begun before ``OrderManager.submit`` and
awaited by it just before the intent is journaled (``before_journal``). So a claim the
database refuses places nothing: no journal entry, no broker order, the key free again and
the rate token given back; and the same key then places exactly one order."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from service_runtime import started_runtime

from wal.db.service_schema import service_orders
from wal.service.errors import ApiError
from wal.service.owners import client_order_id_for
from wal.service.runtime import ServiceRuntime
from wal.service.schemas import OrderRequest

BUY = OrderRequest(symbol="AAPL", side="buy", quantity=Decimal(1), order_type="market")
REFUSE = (
    "CREATE TRIGGER refuse_owner BEFORE INSERT ON service_orders "
    "BEGIN SELECT RAISE(ABORT, 'owner rows refused'); END"
)


def owner_rows(rt: ServiceRuntime) -> set[str]:
    """The client ids of the database's owner rows (not the store's memory)."""
    with rt.ddb.db.engine.connect() as conn:
        return {str(r[0]) for r in conn.execute(sa.select(service_orders.c.client_order_id))}


def test_a_refused_owner_row_places_nothing_and_frees_the_key(tmp_path: Path) -> None:
    async def go() -> None:
        # one order a minute: the refused attempt must give its token back
        async with started_runtime(tmp_path, rate_limit=1) as (rt, paper):
            engine = rt.ddb.db.engine
            with engine.begin() as conn:  # the database itself refuses the row: no mock
                conn.exec_driver_sql(REFUSE)
            cid = client_order_id_for("alice", "k1")
            with pytest.raises(ApiError) as err:
                await rt.desk.place("alice", "k1", BUY)
            assert (err.value.status, err.value.code) == (503, "database_unavailable")
            assert "owner rows refused" in str(err.value)
            assert rt.om.get(cid) is None  # nothing journaled
            assert await paper.get_order_by_client_id(cid) is None  # nothing sent
            assert rt.owners.get(cid) is None and cid not in owner_rows(rt)  # the key is free

            with engine.begin() as conn:
                conn.exec_driver_sql("DROP TRIGGER refuse_owner")
            placed = await rt.desk.place("alice", "k1", BUY)  # not 429: the token came back
            assert placed.status == 201 and placed.order.client_order_id == cid
            again = await rt.desk.place("alice", "k1", BUY)
            assert again.status == 200 and again.order.client_order_id == cid
            assert rt.owners.get(cid) is not None
            bo = await paper.get_order_by_client_id(cid)
            assert bo is not None and bo.filled_quantity == 1  # one order, filled once

    asyncio.run(go())


def test_an_order_refused_by_the_checks_leaves_its_key_free(tmp_path: Path) -> None:
    """The claim runs beside the manager's checks; a refusal waits for it, then frees it."""

    async def go() -> None:
        async with started_runtime(tmp_path) as (rt, paper):
            too_big = OrderRequest(
                symbol="AAPL", side="buy", quantity=Decimal(10**7), order_type="market"
            )
            cid = client_order_id_for("bob", "k1")
            with pytest.raises(ApiError) as err:
                await rt.desk.place("bob", "k1", too_big)
            assert err.value.status == 422
            assert rt.om.get(cid) is None and rt.owners.get(cid) is None
            assert cid not in owner_rows(rt)  # nor committed behind the release
            assert await paper.get_order_by_client_id(cid) is None

    asyncio.run(go())
