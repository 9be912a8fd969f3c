"""The event stream: every journal event of the trader's orders, in order, with its seq;
``?since=SEQ`` resumes without a gap; a client that does not read is disconnected with a
reason and never slows trading. Against a real ``atb serve`` (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from orders_helpers import buy, make_rig, run
from service_proc import ServiceProc, auth
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from cli.main import atb
from wal.service.events import EventHub

KINDS = ["created", "submitted", "accepted", "fill"]  # a market order on the paper broker


def place(svc: ServiceProc, token: str, n: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=svc.url, headers=auth(token), timeout=30) as c:
        for _ in range(n):
            r = c.post(
                "/api/v1/orders",
                json={"symbol": "AAPL", "side": "buy", "quantity": "1"},
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    return ids


def ws_url(svc: ServiceProc, token: str, since: int | None = None) -> str:
    url = svc.url.replace("http://", "ws://") + f"/ws/orders/events?token={token}"
    return url if since is None else url + f"&since={since}"


def read_until_ready(ws: ClientConnection) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    got = []
    while True:
        m = json.loads(ws.recv(timeout=30))
        if m.get("type") == "ready":
            return got, m
        got.append(m)


def read_events(ws: ClientConnection, want: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < want:
        out.append(json.loads(ws.recv(timeout=30)))
    return out


def test_live_events_in_order_then_a_resume_misses_nothing(svc: ServiceProc) -> None:
    token = svc.token("streamer")
    with connect(ws_url(svc, token)) as ws:
        _, ready = read_until_ready(ws)
        ids = place(svc, token, 3)
        evs = read_events(ws, 4 * len(ids))
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > ready["seq"]
    for cid in ids:
        assert [e["kind"] for e in evs if e["client_order_id"] == cid] == KINDS
        assert [e["order_seq"] for e in evs if e["client_order_id"] == cid] == [1, 2, 3, 4], evs
    fill = next(e for e in evs if e["kind"] == "fill")
    assert fill["fill"]["quantity"] == "1" and fill["state"] == "filled"
    # disconnected after the second order's events: a resume from there gets the rest, once
    cut = evs[7]["seq"]
    more = place(svc, token, 2)  # while nobody is connected
    with connect(ws_url(svc, token, since=cut)) as ws:
        missed, ready2 = read_until_ready(ws)
    assert [e["seq"] for e in missed] == [e["seq"] for e in evs[8:]] + [
        e["seq"] for e in missed[len(evs) - 8 :]
    ]
    assert {e["client_order_id"] for e in missed} == {ids[2], *more}
    assert len(missed) == 4 + 8
    assert ready2["seq"] == missed[-1]["seq"]


def test_a_client_that_does_not_read_never_slows_trading_and_resumes(svc: ServiceProc) -> None:
    token = svc.token("sleepy")
    with connect(ws_url(svc, token), max_size=None) as ws:
        _, ready = read_until_ready(ws)
        ids = place(svc, token, 25)  # 100 events for a client whose queue holds 8
        got: list[dict[str, Any]] = []
        reason = None
        try:
            while len(got) < 4 * len(ids):
                got.append(json.loads(ws.recv(timeout=30)))
        except ConnectionClosed as exc:
            reason = exc.rcvd
    assert len(ids) == 25  # every POST was answered while the client read nothing
    last = got[-1]["seq"] if got else ready["seq"]
    if reason is not None:  # disconnected for falling behind: it says why and where from
        assert reason.code == 4008
        assert f"since={last}" in reason.reason
    with connect(ws_url(svc, token, since=last)) as ws:
        rest, _ = read_until_ready(ws)
    everything = got + rest
    pairs = [(e["client_order_id"], e["order_seq"]) for e in everything]
    assert len(pairs) == len(set(pairs)) == 4 * len(ids)
    assert {cid for cid, _ in pairs} == set(ids)
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs)


def test_the_hub_disconnects_a_full_client_without_waiting() -> None:
    async def run() -> None:
        hub = EventHub(lambda cid: "t", queue_size=2)
        slow = hub.subscribe("t")
        fast = hub.subscribe("t")
        for seq in range(1, 6):
            hub.publish({"seq": seq, "client_order_id": "c"})  # never awaits a client
            assert fast.wake.is_set()  # its handler wakes for each event
            fast.wake.clear()
            fast.pending.popleft()
        assert slow.overflowed and [e["seq"] for e in slow.pending] == [1, 2]
        assert slow.wake.is_set()  # its handler wakes to close it
        assert not fast.overflowed
        assert hub.overflows == 1
        hub.publish({"seq": 6, "client_order_id": "c"})
        assert hub.overflows == 1 and len(slow.pending) == 2  # counted once, nothing more queued
        other = hub.subscribe("u")
        hub.publish({"seq": 7, "client_order_id": "c"})
        assert not other.pending and not other.wake.is_set()  # another trader's gets nothing

    asyncio.run(run())


@pytest.mark.parametrize(
    "since",
    [
        "abc",
        "-1",
        "5.0",
        "%C2%B2",  # "²": str.isdigit() says yes, int() says no
        "%D9%A1",  # an Arabic-Indic 1: int() would read it
        "9" * 5000,  # past int()'s 4300 digits
        "9" * 30,  # a seq this journal never had: "ready" would be a lie, and every event lost
    ],
)
def test_a_bad_since_is_refused_naming_it(svc: ServiceProc, since: str) -> None:
    token = svc.token("typo")
    url = ws_url(svc, token) + f"&since={since}"
    with connect(url, max_size=None) as ws, pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=30)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 4422 and "since" in info.value.rcvd.reason


def test_a_since_after_the_journals_last_event_is_refused(svc: ServiceProc) -> None:
    token = svc.token("ahead")
    place(svc, token, 1)
    with connect(ws_url(svc, token)) as ws:
        _, ready = read_until_ready(ws)
    head = int(ready["seq"])
    with connect(ws_url(svc, token, since=head)) as ws:  # up to date: fine
        assert read_until_ready(ws)[1]["seq"] == head
    with (
        connect(ws_url(svc, token, since=head + 1000)) as ws,
        pytest.raises(ConnectionClosed) as info,
    ):
        ws.recv(timeout=30)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4422
    assert str(head) in info.value.rcvd.reason


def test_a_revoked_tokens_stream_is_closed(svc: ServiceProc) -> None:
    """Revoked while its stream is open (by the CLI, in another process): the stream is
    closed with 4401 (the service reads open streams' tokens again every second), and the
    trader's other token places an order whose events it never gets."""
    first, second = svc.token("streamer"), svc.token("streamer")
    with connect(ws_url(svc, first)) as ws:
        read_until_ready(ws)
        token_id = first.split("_")[1]
        out = CliRunner().invoke(
            atb, ["serve", "--database-url", svc.db_url, "token", "revoke", token_id]
        )
        assert out.exit_code == 0, out.output
        with pytest.raises(ConnectionClosed) as info:
            while True:  # until it is closed (any event before: placed before the revocation)
                ws.recv(timeout=30)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401
    assert "revoked" in info.value.rcvd.reason
    place(svc, second, 1)  # the trader's other token still works


def test_a_resume_older_than_the_kept_events_reads_the_journal(tmp_path: Path) -> None:
    """Past the events kept in memory, a resume reads the journal: its database rows (read
    without stopping the sync thread) and its pending log entries, every event once, in
    seq order, whichever of the two holds it."""
    rig = make_rig(tmp_path)
    hub = EventHub(lambda cid: "t", queue_size=100)
    hub.attach(rig.ddb, asyncio.new_event_loop())

    async def orders(n: int) -> None:
        await rig.om.start()
        for _ in range(n):
            await rig.om.submit(buy("1"))

    try:
        run(orders(3))
        rig.ddb.force_sync()  # these are rows now
        run(orders(2))  # these may still be pending entries
        every = hub._from_journal(0)
        seqs = [int(e["seq"]) for e in every]
        assert seqs == sorted(set(seqs))
        cids = {e["client_order_id"] for e in every}
        assert len(cids) == 5
        assert sum(e["kind"] == "created" for e in every) == 5
        assert [e["seq"] for e in hub.backlog("t", seqs[4])] == seqs[5:]
    finally:
        rig.close()
