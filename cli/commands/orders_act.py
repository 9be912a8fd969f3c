"""``atb orders reconcile | cancel | flatten | halt | resume``: the commands that act.

``reconcile``, ``cancel`` and ``flatten`` go through the journal like the engine does: they
take the log's writer lock (the engine must be stopped), open the database the log records
(never a fresh one), and never write the engine's ``manager-status.json``. ``halt`` and
``resume`` throw the kill switch (``wal.sync.halt``): a file beside the log that the running
engine reads before every new order, so they work while it runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import click

from cli._common import (
    EXIT_PROBLEM,
    EXIT_UNCHECKED,
    AtbError,
    echo_json,
    get_config,
    locked_message,
    require_log_dir,
    wal_errors,
)
from cli._journal import JournalSource, open_database, resolve
from cli.commands.orders import BROKER_URL_HELP, dec, plain, resolve_broker_url
from wal import DurableDatabaseManager
from wal.config import WALConfig
from wal.errors import WALLockedError
from wal.log.storage import WALStorage
from wal.masking import mask_url
from wal.orders.errors import (
    BrokerError,
    BrokerUnavailable,
    OrderError,
    ReconciliationFatalError,
)
from wal.orders.flatten import flatten, flatten_plan
from wal.orders.http_broker import HttpBroker
from wal.orders.manager import OrderManager, RetryPolicy
from wal.orders.models import Order
from wal.orders.reconcile import ReconcilerConfig, StartupReconciler
from wal.orders.states import OrderState
from wal.sync.halt import clear_halt, write_halt
from wal.sync.manager import WALManager

T = TypeVar("T")


async def _with_manager(
    config: WALConfig,
    source: JournalSource,
    url: str,
    timeout: float,
    what: str,
    work: Callable[[OrderManager], Awaitable[T]],
    *,
    dry_run: bool = False,
) -> T:
    """Run ``work`` with an ``OrderManager`` on the log (writer lock) and the broker.

    A dry run changes nothing, anywhere: the database is opened read-only and the sync
    thread is not started (nothing pending drains into the database, database.json is not
    bound)."""
    config = dataclasses.replace(config, database_url=source.url)
    try:
        storage = WALStorage(source.directory, config.storage_options())
    except WALLockedError as exc:
        raise AtbError(locked_message(exc, what, "stop the engine first")) from None
    try:
        db = open_database(source, config, what=what, read_only=dry_run)
        try:
            # a one-off run: the engine's published view (manager-status.json) is left alone
            manager = WALManager(storage, db, config, publish_status=False)
            ddb = DurableDatabaseManager(db, config=config, manager=manager)
            if not dry_run:
                ddb.start()
            try:
                try:
                    broker = await HttpBroker.connect(url, timeout=timeout)
                except BrokerError as exc:
                    raise AtbError(
                        f"cannot {what}: the broker at {mask_url(url)} did not answer "
                        f"({exc.message}); "
                        "nothing was changed",
                        EXIT_UNCHECKED,
                    ) from None
                try:
                    om = OrderManager(ddb, broker, retry=RetryPolicy.from_env())
                    return await work(om)
                finally:
                    await broker.aclose()
            finally:
                ddb.stop()
        finally:
            db.dispose()
    finally:
        storage.close()


def _run(coro: Awaitable[T]) -> T:
    async def go() -> T:
        return await coro

    try:
        return asyncio.run(go())
    except ReconciliationFatalError as exc:
        raise AtbError(f"reconciliation failed, trading stays halted: {exc.message}") from None
    except BrokerUnavailable as exc:
        raise AtbError(
            f"the broker did not answer: {exc.message} (what was journaled stands; run "
            "`atb orders status`)",
            EXIT_UNCHECKED,
        ) from None


# ---------------------------------------------------------------------- reconcile


@click.command("reconcile", short_help="Reconcile the journal with the broker.")
@click.option("--broker-url", default=None, metavar="URL", help=BROKER_URL_HELP)
@click.option("--dry-run", is_flag=True, help="Fetch and print what it would do; change nothing.")
@click.option(
    "--emergency-stop-pct",
    default=None,
    metavar="FRACTION",
    help="Emergency stop distance from the entry price, 0.005-0.10 (default 0.02 = 2 %; "
    "$ORDER_EMERGENCY_STOP_PCT).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@wal_errors
def reconcile_cmd(
    ctx: click.Context,
    broker_url: str | None,
    dry_run: bool,
    emergency_stop_pct: str | None,
    as_json: bool,
) -> None:
    """Run the startup reconciliation against the broker (docs/orders.md).

    Orders left unfinished are settled from the broker's state, unknown broker orders are
    cancelled (a stop protecting a held position is adopted), orphan positions get a
    synthetic order, every position gets its stop. Takes the log's writer lock: stop the
    engine first (the engine runs the same reconciliation itself on start). Only on the
    log's own database (database.json); a missing or empty --dir is refused (exit 2) and
    nothing is created, --dry-run included. The engine's manager-status.json is left alone.

    --json prints {orders_reconciled, orders_adopted, orphans_detected,
    orphan_orders_canceled, emergency_stops_placed, fills_inferred, stops_canceled,
    positions_closed, exits_canceled, errors, dry_run, actions}. Exit 0: reconciled without
    errors; 1: errors, or a fatal failure (trading would stay halted); 2: no log or not its
    database; 3: the broker or the database did not answer (nothing was changed).

    \b
    Examples:
      atb orders reconcile --dry-run
      atb orders reconcile --broker-url http://127.0.0.1:8787 --json
    """
    config = get_config(ctx)
    try:
        rcfg = ReconcilerConfig.from_env()
        if emergency_stop_pct is not None:
            rcfg = replace(rcfg, emergency_stop_pct=Decimal(emergency_stop_pct))
    except (ValueError, InvalidOperation) as exc:
        raise click.BadParameter(str(exc), param_hint="--emergency-stop-pct") from None
    url = resolve_broker_url(broker_url)  # a bad URL is a usage error, before anything
    what = "reconcile the order journal"
    source = resolve(ctx, config, what=what)
    result = _run(
        _with_manager(
            config,
            source,
            url,
            rcfg.fetch_timeout,
            what,
            lambda om: StartupReconciler(om, rcfg).run(dry_run=dry_run),
            dry_run=dry_run,
        )
    )
    if as_json:
        echo_json(result.to_dict())
    else:
        head = "would do" if dry_run else "did"
        click.echo(f"reconciliation against {mask_url(url)} ({head}):")
        for k, v in result.to_dict().items():
            if isinstance(v, int) and not isinstance(v, bool):
                click.echo(f"  {k + ':':<24}{v}")
        for a in result.actions:
            click.echo(f"  - {a}")
        for e in result.errors:
            click.echo(f"  ERROR {e}")
    if result.errors:
        ctx.exit(EXIT_PROBLEM)


# ---------------------------------------------------------------------- cancel, flatten


def _confirm(question: str, yes: bool) -> None:
    if not yes and not click.confirm(question, default=False, err=True):
        raise AtbError("not confirmed: nothing was sent")


@click.command("cancel", short_help="Cancel one open order at the broker.")
@click.argument("client_order_id")
@click.option("--broker-url", default=None, metavar="URL", help=BROKER_URL_HELP)
@click.option("--dry-run", is_flag=True, help="Say what would be cancelled; send nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the order as it stands, as JSON.")
@click.pass_context
@wal_errors
def cancel_cmd(
    ctx: click.Context,
    client_order_id: str,
    broker_url: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Cancel an open order (CLIENT_ORDER_ID, or a unique prefix of it) through the journal:
    the order is looked up at the broker by its client id, the cancel request is journaled,
    sent to the broker id that lookup reports (never the journal's stored one: broker ids can
    be reused), and the order's status is read back.

    Takes the log's writer lock (stop the engine first; a running engine cancels through its
    own OrderManager). Asks to confirm unless --yes. --dry-run prints the order and sends
    nothing. Exit 0: the order is cancelled (or was already final at the broker); 1: no such
    open order, the broker does not show it by its client id (nothing sent), or not
    confirmed; 2: no log or not its database; 3: the broker or the database did not answer.

    \b
    Examples:
      atb orders cancel 3f0c9a --dry-run
      atb orders cancel 3f0c9a7d2b8e4c61a5f0e9d8c7b6a5e1 --yes
    """
    config = get_config(ctx)
    url = resolve_broker_url(broker_url)  # a bad URL is a usage error, before anything
    what = "cancel the order"
    source = resolve(ctx, config, what=what)

    async def work(om: OrderManager) -> Order | None:
        await om.load()
        cid = _one_open(om, client_order_id)
        order = om.get(cid)
        assert order is not None  # _one_open found it among the open orders
        if dry_run:
            return order
        _confirm(
            f"cancel {order.intent.side} {dec(order.intent.quantity)} {order.symbol} "
            f"({order.intent.order_type}, {order.state.value}) {cid} at {mask_url(url)}?",
            yes,
        )
        return await om.cancel(cid)

    try:
        order = _run(_with_manager(config, source, url, 10.0, what, work, dry_run=dry_run))
    except OrderError as exc:
        raise AtbError(f"cannot {what}: {exc.message}") from None
    assert order is not None
    if as_json:
        echo_json({"dry_run": dry_run, "order": plain(order.to_dict())})
    elif dry_run:
        click.echo(
            f"would cancel {order.client_order_id}: {order.intent.side} "
            f"{dec(order.intent.quantity)} {order.symbol} ({order.state.value}); nothing was sent"
        )
    else:
        click.echo(f"order {order.client_order_id} is {order.state.value}")


def _one_open(om: OrderManager, prefix: str) -> str:
    ids = [o.client_order_id for o in om.open_orders() if o.client_order_id.startswith(prefix)]
    if prefix in ids:
        return prefix
    if len(ids) != 1:
        why = "no open order" if not ids else f"{len(ids)} open orders"
        raise AtbError(f"{why} in the journal with a client_order_id starting {prefix!r}")
    return ids[0]


@click.command("flatten", short_help="Cancel a symbol's orders, then close its position.")
@click.argument("symbol", required=False)
@click.option("--broker-url", default=None, metavar="URL", help=BROKER_URL_HELP)
@click.option("--dry-run", is_flag=True, help="Print what it would cancel and send; send nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the closing orders as JSON.")
@click.pass_context
@wal_errors
def flatten_cmd(
    ctx: click.Context,
    symbol: str | None,
    broker_url: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Close the journal's position in SYMBOL (every position without SYMBOL): first cancel
    every open order of the symbol (its stops, take-profits and other orders) and wait for
    each to be final, then close what is still held with a market order on the reducing
    side, journaled like every order (protective: allowed while trading is halted). A stop
    left live beside the close would sell the position twice if it triggered meanwhile; a
    stop that executed before its cancel arrived leaves less (or nothing) to close. A cancel
    whose outcome stays unknown sends no close for that symbol (exit 1).

    The price of a market order is the broker's at execution: nothing here sets it. Takes
    the log's writer lock (stop the engine first); crash leftovers are resolved first, as
    the engine does at start. Asks to confirm unless --yes. --dry-run prints the orders it
    would cancel and send. Exit 0: flat; 1: a close was not filled, a cancel not confirmed,
    or not confirmed; 2: no log or not its database; 3: the broker or the database did not
    answer. A close that is not filled leaves the position without the stops it cancelled
    (said on the line): run the engine, whose startup reconciliation protects it.

    --json prints {dry_run, closes: [{symbol, side, quantity, client_order_id, state,
    filled_quantity, avg_fill_price}], cancelled: [client ids], stops_cancelled: [client
    ids of the stops among them], filled_before_cancel: [client ids], problems: [text]}; a
    close's state "flat" (nothing left to close) or "not_sent" (a problem) when none was
    sent.

    \b
    Examples:
      atb orders flatten AAPL --dry-run
      atb orders flatten --yes
    """
    config = get_config(ctx)
    url = resolve_broker_url(broker_url)  # a bad URL is a usage error, before anything
    what = "flatten"
    source = resolve(ctx, config, what=what)

    async def work(om: OrderManager) -> dict[str, Any]:
        if dry_run:
            await om.load()
        else:
            await om.start()  # what a crash left unfinished is settled before sizing a close
        held = flatten_plan(om, None if symbol is None else [symbol])
        if symbol is not None and not held:
            raise AtbError(f"the journal holds no position in {symbol}: nothing to close")
        plan = [(s, "sell" if q > 0 else "buy", abs(q)) for s, q in held.items()]
        to_cancel = [o for o in om.open_orders() if o.symbol in held]
        if dry_run or not plan:
            return {
                "dry_run": dry_run,
                "closes": [{"symbol": s, "side": sd, "quantity": dec(q)} for s, sd, q in plan],
                "cancelled": [o.client_order_id for o in to_cancel],
                "stops_cancelled": [o.client_order_id for o in to_cancel if _is_stop(o)],
                "filled_before_cancel": [],
                "problems": [],
            }
        _confirm(
            "cancel "
            + (f"{len(to_cancel)} open order(s) of these symbols, then " if to_cancel else "")
            + "send "
            + ", ".join(f"market {sd} {dec(q)} {s}" for s, sd, q in plan)
            + f" to {mask_url(url)}?",
            yes,
        )
        results = await flatten(om, held)
        closes: list[dict[str, Any]] = []
        for r in results:
            c = r.close
            closes.append(
                {
                    "symbol": r.symbol,
                    "side": "sell" if r.held > 0 else "buy",
                    "quantity": dec(abs(r.held) if c is None else c.intent.quantity),
                    "client_order_id": None if c is None else c.client_order_id,
                    "state": "flat"
                    if c is None and r.problem is None
                    else "not_sent"
                    if c is None
                    else c.state.value,
                    "filled_quantity": dec(Decimal(0) if c is None else c.filled_quantity),
                    "avg_fill_price": None
                    if c is None or c.avg_fill_price is None
                    else dec(c.avg_fill_price),
                }
            )
        settled = [o for r in results for o in r.cancelled]
        cancelled = [o for o in settled if o.state is OrderState.CANCELLED]
        return {
            "dry_run": False,
            "closes": closes,
            "cancelled": [o.client_order_id for o in cancelled],
            "stops_cancelled": [o.client_order_id for o in cancelled if _is_stop(o)],
            "filled_before_cancel": [
                o.client_order_id for o in settled if o.state is OrderState.FILLED
            ],
            "problems": [r.problem for r in results if r.problem is not None],
        }

    try:
        out = _run(_with_manager(config, source, url, 10.0, what, work, dry_run=dry_run))
    except OrderError as exc:
        raise AtbError(f"cannot {what}: {exc.message}") from None
    if as_json:
        echo_json(out)
    elif not out["closes"]:
        click.echo("no position in the journal: nothing to close")
    else:
        for cid in out["cancelled"]:
            click.echo(f"would cancel {cid} first" if dry_run else f"cancelled {cid} first")
        for cid in out["filled_before_cancel"]:
            click.echo(f"{cid} filled before its cancel arrived")
        for c in out["closes"]:
            if dry_run:
                click.echo(f"would send market {c['side']} {c['quantity']} {c['symbol']}")
            elif c["state"] == "flat":
                click.echo(f"{c['symbol']} is flat: its orders closed it before the close")
            elif c["state"] == "not_sent":
                click.echo(f"no close sent for {c['symbol']}")
            else:
                line = (
                    f"sent market {c['side']} {c['quantity']} {c['symbol']}: {c['state']}, "
                    f"filled {c['filled_quantity']}"
                )
                if c["avg_fill_price"] is not None:
                    line += f" @ {c['avg_fill_price']}"
                click.echo(line)
        for p in out["problems"]:
            click.echo(f"PROBLEM {p}", err=True)
        if dry_run:
            click.echo("nothing was sent (--dry-run)")
    if not dry_run and out["problems"]:
        ctx.exit(EXIT_PROBLEM)


def _is_stop(o: Order) -> bool:
    return o.intent.order_type in ("stop", "stop_limit")


# ---------------------------------------------------------------------- halt, resume


@click.command("halt", short_help="Kill switch: the engine stops sending new orders.")
@click.option("--reason", default="halted by the operator", help="Why (shown everywhere).")
@click.option("--json", "as_json", is_flag=True, help="Print the halt as JSON.")
@click.pass_context
@wal_errors
def halt_cmd(ctx: click.Context, reason: str, as_json: bool) -> None:
    """Halt trading: the running engine refuses every new order from its next submit
    (TradingHalted), until `atb orders resume`. Cancels and protective orders (stops,
    reduce-only closes) still go out. Durable: <WAL_DIR>/HALT (0600, written atomically
    and fsynced) survives restarts; works while the engine runs (no lock needed).
    Shown by `atb orders status`, `atb wal status` and /metrics (atb_trading_halted).

    \b
    Examples:
      atb orders halt --reason "broker incident"
      atb orders resume
    """
    directory = require_log_dir(get_config(ctx))
    halt = write_halt(directory, " ".join(reason.split()) or "halted by the operator")
    if as_json:
        echo_json({"directory": str(directory), "halted": halt.to_dict()})
        return
    click.echo(
        f"trading HALTED for the log in {directory}: {halt.reason}. The engine refuses new "
        "orders from its next submit; cancels and protective stops still go out. "
        "`atb orders resume` allows trading again"
    )


@click.command("resume", short_help="Undo `atb orders halt`.")
@click.option("--json", "as_json", is_flag=True, help="Print the halt that was lifted as JSON.")
@click.pass_context
@wal_errors
def resume_cmd(ctx: click.Context, as_json: bool) -> None:
    """Lift the operator's halt (remove <WAL_DIR>/HALT): new orders are allowed again from
    the engine's next submit. A halt of the engine's own (its startup reconciliation has not
    succeeded) is not lifted by this. Exit 0 also when trading was not halted.

    \b
    Examples:
      atb orders resume
    """
    directory = require_log_dir(get_config(ctx))
    lifted = clear_halt(directory)
    if as_json:
        echo_json(
            {"directory": str(directory), "lifted": None if lifted is None else lifted.to_dict()}
        )
    elif lifted is None:
        click.echo(f"trading was not halted by the operator (no {directory / 'HALT'})")
    else:
        click.echo(f"trading RESUMED for the log in {directory} (was halted: {lifted.reason})")


__all__ = ["cancel_cmd", "flatten_cmd", "halt_cmd", "reconcile_cmd", "resume_cmd"]
