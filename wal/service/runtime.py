"""``ServiceRuntime``: the engine the service serves: the log, the broker, the order manager.

It owns the ``DurableDatabaseManager`` (this process is the log's one writer), the broker
(the in-process ``PaperBroker`` for ``atb serve --paper``), the ``OrderManager`` and its
``StartupReconciler``. ``start()`` answers at once (``/healthz``) and runs the startup
recovery and reconciliation in the background: trading stays halted, and ``/readyz`` says
503 with the reason, until it succeeded. A failure of the log itself (``WALWriteError``)
halts trading for good (until a restart) and is ``/readyz``'s reason too.

Its ``desk`` (``wal.service.placing.OrderDesk``) places and cancels the traders' orders; its
``health`` (``wal.service.health.LogHealth``) is whether the log failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from typing import Any

from wal import DurableDatabaseManager
from wal.errors import WALWriteError
from wal.masking import mask_text
from wal.orders import (
    Broker,
    EventKind,
    Order,
    OrderManager,
    OrderState,
    PaperBroker,
    ReconcilerConfig,
    RetryPolicy,
    RiskLimits,
    StartupReconciler,
)
from wal.service.brackets import Brackets
from wal.service.config import ServiceConfig
from wal.service.events import EventHub
from wal.service.health import LogHealth
from wal.service.owners import OwnerStore
from wal.service.placing import OrderDesk, Placed
from wal.service.ratelimit import RateLimiter
from wal.service.schemas import OrderRequest
from wal.service.tokens import TokenStore
from wal.sync.halt import operator_halt

__all__ = ["ServiceRuntime"]

log = logging.getLogger("wal.service")

_LIVE = (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED)
_UNPROTECTED = re.compile(r"position (\S+) (\S+) is UNPROTECTED")  # wal.orders.stops' error

STOP_TIMEOUT_S = 10.0  # each step of a stop: cancelling the background work, the anchor


def why_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ServiceRuntime:
    """The engine behind the service (module docstring)."""

    def __init__(
        self,
        ddb: DurableDatabaseManager,
        broker: Broker,
        config: ServiceConfig,
        *,
        risk: RiskLimits | None = None,
        retry: RetryPolicy | None = None,
        reconciler: ReconcilerConfig | None = None,
        paper: PaperBroker | None = None,
        venue: str = "paper",
        paper_tick: float = 0.0,
    ) -> None:
        self.ddb = ddb
        self.broker = broker
        self.config = config
        self.paper = paper
        self.venue = venue
        self.paper_tick = paper_tick
        engine = ddb.db.engine
        self.owners = OwnerStore(engine)
        self.tokens = TokenStore(engine)
        self.hub = EventHub(self.owners.trader_of, config.ws_queue)
        self.limiter = RateLimiter(config.rate_limit)
        price = paper.price if paper is not None else None
        self.om = OrderManager(ddb, broker, risk=risk, retry=retry, price_source=price)
        self.reconciler = StartupReconciler(self.om, reconciler)  # halts until it succeeded
        self.brackets = Brackets(self.om, self.owners)  # stop_loss / take_profit at the broker
        self._bracket_queue: asyncio.Queue[str] | None = None
        self._bracket_due: set[str] = set()
        self._brackets_ready = asyncio.Event()  # set once startup converged them (no fight)
        self.reconciliation: dict[str, Any] = {"state": "pending"}
        self.health = LogHealth(self.om)
        self.desk = OrderDesk(
            ddb,
            self.om,
            self.owners,
            self.limiter,
            self.brackets,
            self.health,
            kick_bracket=self.kick_bracket,
            paper_balance=config.paper_balance,
        )
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the owners, listen to the log; recovery and reconciliation in the background."""
        await asyncio.to_thread(self.owners.load)
        self.brackets.load()
        self.hub.attach(self.ddb, asyncio.get_running_loop())
        await asyncio.to_thread(self.hub.load_head)
        self._bracket_queue = asyncio.Queue()
        self._tasks.append(asyncio.create_task(self._bracket_events()))
        self._tasks.append(asyncio.create_task(self.hub.watch_tokens(self.tokens.live)))
        self._startup_task = asyncio.create_task(self._startup())
        self._tasks.append(self._startup_task)

    async def started(self) -> None:
        """Wait for the startup recovery and reconciliation (succeeded or failed)."""
        await asyncio.shield(self._startup_task)

    async def _startup(self) -> None:
        self.reconciliation = {"state": "running"}
        try:
            await self.om.start()  # orders a crash left unfinished: looked up by client id
            # brackets first: the reconciler then finds the traders' stops in place, exact
            await self._sweep_brackets("before the reconciliation")
            result = await self.reconciler.run()
            await self._sweep_brackets("after the reconciliation")  # what its phase 1 booked
            self._brackets_ready.set()
        except WALWriteError as exc:
            self.fail_log(exc)
            self.reconciliation = {"state": "failed", "reason": str(exc)}
            return
        except Exception as exc:
            # public (/readyz): never a password a database error quoted
            why = mask_text(f"{type(exc).__name__}: {exc}")
            self.reconciliation = {"state": "failed", "reason": why}
            log.critical("startup reconciliation failed; trading stays halted: %s", why)
            return
        self.reconciliation = {"state": "succeeded", "result": dataclasses.asdict(result)}
        self._tasks.append(asyncio.create_task(self._poll()))

    async def _sweep_brackets(self, when: str) -> None:
        """Converge every bracket; only a failure of the log stops the startup."""
        try:
            await self.brackets.sweep()
        except WALWriteError:
            raise
        except Exception as exc:
            log.error("brackets %s: %s", when, why_text(exc))

    def kick_bracket(self, parent: str) -> None:
        """Converge ``parent``'s bracket soon (once per burst of its events)."""
        if self._bracket_queue is not None and parent not in self._bracket_due:
            self._bracket_due.add(parent)
            self._bracket_queue.put_nowait(parent)

    async def _bracket_events(self) -> None:
        """Every journal event of a bracket parent or child converges its bracket (one at a
        time, after startup converged them all: never beside the reconciler)."""
        assert self._bracket_queue is not None
        queue = self._bracket_queue

        async def listen() -> None:
            async for ev in self.om.events():
                parent = self.brackets.parent_of(ev.client_order_id)
                if parent is not None:
                    self.kick_bracket(parent)
                elif ev.kind in (EventKind.FILL, EventKind.FILL_CORRECTED):
                    for p in self.brackets.active:  # a position moved: the caps may have
                        self.kick_bracket(p)

        listener = asyncio.create_task(listen())
        try:
            await self._brackets_ready.wait()
            while True:
                parent = await queue.get()
                self._bracket_due.discard(parent)
                try:
                    await self.brackets.converge(parent)
                except WALWriteError as exc:
                    self.fail_log(exc)
                    return
                except Exception as exc:
                    log.error("bracket of %s: %s", parent, why_text(exc))
        finally:
            listener.cancel()

    async def _poll(self) -> None:
        """Fills of open orders (and the paper market's prices) every ``poll_interval``."""
        while True:
            await asyncio.sleep(self.config.poll_interval)
            if self.paper is not None and self.paper_tick > 0:
                self.paper.step_prices()
            try:
                # each live order refreshed under its own lock: OrderManager.poll_fills takes
                # no per-order lock and can journal a fill with the seq a concurrent submit's
                # ACCEPTED event takes (reported to the orders worker)
                for o in self.om.open_orders():
                    if o.state in _LIVE:
                        await self.om.refresh(o.client_order_id)
                for parent in self.brackets.stalled:  # waited on an outcome: looked at again
                    self.kick_bracket(parent)
            except WALWriteError as exc:
                self.fail_log(exc)
                return
            except Exception as exc:
                log.warning("fill poll failed: %s", exc)

    async def stop(self) -> None:
        """Cancel the background work and anchor the audit chain, each within a bound: a
        SIGTERM always stops the service (the log keeps what was acknowledged; a missing
        session anchor is reported by `atb orders verify`, never a loss)."""
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
            if stuck:
                log.error("%d background task(s) still running at stop", len(stuck))
        if self.health.failure is None and self.reconciliation.get("state") == "succeeded":
            try:
                # the session's anchor of the audit chain
                await asyncio.wait_for(self.om.close(), STOP_TIMEOUT_S)
            except Exception as exc:  # TimeoutError included: the process stops all the same
                log.error("the session's audit anchor was not written: %s", why_text(exc))

    def fail_log(self, exc: BaseException) -> None:
        """The log failed: trading halts until the process is restarted on a sound disk."""
        self.health.fail(exc)

    def readiness(self) -> str | None:
        """None when ready; else why not (the reconciliation, the halt, the log)."""
        if self.health.failure is not None:
            return f"the write-ahead log failed: {self.health.failure}"
        state = self.reconciliation.get("state")
        if state != "succeeded":
            reason = self.reconciliation.get("reason")
            return f"startup reconciliation {state}" + (f": {reason}" if reason else "")
        if self.om.halted is not None:
            return f"trading is halted: {self.om.halted}"
        op = operator_halt(self.ddb)  # `atb orders halt`: the operator's kill switch
        if op is not None:
            return f"trading is {op.public()}"
        return None

    def status(self) -> dict[str, Any]:
        """``/readyz``'s body. The endpoint is public: the reconciliation's counts, not what it
        did (its actions and errors name symbols, sizes, stop levels and order ids: the
        service's log has them), and the operator's halt without who threw it."""
        wal = self.ddb.get_wal_status()
        rec = dict(self.reconciliation)
        if isinstance(rec.get("result"), dict):
            result = dict(rec["result"])
            result["actions"] = len(result.get("actions") or ())
            result["errors"] = len(result.get("errors") or ())
            rec["result"] = result
        op = operator_halt(self.ddb)
        return {
            "ready": self.readiness() is None,
            "reason": self.readiness(),
            "reconciliation": rec,
            "halted": self.om.halted,
            "operator_halt": None if op is None else {"reason": op.reason, "at": op.at},
            "log": {
                "failed": self.health.failure,
                "pending": wal.get("pending"),
                "breaker": wal.get("breaker_state"),
            },
            "websocket_clients": self.hub.clients,
            # listed, not a reason to be unready: trading (and closing) can go on (docs)
            "unprotected": self.unprotected(),
        }

    def unprotected(self) -> list[dict[str, Any]]:
        """Positions not (fully) protected: bracket children that could not be placed
        (until placed or nothing is held), and what the startup reconciliation reported
        UNPROTECTED (until a restart). No trader's or order's id: ``/readyz`` is public."""
        out = [m.to_dict(ids=False) for m in self.brackets.missing()]
        result = self.reconciliation.get("result") or {}
        for err in result.get("errors", ()):
            found = _UNPROTECTED.search(str(err))
            if found is not None and not any(
                u["source"] == "reconciliation" and u["symbol"] == found.group(2) for u in out
            ):
                out.append(
                    {
                        "source": "reconciliation",
                        "symbol": found.group(2),
                        "missing": "stop",
                        "quantity": found.group(1),
                        "reason": f"at the startup reconciliation: {err}",
                        "since": None,
                    }
                )
        return out

    # ------------------------------------------------------------------ the traders' orders

    async def place(self, trader: str, key: str, req: OrderRequest) -> Placed:
        """The order under (trader, key): ``OrderDesk.place``."""
        return await self.desk.place(trader, key, req)

    async def cancel(self, cid: str) -> Order:
        """Cancel an open order: ``OrderDesk.cancel``."""
        return await self.desk.cancel(cid)
