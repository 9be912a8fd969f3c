"""``atb orders``: the order journal, for the operator (read-only)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from cli._common import EXIT_UNREADABLE, AtbError, WalContext, echo_json, get_config, one_line
from wal.config import WALConfig
from wal.db import DatabaseManager
from wal.errors import WALError
from wal.log.storage import WALStorage
from wal.orders.journal import read_journal
from wal.orders.models import Order
from wal.orders.states import OrderState

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
