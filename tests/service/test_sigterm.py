"""``atb serve`` stopped by SIGTERM while traders are posting: it stops accepting, finishes
what is in flight, anchors the audit chain, closes the log and exits 0; the log then opens
clean and every acknowledged order is there, and a request that got no answer, retried with
its Idempotency-Key after the restart, is one order at the broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
from service_proc import ROOT, ServiceProc, auth

MARKET = {"symbol": "AAPL", "side": "buy", "quantity": "1"}
CLIENTS = 4
BEFORE_SIGTERM = 12  # answers received before the signal is sent: requests are flowing


def atb(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_sigterm_while_posting_exits_0_closes_the_log_and_loses_no_acknowledged_order(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    svc = ServiceProc(tmp_path, url, env={"ORDER_RATE_LIMIT": "100000"})
    token = svc.token("leaving")
    svc.start()
    svc.wait_ready()
    acked: dict[str, str] = {}  # key -> order id, answered 201/202
    unanswered: list[str] = []  # keys whose request got no answer (refused or cut)
    lock = threading.Lock()
    flowing = threading.Semaphore(0)
    done = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not done.is_set():
                key = uuid.uuid4().hex
                headers = auth(token) | {"Idempotency-Key": key}
                try:
                    r = http.post(svc.url + "/api/v1/orders", json=MARKET, headers=headers)
                except httpx.TransportError:
                    with lock:
                        unanswered.append(key)
                    return  # the service is gone
                if r.status_code == 503:  # shutting down: refused, nothing placed
                    with lock:
                        unanswered.append(key)
                    continue
                assert r.status_code in (201, 202), r.text
                with lock:
                    acked[key] = r.json()["id"]
                flowing.release()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        for _ in range(BEFORE_SIGTERM):
            assert flowing.acquire(timeout=60), "the clients' orders are not being answered"
        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGTERM)
        code = svc.proc.wait(60)
        stderr = svc.proc.stderr.read() if svc.proc.stderr else ""
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert code == 0, stderr  # stopped, not killed by its own signal
    assert "Traceback" not in stderr, stderr
    assert len(acked) >= BEFORE_SIGTERM

    # the log opens clean: no torn tail, no defect; the audit chain ends with its anchor
    verify = atb("wal", "--dir", str(svc.wal_dir), "verify", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    audit = atb("orders", "--dir", str(svc.wal_dir), "--database-url", url, "verify", "--json")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report: dict[str, Any] = json.loads(audit.stdout)
    assert report["ok"] is True

    svc.start()
    try:
        svc.wait_ready()
        listed: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 500} | ({"cursor": cursor} if cursor else {})
            doc = httpx.get(
                svc.url + "/api/v1/orders", headers=auth(token), params=params, timeout=30
            ).json()
            listed += [o["id"] for o in doc["orders"]]
            cursor = doc["next_cursor"]
            if cursor is None:
                break
        assert set(acked.values()) <= set(listed)  # every acknowledged order survived
        for key in unanswered:  # the client's retry: the same order, or the first one
            r = httpx.post(
                svc.url + "/api/v1/orders",
                json=MARKET,
                headers=auth(token) | {"Idempotency-Key": key},
                timeout=30,
            )
            assert r.status_code in (200, 201), r.text
            assert len(svc.broker_orders(r.json()["id"])) == 1
        for cid in acked.values():
            assert len(svc.broker_orders(cid)) == 1
    finally:
        assert svc.stop() == 0
