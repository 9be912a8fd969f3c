"""A real ``atb serve`` process for the service tests: started, waited for, killed.

``ServiceProc(tmp_path, db_url)``: ``start()`` spawns ``python -m cli.main serve --port 0``
(its own log directory, the paper broker's state file next to it) and reads the URL it
prints; ``wait_ready()`` polls ``/readyz`` until it is 200 (or the process died);
``kill()`` is a SIGKILL; ``stop()`` a SIGTERM (graceful); ``token(trader)`` makes a bearer
token in the database (what ``atb serve token create`` does).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx
import orjson

from wal.db import DatabaseManager
from wal.db.versioning import ensure_schema
from wal.orders import Fault, FaultPlan
from wal.orders.paper import PaperBroker
from wal.service.tokens import TokenStore

ROOT = Path(__file__).resolve().parents[2]
FAST_ENV = {
    "ORDER_RETRY_BASE_DELAY": "0",
    "ORDER_CALL_TIMEOUT": "2",
    "SERVICE_POLL_INTERVAL": "0.1",
    "WAL_SYNC_INTERVAL": "0.2",
    "PYTHONFAULTHANDLER": "1",  # a hung stop is SIGABRTed: its threads' stacks in stderr
}


def _drain(stream: IO[str]) -> None:
    """Read a child's pipe to its end, then close it."""
    with contextlib.suppress(OSError, ValueError), stream:
        while stream.read(65536):
            pass


class ServiceProc:
    def __init__(
        self,
        tmp: Path,
        db_url: str,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.tmp = tmp
        self.db_url = db_url
        self.wal_dir = tmp / "wal"
        self.paper_state = tmp / "paper.json"
        self.env = dict(env or {})
        self.args = list(args)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.starts = 0
        self.stderr_path: Path | None = None

    def start(self, *, extra_env: Mapping[str, str] | None = None) -> str:
        env = {**os.environ, **FAST_ENV, **self.env, **(extra_env or {})}
        env.pop("DATABASE_URL", None)
        env["PYTHONPATH"] = str(ROOT)
        cmd = [
            sys.executable,
            "-m",
            "cli.main",
            "serve",
            "--port",
            "0",
            "--dir",
            str(self.wal_dir),
            "--database-url",
            self.db_url,
            "--paper-state",
            str(self.paper_state),
            *self.args,
        ]
        # stderr to a file, never a pipe nobody reads: a full pipe blocks the service's logging
        self.stderr_path = self.tmp / f"serve-{self.starts}.stderr"
        self.starts += 1
        with open(self.stderr_path, "w") as err_file:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, env=env, cwd=ROOT
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.stdout.close()
            self.proc.wait(10)
            raise RuntimeError(
                f"atb serve did not start ({self.proc.returncode}): {line}{self.stderr()}"
            )
        # the rest of stdout drained in the background, for the same reason
        threading.Thread(target=_drain, args=(self.proc.stdout,), daemon=True).start()
        self.url = line.split()[-1]
        return self.url

    def wait_ready(self, timeout: float = 60.0) -> dict[str, object]:
        """Poll /readyz until 200; the body. Fails if the process died or never got ready."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"atb serve exited {self.proc.returncode}: {self.stderr()}")
            r = httpx.get(self.url + "/readyz", timeout=5)
            if r.status_code == 200:
                body: dict[str, object] = r.json()
                return body
            last = r.json()
            time.sleep(0.05)  # polling a condition, not a timing assumption
        raise AssertionError(f"never ready: {last}")

    def stderr(self) -> str:
        """What the service wrote to stderr so far (its log, a traceback)."""
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(30)
            tail = self.stderr()[-8000:]
            raise AssertionError(f"atb serve did not stop on SIGTERM:\n{tail}") from None

    def token(self, trader: str) -> str:
        db = DatabaseManager(self.db_url)
        try:
            ensure_schema(db.engine, db.safe_url)
            return TokenStore(db.engine).create(trader)
        finally:
            db.dispose()

    def broker_orders(self, client_order_id: str) -> list[dict[str, object]]:
        """The paper broker's orders with this client id, from its durable state file."""
        if not self.paper_state.exists():  # the broker never accepted anything
            return []
        state = PaperBroker.read_state(self.paper_state)
        assert state is not None
        return [o for o in state["orders"] if o["order"]["client_order_id"] == client_order_id]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refusing_second_submit(tmp: Path, reason: str) -> ServiceProc:
    """A service (SQLite in ``tmp``) whose paper broker refuses its 2nd submit with
    ``reason``: a bracketed order's stop-loss, placed after its filled parent."""
    plan = FaultPlan(reject_reason=reason).on("submit_order", Fault.REJECT, nth=2)
    faults = tmp / "faults.json"
    faults.write_bytes(orjson.dumps(plan.to_dict()))
    return ServiceProc(tmp, f"sqlite:///{tmp / 'atb.db'}", args=["--paper-faults", str(faults)])
