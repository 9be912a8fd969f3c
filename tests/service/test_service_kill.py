"""The service killed (SIGKILL) in the middle of a POST, then the client's retry with the
same Idempotency-Key after a restart: one order at the broker, never two. Also: /readyz and
POST while the startup reconciliation fails (halted), and a 202 with state ``unknown``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from helpers_log import wait_for
from service_proc import ServiceProc, auth

from wal.orders import Fault, FaultPlan
from wal.service.owners import client_order_id_for

MARKET = {"symbol": "AAPL", "side": "buy", "quantity": "3"}


def post(svc: ServiceProc, token: str, key: str) -> httpx.Response:
    headers = auth(token) | {"Idempotency-Key": key}
    return httpx.post(svc.url + "/api/v1/orders", json=MARKET, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("point", "at_broker", "state", "database"),
    [
        # accepted at the broker, the journal did not know yet: on both databases
        ("order.after_broker_accept", 1, "filled", "sqlite"),
        pytest.param(
            "order.after_broker_accept", 1, "filled", "postgresql", marks=pytest.mark.postgres
        ),
        ("order.after_submitting_fsync", 0, "submit_failed", "sqlite"),  # journaled, never sent
        # acknowledged and filled in one write (a market order fills at once), not answered
        ("order.after_fill_fsync", 1, "filled", "sqlite"),
    ],
)
def test_sigkill_mid_post_then_the_same_key_is_one_order(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    point: str,
    at_broker: int,
    state: str,
    database: str,
) -> None:
    db_url = (
        f"sqlite:///{tmp_path / 'atb.db'}"
        if database == "sqlite"
        else str(request.getfixturevalue("pg_db"))
    )
    svc = ServiceProc(tmp_path, db_url)
    token = svc.token("killer")
    key = uuid.uuid4().hex
    cid = client_order_id_for("killer", key)
    svc.start(extra_env={"WAL_CRASH_POINT": point})
    svc.wait_ready()
    with pytest.raises(httpx.TransportError):  # the process died mid-request
        post(svc, token, key)
    assert svc.kill() == 137  # it exited at the crash point
    assert len(svc.broker_orders(cid)) == at_broker
    svc.start()
    try:
        svc.wait_ready()  # recovery and reconciliation looked the order up by its client id
        r = post(svc, token, key)
        assert r.status_code == 200, r.text  # the same order, not a new one
        order = r.json()
        assert order["id"] == cid and order["state"] == state
        assert len(svc.broker_orders(cid)) == at_broker  # never a second order
        again = post(svc, token, key)
        assert again.status_code == 200 and again.json()["id"] == cid
        audit = httpx.get(svc.url + f"/api/v1/orders/{cid}/audit", headers=auth(token)).json()
        assert audit["verified"] is True
    finally:
        svc.stop()


def _faults(tmp_path: Path, plan: FaultPlan) -> str:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(plan.to_dict()))
    return str(path)


def test_readyz_and_post_are_503_with_the_reason_while_reconciliation_fails(
    tmp_path: Path,
) -> None:
    plan = FaultPlan().on("get_open_orders", Fault.FETCH_FAILURE, times=10_000)
    svc = ServiceProc(
        tmp_path,
        f"sqlite:///{tmp_path / 'atb.db'}",
        env={"SERVICE_RECONCILE_BACKOFF": "0.01"},
        args=["--paper-faults", _faults(tmp_path, plan)],
    )
    token = svc.token("waiter")
    svc.start()
    try:

        def failed() -> bool:  # the reconciliation's outcome: 503 all along, then "failed"
            r = httpx.get(svc.url + "/readyz")
            assert r.status_code == 503, r.text
            return "failed" in r.json()["error"]["message"]

        wait_for(failed, "the startup reconciliation to fail", timeout=60)
        r = httpx.get(svc.url + "/readyz")
        err = r.json()["error"]
        assert err["code"] == "not_ready"
        assert err["message"].startswith("startup reconciliation failed")
        assert err["details"]["reconciliation"]["state"] == "failed"
        p = post(svc, token, uuid.uuid4().hex)
        assert p.status_code == 503 and p.json()["error"]["code"] == "halted", p.text
        assert p.headers["Retry-After"]
        assert httpx.get(svc.url + "/healthz").status_code == 200  # the process answers
        assert "atb_service_ready 0.0" in httpx.get(svc.url + "/metrics").text
    finally:
        svc.stop()


def test_an_outcome_not_known_yet_is_202_unknown(tmp_path: Path) -> None:
    plan = (
        FaultPlan()
        .on("submit_order", Fault.TIMEOUT_AFTER_ACCEPT)
        .on("get_order_by_client_id", Fault.FETCH_FAILURE, times=10_000)
    )
    svc = ServiceProc(
        tmp_path,
        f"sqlite:///{tmp_path / 'atb.db'}",
        args=["--paper-faults", _faults(tmp_path, plan)],
    )
    token = svc.token("unsure")
    svc.start()
    try:
        svc.wait_ready()
        key = uuid.uuid4().hex
        r = post(svc, token, key)
        assert r.status_code == 202, r.text
        assert r.json()["state"] == "unknown"
        again = post(svc, token, key)  # the retry chases it; still unknown, never resent
        assert again.status_code == 200 and again.json()["state"] == "unknown"
        assert len(svc.broker_orders(r.json()["id"])) == 1
    finally:
        svc.stop()
