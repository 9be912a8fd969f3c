"""``ServiceRuntime``: the engine the service serves: the log, the broker, the order manager.

It owns the ``DurableDatabaseManager`` (this process is the log's one writer), the broker
(the in-process ``PaperBroker`` for ``atb serve --paper``), the ``OrderManager`` and its
``StartupReconciler``. ``start()`` answers at once (``/healthz``) and runs the startup
recovery and reconciliation in the background: trading stays halted, and ``/readyz`` says
503 with the reason, until it succeeded. A failure of the log itself (``WALWriteError``)
halts trading for good (until a restart) and is ``/readyz``'s reason too.

It also places the service's orders (``place``): the Idempotency-Key becomes the client order
id, the owner row is committed first, then ``OrderManager.submit`` journals and sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from wal import DurableDatabaseManager
from wal.errors import WALDatabaseError, WALWriteError
from wal.orders import (
    Broker,
    EventKind,
    Order,
    OrderIntent,
    OrderManager,
    OrderRejected,
    OrderState,
    PaperBroker,
    ReconcilerConfig,
    RetryPolicy,
    RiskLimits,
    StartupReconciler,
    TradingHalted,
)
from wal.service.brackets import Brackets
from wal.service.config import ServiceConfig
from wal.service.errors import ApiError
from wal.service.events import EventHub
from wal.service.owners import OwnerRow, OwnerStore, client_order_id_for
from wal.service.ratelimit import RateLimiter
from wal.service.schemas import OrderRequest
from wal.service.tokens import TokenStore
from wal.sync.halt import operator_halt

__all__ = ["Placed", "ServiceRuntime", "account_of"]

log = logging.getLogger("wal.service")

_UNSETTLED = (OrderState.PENDING, OrderState.SUBMITTING, OrderState.UNKNOWN)
_LIVE = (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED)
_UNPROTECTED = re.compile(r"position (\S+) (\S+) is UNPROTECTED")  # wal.orders.stops' error
_STRIPES = 1024  # locks of the Idempotency-Keys being placed (by their client id's hash)


def account_of(trader_id: str) -> str:
    """The balance account a trader's orders are valued against."""
    return f"trader:{trader_id}"


@dataclass(frozen=True)
class Placed:
    """What ``place`` did: the order, its owner row, and whether it is new."""

    order: Order
    owner: OwnerRow
    created: bool

    @property
    def status(self) -> int:
        """201 new, 200 the same key again, 202 new but its outcome not known yet."""
        if not self.created:
            return 200
        return 202 if self.order.state in _UNSETTLED else 201


STOP_TIMEOUT_S = 10.0  # each step of a stop: cancelling the background work, the anchor
TOKEN_CHECK_S = 1.0  # how often the open event streams' tokens are read again (revocation)


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
        self.log_failure: str | None = None
        self._locks = [asyncio.Lock() for _ in range(_STRIPES)]
        self._funded: set[str] = set()
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
        self._tasks.append(asyncio.create_task(self._watch_stream_tokens()))
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
            self.reconciliation = {"state": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            log.critical("startup reconciliation failed; trading stays halted: %s", exc)
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

    async def _watch_stream_tokens(self) -> None:
        """Every ``TOKEN_CHECK_S``, the open event streams' tokens are read again (one read for
        all): a stream whose token was revoked is closed before it is sent anything more."""
        while True:
            await asyncio.sleep(TOKEN_CHECK_S)
            clients = self.hub.all_clients()
            if not clients:
                continue
            try:
                live = await asyncio.to_thread(self.tokens.live, [c.token for c in clients])
            except Exception as exc:  # the database is down: the streams stay as they are
                log.warning("event streams' tokens not checked: %s", why_text(exc))
                continue
            for c in clients:
                if c.token not in live:
                    c.revoke()

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
        if self.log_failure is None and self.reconciliation.get("state") == "succeeded":
            try:
                # the session's anchor of the audit chain
                await asyncio.wait_for(self.om.close(), STOP_TIMEOUT_S)
            except Exception as exc:  # TimeoutError included: the process stops all the same
                log.error("the session's audit anchor was not written: %s", why_text(exc))

    def fail_log(self, exc: BaseException) -> None:
        """The log failed: trading halts until the process is restarted on a sound disk."""
        self.log_failure = str(exc)
        self.om.halt(f"the write-ahead log failed: {exc}")

    def readiness(self) -> str | None:
        """None when ready; else why not (the reconciliation, the halt, the log)."""
        if self.log_failure is not None:
            return f"the write-ahead log failed: {self.log_failure}"
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
                "failed": self.log_failure,
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

    # ------------------------------------------------------------------ placing orders

    def _lock(self, cid: str) -> asyncio.Lock:
        """The lock of a client id's stripe: one request per key at a time, in bounded memory."""
        return self._locks[int(cid[:8], 16) % len(self._locks)]

    async def place(self, trader: str, key: str, req: OrderRequest) -> Placed:
        """The order under (trader, key): the same one again, or a new one (module doc)."""
        cid = client_order_id_for(trader, key)
        fingerprint = req.fingerprint()
        async with self._lock(cid):
            owner = self.owners.get(cid)
            if owner is not None:
                if owner.request_sha256 != fingerprint:
                    raise ApiError(
                        409,
                        "idempotency_conflict",
                        f"Idempotency-Key {key!r} was used for a different order "
                        f"({owner.client_order_id}); use a new key for a new order",
                        field="Idempotency-Key",
                    )
                order = await asyncio.to_thread(self.om.get, cid)
                if order is not None:
                    if order.state in (OrderState.SUBMITTING, OrderState.UNKNOWN):
                        order = await self._chase(cid, req, trader, order)
                    return Placed(order, owner, created=False)
                # claimed by a run that died (or was refused) before journaling it: nothing
                # was sent, and it is placed now as a new order (a token, the checks below)
            self._check_brackets_at_market(req)
            self._check_can_trade()
            wait = self.limiter.take(trader)
            if wait:
                raise ApiError(
                    429,
                    "rate_limited",
                    f"trader {trader} placed {self.limiter.per_minute} orders in the last "
                    f"minute (ORDER_RATE_LIMIT); retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            try:
                return await self._place_new(trader, key, cid, req, fingerprint, owner)
            except ApiError as exc:
                if exc.status == 503:  # refused by the service itself: the trader placed nothing
                    self.limiter.give_back(trader)
                raise

    async def _place_new(
        self,
        trader: str,
        key: str,
        cid: str,
        req: OrderRequest,
        fingerprint: str,
        owner: OwnerRow | None,
    ) -> Placed:
        """Claim the key (its owner row) and submit the order (the key's lock held)."""
        await self._fund(trader)
        if owner is None:
            row = OwnerRow(cid, trader, key, fingerprint, req.stop_loss, req.take_profit)
            try:
                # committed before the intent is journaled: a journaled order has its owner
                owner = await asyncio.to_thread(self.owners.claim, row)
            except Exception as exc:
                raise ApiError(
                    503,
                    "database_unavailable",
                    f"the order was not placed: its owner could not be recorded ({exc}); "
                    "retry with the same Idempotency-Key",
                    headers={"Retry-After": "1"},
                ) from exc
        intent = _intent(req, cid, account_of(trader))
        try:
            order = await self.om.submit(intent)
        except OrderRejected as exc:
            await self._release_unplaced(cid)
            raise ApiError(422, exc.reason.value, exc.message, field=exc.field) from exc
        except TradingHalted as exc:
            await self._release_unplaced(cid)
            raise ApiError(
                503, "halted", self._halt_text(exc), headers={"Retry-After": "5"}
            ) from exc
        except WALWriteError as exc:
            self.fail_log(exc)
            raise ApiError(503, "log_failed", str(exc)) from exc
        if req.stop_loss is not None or req.take_profit is not None:
            self.brackets.track(cid)  # its stop_loss / take_profit follow its fills
            self.kick_bracket(cid)
        return Placed(order, owner, created=True)

    async def _release_unplaced(self, cid: str) -> None:
        """A refused order: its key is free again if nothing of it was journaled (the same
        key may then place another order; a journaled one stays the key's order)."""
        if await asyncio.to_thread(self.om.get, cid) is None:
            await asyncio.to_thread(self.owners.release, cid)

    def _halt_text(self, exc: TradingHalted) -> str:
        """What a trader is told about a halt: the operator's without who threw it."""
        op = operator_halt(self.ddb)
        if op is not None:
            return f"trading is {op.public()}; nothing was placed"
        return str(exc)

    def _check_brackets_at_market(self, req: OrderRequest) -> None:
        """A market order's stop_loss / take_profit on their side of the market price, when
        the service knows it (the paper broker's): else its child would execute at once."""
        source = self.om.price_source
        if req.order_type != "market" or source is None:
            return
        if req.stop_loss is None and req.take_profit is None:
            return
        price = source(req.symbol)
        wrong = None if price is None else req.bracket_problem(price, "the market price")
        if wrong is not None:
            raise ApiError(422, "validation_error", f"{wrong[0]}: {wrong[1]}", field=wrong[0])

    async def _chase(self, cid: str, req: OrderRequest, trader: str, order: Order) -> Order:
        """A retry of an order whose outcome is unknown: the manager looks it up by its
        client id (never a second order); the order as it stands, whatever happened."""
        try:
            return await self.om.submit(_intent(req, cid, account_of(trader)))
        except (OrderRejected, TradingHalted):
            return order
        except WALWriteError as exc:
            self.fail_log(exc)
            raise ApiError(503, "log_failed", str(exc)) from exc

    def _check_can_trade(self) -> None:
        if self.log_failure is not None:
            raise ApiError(503, "log_failed", f"the write-ahead log failed: {self.log_failure}")
        if self.om.halted is not None:
            raise ApiError(
                503,
                "halted",
                f"trading is halted: {self.om.halted}; nothing was placed",
                headers={"Retry-After": "5"},
            )
        op = operator_halt(self.ddb)  # `atb orders halt`: refused before the key is claimed
        if op is not None:
            raise ApiError(
                503,
                "halted",
                f"trading is {op.public()}; nothing was placed",
                headers={"Retry-After": "5"},
            )

    async def _fund(self, trader: str) -> None:
        """Paper mode: a trader's account is credited once (``SERVICE_PAPER_BALANCE``)."""
        amount = self.config.paper_balance
        if amount is None or trader in self._funded:
            return
        account = account_of(trader)
        key = f"paper-open:{trader}"
        try:
            balance = await asyncio.to_thread(self.ddb.get_balance, account)
            if balance == 0 and self.ddb.find_by_idempotency_key(key) is None:
                await asyncio.to_thread(
                    lambda: self.ddb.atomic_balance_update(
                        amount, reason="paper account opened", account=account, idempotency_key=key
                    )
                )
        except WALWriteError as exc:
            self.fail_log(exc)
            raise ApiError(503, "log_failed", str(exc)) from exc
        except WALDatabaseError as exc:
            log.warning("paper balance of %s unknown: %s", trader, exc)
            return
        self._funded.add(trader)

    async def cancel(self, cid: str) -> Order:
        if self.log_failure is not None:
            raise ApiError(503, "log_failed", f"the write-ahead log failed: {self.log_failure}")
        try:
            return await self.om.cancel(cid)
        except OrderRejected as exc:
            raise ApiError(409, "not_open", exc.message, field="id") from exc
        except WALWriteError as exc:
            self.fail_log(exc)
            raise ApiError(503, "log_failed", str(exc)) from exc


def _intent(req: OrderRequest, cid: str, account: str) -> OrderIntent:
    limit: Decimal | None = None
    stop: Decimal | None = None
    if req.order_type == "limit":
        limit = req.price
    elif req.order_type == "stop":
        stop = req.price
    elif req.order_type == "stop_limit":
        limit, stop = req.price, req.stop_price
    return OrderIntent(
        symbol=req.symbol,
        side=req.side,
        quantity=req.quantity,
        order_type=req.order_type,
        limit_price=limit,
        stop_price=stop,
        time_in_force=req.time_in_force,
        account=account,
        client_order_id=cid,
    )
