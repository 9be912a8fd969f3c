"""``atb orders``: the order journal, for the operator.

``list``, ``show``, ``status`` and ``verify`` only read (they work while the engine runs);
``reconcile`` takes the log's writer lock and talks to the broker.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

from cli._common import (
    EXIT_UNREADABLE,
    AtbError,
    WalContext,
    echo_json,
    get_config,
    locked_message,
    one_line,
)
from wal import DurableDatabaseManager
from wal.config import WALConfig
from wal.db import DatabaseManager
from wal.errors import WALError, WALLockedError
from wal.log.storage import WALStorage
from wal.orders.audit import verify_audit
from wal.orders.errors import ReconciliationFatalError
from wal.orders.http_broker import HttpBroker
from wal.orders.journal import read_journal
from wal.orders.manager import OrderManager, RetryPolicy
from wal.orders.models import Order
from wal.orders.reconcile import (
    EMERGENCY_STOP_PREFIX,
    ReconcilerConfig,
    ReconciliationResult,
    StartupReconciler,
)
from wal.orders.states import OrderState
from wal.sync.manager import WALManager

DEFAULT_BROKER_URL = "http://127.0.0.1:8787"

STATES = [s.value for s in OrderState]


@click.group()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The log directory (overrides WAL_DIR; default data/wal).",
)
@click.option(
    "--database-url", default=None, metavar="URL", help="The database (overrides DATABASE_URL)."
)
@click.pass_context
def orders(ctx: click.Context, directory: Path | None, database_url: str | None) -> None:
    """The order journal: every order, its state, its events and fills.

    Reads the database and the log's pending entries (read-only: works while a trading
    process holds the log), so an order journaled during a database outage is shown.

    \b
    Examples:
      atb orders list
      atb orders list --state unknown --json
      atb orders show 3f0c9a...e1 --json
    """
    ctx.obj = WalContext(directory=directory, database_url=database_url)


def _read(config: WALConfig, cid: str | None) -> tuple[list[Order], list[Any], list[Any]]:
    pending = []
    if config.directory.is_dir():
        try:
            storage = WALStorage.open_readonly(config.directory, config.storage_options())
        except (WALError, OSError) as exc:
            raise AtbError(one_line(str(exc)), EXIT_UNREADABLE) from None
        try:
            pending = list(storage.get_pending_entries())
        finally:
            storage.close()
    db = DatabaseManager(config.database_url)
    try:
        return read_journal(db, pending, cid)
    except Exception as exc:
        raise AtbError(f"cannot read the order journal from {db.safe_url}: {exc}") from None
    finally:
        db.dispose()


def _plain(v: Any) -> Any:
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, datetime):
        return v.isoformat()
    return v


@orders.command("list", short_help="List orders, oldest first.")
@click.option(
    "--state",
    "states",
    type=click.Choice(STATES, case_sensitive=False),
    multiple=True,
    help="Only orders in this state (repeatable).",
)
@click.option("--open", "open_only", is_flag=True, help="Only orders not in a final state.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of orders.")
@click.pass_context
def list_orders(
    ctx: click.Context, states: tuple[str, ...], open_only: bool, as_json: bool
) -> None:
    """List the journal's orders, oldest first.

    --json prints an array of objects with: client_order_id, symbol, side, quantity,
    order_type, limit_price, stop_price, time_in_force, account, created_at, state,
    broker_order_id, filled_quantity, avg_fill_price, reason, last_seq, updated_at
    (decimals as strings, times ISO 8601 UTC). This shape is a stable contract.

    \b
    Examples:
      atb orders list
      atb orders list --open
      atb orders list --state unknown --json | jq '.[].client_order_id'
    """
    got, _, _ = _read(get_config(ctx), None)
    if states:
        got = [o for o in got if o.state.value in {s.lower() for s in states}]
    if open_only:
        got = [o for o in got if o.state.value not in _FINAL]
    if as_json:
        echo_json([o.to_dict() for o in got])
        return
    if not got:
        click.echo("no orders")
        return
    header = ("CLIENT ORDER ID", "STATE", "SIDE", "QTY", "SYMBOL", "FILLED", "AVG PRICE")
    rows = [
        (
            o.client_order_id,
            o.state.value,
            o.intent.side,
            format(o.intent.quantity, "f"),
            o.symbol,
            format(o.filled_quantity, "f"),
            "-" if o.avg_fill_price is None else format(o.avg_fill_price, "f"),
        )
        for o in got
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


_FINAL = {"filled", "rejected", "cancelled", "submit_failed"}


@orders.command("show", short_help="One order with its events and fills.")
@click.argument("client_order_id")
@click.option("--json", "as_json", is_flag=True, help="Print {order, events, fills} as JSON.")
@click.pass_context
def show_order(ctx: click.Context, client_order_id: str, as_json: bool) -> None:
    """Show one order, its events (in seq order) and its fills.

    --json prints {"order": {...as in list...}, "events": [{client_order_id, seq, kind,
    state, at, broker_order_id, detail}], "fills": [{execution_key, execution_id,
    client_order_id, broker_order_id, symbol, side, quantity, price, executed_at,
    trade_id, pnl}]}. Exit 1 if the journal has no such order.

    \b
    Examples:
      atb orders show 3f0c9a7d2b8e4c61a5f0e9d8c7b6a5e1
      atb orders show 3f0c9a7d2b8e4c61a5f0e9d8c7b6a5e1 --json | jq .events
    """
    got, events, fills = _read(get_config(ctx), client_order_id)
    if not got:
        raise AtbError(f"no order with client_order_id {client_order_id!r} in the journal")
    o = got[0]
    ev = [{k: _plain(v) for k, v in e.items()} for e in events]
    fl = [{k: _plain(v) for k, v in f.items()} for f in fills]
    if as_json:
        echo_json({"order": o.to_dict(), "events": ev, "fills": fl})
        return
    for k, v in o.to_dict().items():
        click.echo(f"{k + ':':<18}{'-' if v is None else v}")
    click.echo("events:")
    for e in ev:
        extra = f"  {e['detail']}" if e.get("detail") else ""
        click.echo(f"  {e['seq']:>3}  {e['at']}  {e['kind']:<17}{e['state']}{extra}")
    click.echo("fills:")
    for f in fl:
        click.echo(
            f"  {f['execution_id']}  {f['side']} {f['quantity']} {f['symbol']} "
            f"@ {f['price']}  {f['executed_at']}"
        )


# ---------------------------------------------------------------------- reconcile, status, verify

_BROKER_URL_HELP = (
    f"The broker (Alpaca v2 shape; the paper broker's URL for now). Default: "
    f"$ATB_BROKER_URL, else {DEFAULT_BROKER_URL}."
)


def _broker_url(given: str | None) -> str:
    return given or os.environ.get("ATB_BROKER_URL") or DEFAULT_BROKER_URL


async def _reconcile(
    config: WALConfig, url: str, rcfg: ReconcilerConfig, dry_run: bool
) -> ReconciliationResult:
    db = DatabaseManager(config.database_url)
    storage: WALStorage | None = None
    try:
        if dry_run:
            # a dry run changes nothing, anywhere: no sync thread draining the log into the
            # database (nor binding database.json), no manager-status.json published
            storage = WALStorage(config.directory, config.storage_options())
            manager = WALManager(storage, db, config, publish_status=False)
            ddb = DurableDatabaseManager(db, config=config, manager=manager)
        else:
            ddb = DurableDatabaseManager(db, config=config)
    except WALLockedError as exc:
        db.dispose()
        raise AtbError(locked_message(exc, "the order journal", "stop the engine first")) from None
    try:
        if not dry_run:
            ddb.start()
        broker = await HttpBroker.connect(url, timeout=rcfg.fetch_timeout)
        try:
            om = OrderManager(ddb, broker, retry=RetryPolicy.from_env())
            return await StartupReconciler(om, rcfg).run(dry_run=dry_run)
        finally:
            await broker.aclose()
    finally:
        ddb.stop()
        if storage is not None:
            storage.close()
        ddb.db.dispose()


@orders.command("reconcile", short_help="Reconcile the journal with the broker.")
@click.option("--broker-url", default=None, metavar="URL", help=_BROKER_URL_HELP)
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
    engine first (the engine runs the same reconciliation itself on start).

    --json prints {orders_reconciled, orders_adopted, orphans_detected,
    orphan_orders_canceled, emergency_stops_placed, fills_inferred, stops_canceled,
    positions_closed, errors, dry_run, actions}. Exit 0: reconciled without errors; 1:
    errors, or a fatal failure (trading would stay halted).

    \b
    Examples:
      atb orders reconcile --dry-run
      atb orders reconcile --broker-url http://127.0.0.1:8787 --json
    """
    config = get_config(ctx)
    try:
        rcfg = ReconcilerConfig.from_env()
        if emergency_stop_pct is not None:
            rcfg = ReconcilerConfig(
                emergency_stop_pct=Decimal(emergency_stop_pct),
                fetch_timeout=rcfg.fetch_timeout,
            )
    except (ValueError, InvalidOperation) as exc:
        raise AtbError(f"--emergency-stop-pct: {exc}") from None
    url = _broker_url(broker_url)
    try:
        result = asyncio.run(_reconcile(config, url, rcfg, dry_run))
    except ReconciliationFatalError as exc:
        raise AtbError(f"reconciliation failed, trading stays halted: {exc}") from None
    except WALError as exc:
        raise AtbError(str(exc)) from None
    if as_json:
        echo_json(result.to_dict())
    else:
        head = "would do" if dry_run else "did"
        click.echo(f"reconciliation against {url} ({head}):")
        for k, v in result.to_dict().items():
            if isinstance(v, int) and not isinstance(v, bool):
                click.echo(f"  {k + ':':<24}{v}")
        for a in result.actions:
            click.echo(f"  - {a}")
        for e in result.errors:
            click.echo(f"  ERROR {e}")
    if result.errors:
        ctx.exit(1)


def _status(orders_: list[Order]) -> dict[str, Any]:
    positions: dict[str, Decimal] = {}
    for o in orders_:
        if o.filled_quantity:
            q = o.filled_quantity if o.intent.side == "buy" else -o.filled_quantity
            positions[o.symbol] = positions.get(o.symbol, Decimal(0)) + q
    live = [o for o in orders_ if o.state in (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED)]
    out = []
    for sym, q in sorted(positions.items()):
        if q == 0:
            continue
        side = "sell" if q > 0 else "buy"
        cover = sum(
            (
                o.remaining
                for o in live
                if o.symbol == sym
                and o.intent.side == side
                and o.intent.order_type in ("stop", "stop_limit")
            ),
            Decimal(0),
        )
        out.append(
            {
                "symbol": sym,
                "quantity": format(q, "f"),
                "stop_quantity": format(cover, "f"),
                "protected": cover >= abs(q),
            }
        )
    unknown = [o.client_order_id for o in orders_ if o.state is OrderState.UNKNOWN]
    unprotected = [p["symbol"] for p in out if not p["protected"]]
    return {
        "ok": not unknown and not unprotected,
        "unknown_orders": unknown,
        "unprotected_positions": unprotected,
        "positions": out,
        "open_orders": sum(1 for o in orders_ if o.state.value not in _FINAL),
        "emergency_stops": sum(
            1 for o in live if o.client_order_id.startswith(EMERGENCY_STOP_PREFIX)
        ),
    }


@orders.command("status", short_help="Exit 1 if an order is UNKNOWN or a position unprotected.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """For monitoring: exit 0 when no order is UNKNOWN and every position the journal holds
    has stops covering it; 1 otherwise. Reads the journal only (pending entries included).

    --json prints {ok, unknown_orders, unprotected_positions, positions: [{symbol, quantity,
    stop_quantity, protected}], open_orders, emergency_stops}.

    \b
    Examples:
      atb orders status
      atb orders status --json | jq .unprotected_positions
    """
    got, _, _ = _read(get_config(ctx), None)
    st = _status(got)
    if as_json:
        echo_json(st)
    else:
        click.echo(
            f"{'OK' if st['ok'] else 'PROBLEM'}: {st['open_orders']} open order(s), "
            f"{len(st['positions'])} position(s), {len(st['unknown_orders'])} unknown, "
            f"{len(st['unprotected_positions'])} unprotected"
        )
        for cid in st["unknown_orders"]:
            click.echo(f"  UNKNOWN order {cid}: run `atb orders reconcile`")
        for p in st["positions"]:
            mark = "ok" if p["protected"] else "UNPROTECTED"
            click.echo(f"  {p['symbol']}: {p['quantity']} (stops {p['stop_quantity']}) {mark}")
    if not st["ok"]:
        ctx.exit(1)


@orders.command("verify", short_help="Verify the tamper-evident audit chain of order events.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def verify_cmd(ctx: click.Context, as_json: bool) -> None:
    """Recompute the hash chain over every order event and check the anchors.

    Exit 0 when intact; 1 with "first broken link at seq N (expected ..., found ...)" when
    a row was changed or removed, or an anchor names rows cut off the end.

    --json prints {ok, events, anchors, last_seq, last_confirmed_anchor, first_broken_seq,
    problems}.

    \b
    Examples:
      atb orders verify
      atb orders verify --json
    """
    config = get_config(ctx)
    db = DatabaseManager(config.database_url)
    try:
        report = verify_audit(db)
    except Exception as exc:
        raise AtbError(f"cannot read the audit trail from {db.safe_url}: {exc}") from None
    finally:
        db.dispose()
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.message)
        for p in report.problems[1:]:
            click.echo(f"  {p}")
    if not report.ok:
        ctx.exit(1)
