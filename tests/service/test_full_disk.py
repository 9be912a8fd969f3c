"""The log's disk fills up under a running ``atb serve`` (a real 128 KiB tmpfs): the POST
that hit it is a 503 ``log_failed``, trading halts, ``/readyz`` says why, and every order
acknowledged before is still there after a restart on a disk with room."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_proc import ServiceProc, auth


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: cannot make a real full disk")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"mounting a 128k tmpfs is not permitted here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True, capture_output=True)


def test_a_full_log_disk_is_503_log_failed_and_readyz_says_why(
    tiny_tmpfs: Path, tmp_path: Path
) -> None:
    svc = ServiceProc(
        tmp_path, f"sqlite:///{tmp_path / 'atb.db'}", env={"ORDER_RATE_LIMIT": "10000"}
    )
    svc.wal_dir = tiny_tmpfs / "wal"
    token = svc.token("filler")
    svc.start()
    acked: list[str] = []
    try:
        svc.wait_ready()
        with httpx.Client(base_url=svc.url, headers=auth(token), timeout=30) as c:
            for _ in range(2000):
                r = c.post(
                    "/api/v1/orders",
                    json={"symbol": "AAPL", "side": "buy", "quantity": "1"},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                if r.status_code != 201:
                    break
                acked.append(r.json()["id"])
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "log_failed"
            assert "ENOSPC" in r.json()["error"]["message"]
            ready = c.get("/readyz")
            assert ready.status_code == 503
            assert "write-ahead log failed" in ready.json()["error"]["message"]
            after = c.post(
                "/api/v1/orders",
                json={"symbol": "AAPL", "side": "buy", "quantity": "1"},
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            assert after.status_code == 503  # trading stays halted
    finally:
        svc.kill()
    assert acked, "the disk filled before any order"
    # a disk with room: every acknowledged order is in the journal
    shutil.copytree(tiny_tmpfs / "wal", tmp_path / "wal2")
    svc.wal_dir = tmp_path / "wal2"
    svc.start()
    try:
        svc.wait_ready()
        listed = httpx.get(
            svc.url + "/api/v1/orders", params={"limit": 500}, headers=auth(token), timeout=30
        ).json()["orders"]
        assert set(acked) <= {o["id"] for o in listed}
    finally:
        svc.stop()
