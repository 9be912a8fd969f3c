"""The paper broker as its own process (``atb paper-broker serve``), for the HTTP tests.

``PaperProcess(tmp, scope=..., plan=..., tick=...)`` starts it on a free port (or ``port``:
a broker restarted where its clients know it) with a durable state file in ``tmp`` and reads
back "listening on URL"; ``.http`` is an httpx client for the checks (orders, positions,
fills, stats) and the test controls (faults, clock, price).
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson

from wal.orders import FaultPlan

HERE = Path(__file__).parent


class PaperProcess:
    def __init__(
        self,
        tmp: Path,
        *,
        scope: str = "global",
        plan: FaultPlan | None = None,
        tick: float = 0.0,
        seed: int = 1,
        port: int = 0,
    ) -> None:
        faults = tmp / "faults.json"
        faults.write_bytes(orjson.dumps((plan or FaultPlan(seed=seed)).to_dict()))
        self.state = tmp / "paper.json"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "cli.main", "paper-broker", "serve",
                "--port", str(port),
                "--state", str(self.state),
                "--dedup-scope", scope,
                "--visibility-window", "0",
                "--faults", str(faults),
                "--seed", str(seed),
                "--tick", str(tick),
            ],
            stdout=subprocess.PIPE,
            cwd=HERE.parents[1],
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("listening on "), line
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def orders(self) -> list[dict[str, Any]]:
        r = self.http.get(
            "/v2/orders", params={"status": "all", "after": "2000-01-01T00:00:00+00:00"}
        )
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()
        return result

    def open_orders(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.http.get("/v2/orders").json()
        return result

    def positions(self) -> dict[str, Decimal]:
        return {p["symbol"]: Decimal(p["qty"]) for p in self.http.get("/v2/positions").json()}

    def writes(self) -> int:
        st = self.http.get("/_paper/stats").json()
        return int(st["submit_calls"]) + int(st["cancel_calls"])

    def set_faults(self, plan: FaultPlan) -> None:
        self.http.put("/_paper/faults", content=orjson.dumps(plan.to_dict())).raise_for_status()

    def clock(self, running: bool) -> None:
        self.http.put("/_paper/clock", content=orjson.dumps({"running": running}))

    def submit(self, **body: Any) -> dict[str, Any]:
        r = self.http.post("/v2/orders", json=body)
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def close(self) -> None:
        """SIGTERM, as an operator stops it: a graceful stop, exit code 0."""
        self.http.close()
        self.proc.terminate()
        rc = self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        assert rc == 0, f"atb paper-broker serve exited {rc} on SIGTERM (expected 0)"
