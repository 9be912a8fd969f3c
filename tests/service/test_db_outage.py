"""The service's database becomes unreachable under a running ``atb serve`` (PostgreSQL behind
a TCP proxy that is then closed): every request that needs the database answers 503
``database_unavailable`` with ``Retry-After`` in the one error shape (never a 500, never the
host or port), ``/healthz`` still answers, and the order acknowledged before the outage is
still there once the service restarts on the database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pg import PgServer
from service_proc import ServiceProc, auth
from tcp_proxy import TCPProxy

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_db(pg_url: PgServer) -> Iterator[tuple[PgServer, str]]:
    pg_url.ensure_running()
    name = pg_url.create_database()
    try:
        yield pg_url, name
    finally:
        pg_url.drop_database(name)


def test_database_down_answers_503_and_nothing_is_lost(
    pg_db: tuple[PgServer, str], tmp_path: Path
) -> None:
    server, name = pg_db
    proxy = TCPProxy((server.host, server.port))
    proxied = server.database_url(name, host="127.0.0.1", port=proxy.port)
    svc = ServiceProc(tmp_path, proxied)
    try:
        svc.start()
        svc.wait_ready()
        token = svc.token("carol")
        key = uuid.uuid4().hex
        body = {"symbol": "AAPL", "side": "buy", "quantity": "1"}
        r = httpx.post(
            svc.url + "/api/v1/orders",
            json=body,
            headers=auth(token) | {"Idempotency-Key": key},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        order_id = r.json()["id"]

        proxy.close()  # the database is gone: connections cut, new ones refused

        for method, path, kwargs in (
            ("GET", "/api/v1/orders", {}),
            ("GET", f"/api/v1/orders/{order_id}", {}),
            (
                "POST",
                "/api/v1/orders",
                {
                    "json": body,
                    "headers": auth(token) | {"Idempotency-Key": uuid.uuid4().hex},
                },
            ),
        ):
            kwargs = {"headers": auth(token), **kwargs}
            r = httpx.request(method, svc.url + path, timeout=60, **kwargs)
            assert r.status_code == 503, (method, path, r.status_code, r.text)
            err = r.json()["error"]
            assert err["code"] == "database_unavailable", r.text
            assert int(r.headers["Retry-After"]) >= 1
            assert str(server.port) not in r.text and "127.0.0.1" not in r.text
        assert httpx.get(svc.url + "/healthz", timeout=30).status_code == 200
    finally:
        proxy.close()
        svc.kill()

    # the database back (direct this time): the order acknowledged before the outage is there
    again = ServiceProc(tmp_path, server.database_url(name))
    again.start()
    try:
        again.wait_ready()
        r = httpx.post(
            again.url + "/api/v1/orders",
            json=body,
            headers=auth(token) | {"Idempotency-Key": key},
            timeout=30,
        )
        assert r.status_code == 200, r.text  # the same key: the same order, not a second
        assert r.json()["id"] == order_id
        assert len(again.broker_orders(r.json()["client_order_id"])) == 1
    finally:
        again.stop()
