"""``atb orders``: the order journal, for the operator (the group and its read-only commands).

``list``, ``show``, ``status`` and ``verify`` only read (they work while the engine runs);
the commands that act (``reconcile``, ``cancel``, ``flatten``, ``halt``, ``resume``) are in
``cli/commands/orders_act.py``. Every command resolves the log and its database the way
``atb wal`` does (``cli/_journal.py``): never a fresh log, never a fresh database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from cli._common import (
    EXIT_PROBLEM,
    EXIT_UNCHECKED,
    EXIT_UNREADABLE,
    AtbError,
    NonEmptyPath,
    WalContext,
    echo_json,
    get_config,
    one_line,
    parse_time,
    wal_errors,
)
from cli._journal import open_database, resolve
from wal.config import WALConfig
from wal.db.classify import describe_error
from wal.errors import WALDatabaseError, WALError, printable
from wal.log.storage import WALStorage
from wal.masking import mask_text, mask_url
from wal.orders.audit import digest_path, verify_audit
from wal.orders.broker import BrokerOrder, BrokerPosition
from wal.orders.errors import BrokerError
from wal.orders.http_broker import HttpBroker
from wal.orders.journal import read_journal
from wal.orders.models import Order
from wal.orders.reconcile import EMERGENCY_STOP_PREFIX
from wal.orders.states import OrderState
from wal.sync.halt import read_halt

DEFAULT_BROKER_URL = "http://127.0.0.1:8787"
BROKER_TIMEOUT_S = 5.0

STATES = [s.value for s in OrderState]
_FINAL = {"filled", "rejected", "cancelled", "submit_failed"}
_DECIMAL_FIELDS = frozenset(
    {"quantity", "limit_price", "stop_price", "filled_quantity", "avg_fill_price", "price", "pnl"}
)


@click.group()
@click.option(
    "--dir",
    "directory",
    type=NonEmptyPath(path_type=Path),  # a file is refused by WalContext, in one line
    default=None,
    help="The log directory (overrides WAL_DIR; default data/wal).",
)
@click.option(
    "--database-url",
    default=None,
    metavar="URL",
    help="The database (overrides DATABASE_URL; default: the one the log records).",
)
@click.pass_context
def orders(ctx: click.Context, directory: Path | None, database_url: str | None) -> None:
    """The order journal: every order, its state, its events and fills.

    Reads the database the log records (<WAL_DIR>/database.json) and the log's pending
    entries (read-only: works while a trading process holds the log), so an order journaled
    during a database outage is shown. No command creates a log or a database.

    \b
    Examples:
      atb orders list
      atb orders list --state unknown --json
      atb orders show 3f0c9a --json
      atb orders status
    """
    ctx.obj = WalContext(directory=directory, database_url=database_url)


def dec(v: Any) -> str:
    """A decimal as an operator reads it: ``10000``, ``0.25`` (never ``10000.0000000000``)."""
    d = v if isinstance(v, Decimal) else Decimal(str(v))
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def plain(d: dict[str, Any]) -> dict[str, Any]:
    """A row or ``to_dict`` with its decimals normalized and its times in ISO 8601."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Decimal) or (k in _DECIMAL_FIELDS and isinstance(v, str)):
            with contextlib.suppress(ArithmeticError):
                v = dec(v)
        elif isinstance(v, datetime):
            v = v.isoformat()
        out[k] = v
    return out


class _NoRows:
    """The database's part of the journal while the database cannot be read: nothing."""

    def get_order_rows(self) -> list[dict[str, Any]]:
        return []

    def get_order_row(self, _cid: str) -> None:
        return None

    def get_order_events(self, _cid: str) -> list[dict[str, Any]]:
        return []

    def get_order_fills(self, **_kw: Any) -> list[dict[str, Any]]:
        return []


def read_orders(
    ctx: click.Context, cid: str | None = None
) -> tuple[list[Order], list[Any], list[Any], str | None]:
    """(orders, events, fills, outage): the journal as another process sees it.

    ``outage`` is None when the database was read; otherwise why not, and the orders are the
    log's pending order entries alone (what was journaled during the outage).
    """
    config = get_config(ctx)
    what = "read the order journal"
    source = resolve(ctx, config, what=what)
    pending = _pending(config)
    try:
        db = open_database(source, config, what=what)
    except AtbError as exc:
        if exc.exit_code != EXIT_UNCHECKED:
            raise
        got, events, fills = read_journal(_NoRows(), pending, cid)
        return got, events, fills, exc.format_message()
    try:
        got, events, fills = read_journal(db, pending, cid)
    except WALDatabaseError as exc:
        return (*read_journal(_NoRows(), pending, cid), f"cannot {what}: {exc}")
    except Exception as exc:  # SQLAlchemy and the driver: one line, never a traceback
        raise AtbError(
            f"cannot {what} from {source.shown_url}: {describe_error(exc, source.url)}",
            EXIT_UNCHECKED,
        ) from None
    finally:
        db.dispose()
    return got, events, fills, None


def _pending(config: WALConfig) -> list[Any]:
    try:
        storage = WALStorage.open_readonly(config.directory, config.storage_options())
    except (WALError, OSError) as exc:
        raise AtbError(one_line(str(exc)), EXIT_UNREADABLE) from None
    try:
        return list(storage.get_pending_entries())
    finally:
        storage.close()


def _warn_outage(outage: str | None, n: int) -> None:
    if outage is not None:
        click.echo(
            f"warning: {outage}; shown: only the {n} order(s) the log still holds pending",
            err=True,
        )


@orders.command("list", short_help="List orders, oldest first.")
@click.option(
    "--state",
    "states",
    type=click.Choice(STATES, case_sensitive=False),
    multiple=True,
    help="Only orders in this state (repeatable).",
)
@click.option("--open", "open_only", is_flag=True, help="Only orders not in a final state.")
@click.option("--symbol", "symbols", multiple=True, help="Only this symbol (repeatable).")
@click.option(
    "--since", default=None, metavar="TIME", help="Only orders created at or after TIME (ISO)."
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Only the N most recent (still printed oldest first); 0: all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of orders.")
@click.pass_context
@wal_errors
def list_orders(
    ctx: click.Context,
    states: tuple[str, ...],
    open_only: bool,
    symbols: tuple[str, ...],
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List the journal's orders, oldest first.

    --json prints an array of objects with: client_order_id, symbol, side, quantity,
    order_type, limit_price, stop_price, time_in_force, account, created_at, state,
    broker_order_id, filled_quantity, avg_fill_price, reason, last_seq, updated_at,
    oco_group (its one-cancels-other group at the broker, or null) (decimals as strings,
    normalized: "10", "0.25"; times ISO 8601 UTC). This shape is a stable contract. Exit 3
    when the database cannot be read (the log's pending orders are still listed, with a
    warning on stderr).

    \b
    Examples:
      atb orders list
      atb orders list --open --symbol AAPL
      atb orders list --since 2025-01-31T09:30 --limit 20
      atb orders list --state unknown --json | jq '.[].client_order_id'
    """
    try:
        since_at = None if since is None else parse_time(since)
    except ValueError:
        raise click.BadParameter(
            f"{since!r} is not an ISO 8601 time", param_hint="--since"
        ) from None
    got, _, _, outage = read_orders(ctx)
    if states:
        got = [o for o in got if o.state.value in {s.lower() for s in states}]
    if open_only:
        got = [o for o in got if o.state.value not in _FINAL]
    if symbols:
        got = [o for o in got if o.symbol in {s.upper() for s in symbols} | set(symbols)]
    if since_at is not None:
        got = [o for o in got if o.intent.created_at >= since_at]
    if limit:
        got = got[-limit:]
    _warn_outage(outage, len(got))
    if as_json:
        echo_json([plain(o.to_dict()) for o in got])
    elif not got:
        click.echo("no orders")
    else:
        header = ("CREATED (UTC)", "CLIENT ORDER ID", "STATE", "SIDE", "QTY", "SYMBOL", "FILLED")
        rows = [
            (
                o.intent.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                o.client_order_id,
                o.state.value,
                o.intent.side,
                dec(o.intent.quantity),
                o.symbol,
                dec(o.filled_quantity)
                + ("" if o.avg_fill_price is None else f" @ {dec(o.avg_fill_price)}"),
            )
            for o in got
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        for r in [header, *rows]:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if outage is not None:
        ctx.exit(EXIT_UNCHECKED)


@orders.command("show", short_help="One order with its events and fills.")
@click.argument("client_order_id")
@click.option("--json", "as_json", is_flag=True, help="Print {order, events, fills} as JSON.")
@click.pass_context
@wal_errors
def show_order(ctx: click.Context, client_order_id: str, as_json: bool) -> None:
    """Show one order, its events (in seq order) and its fills. CLIENT_ORDER_ID may be a
    unique prefix of the id (as `list` prints it).

    --json prints {"order": {...as in list...}, "events": [{client_order_id, seq, kind,
    state, at, broker_order_id, detail}], "fills": [{execution_key, execution_id,
    client_order_id, broker_order_id, symbol, side, quantity, price, executed_at,
    trade_id, pnl}]}. Exit 1 if the journal has no such order or the prefix names more
    than one (with --json: the error document).

    \b
    Examples:
      atb orders show 3f0c9a
      atb orders show 3f0c9a7d2b8e4c61a5f0e9d8c7b6a5e1 --json | jq .events
    """
    everything, _, _, _ = read_orders(ctx)
    matches = [
        o.client_order_id for o in everything if o.client_order_id.startswith(client_order_id)
    ]
    exact = [c for c in matches if c == client_order_id]
    if exact:
        matches = exact
    if not matches:
        raise AtbError(f"no order with client_order_id {client_order_id!r} in the journal")
    if len(matches) > 1:
        raise AtbError(
            f"{client_order_id!r} is the start of {len(matches)} orders' ids "
            f"({', '.join(sorted(matches)[:3])}{', ...' if len(matches) > 3 else ''}): "
            "give more of the id"
        )
    got, events, fills, outage = read_orders(ctx, matches[0])
    o = got[0]
    ev = [plain(e) for e in events]
    fl = [plain(f) for f in fills]
    _warn_outage(outage, 1)
    if as_json:
        echo_json({"order": plain(o.to_dict()), "events": ev, "fills": fl})
    else:
        for k, v in plain(o.to_dict()).items():
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
    if outage is not None:
        ctx.exit(EXIT_UNCHECKED)


# ---------------------------------------------------------------------- status


def resolve_broker_url(given: str | None) -> str:
    """The broker's URL: ``--broker-url``, else ``$ATB_BROKER_URL``, else the default.

    Checked as it is read: http or https, a host, a port in 1-65535. A bad one is a usage
    error (exit 2) naming where it came from, before anything is asked or changed."""
    if given is not None:
        return check_broker_url(given, "--broker-url")
    env = os.environ.get("ATB_BROKER_URL")
    if env is not None:
        return check_broker_url(env, "ATB_BROKER_URL")
    return DEFAULT_BROKER_URL


def check_broker_url(url: str, source: str) -> str:
    """``url`` if it is an http(s) URL with a host and a valid port, else a usage error."""
    problem = None
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # ValueError when not a number in 0-65535
        if parts.scheme not in ("http", "https"):
            problem = "expected an http:// or https:// URL"
        elif not parts.hostname:
            problem = "it names no host"
        elif port == 0:
            problem = "port 0 is not a port (1-65535)"
    except ValueError as exc:
        problem = str(exc).replace("Port out of range 0-65535", "port out of range 1-65535")
    if problem is not None:
        raise AtbError(
            f"{source}='{printable(mask_url(url))}' is not a valid broker URL: {problem} "
            f"(expected http[s]://host:port, e.g. {DEFAULT_BROKER_URL}); nothing was asked "
            "or changed",
            EXIT_UNREADABLE,
        )
    return url.strip()


BROKER_URL_HELP = (
    f"The broker (Alpaca v2 shape; the paper broker's URL for now). Default: "
    f"$ATB_BROKER_URL, else {DEFAULT_BROKER_URL}."
)


def _journal_positions(orders_: list[Order]) -> dict[str, Decimal]:
    positions: dict[str, Decimal] = {}
    for o in orders_:
        if o.filled_quantity:
            q = o.filled_quantity if o.intent.side == "buy" else -o.filled_quantity
            positions[o.symbol] = positions.get(o.symbol, Decimal(0)) + q
    return {s: q for s, q in positions.items() if q != 0}


def _stops(orders_: list[tuple[str, str, str, Decimal, str]], symbol: str, side: str) -> Decimal:
    """The quantity of live stop orders (symbol, side, type, remaining, id) on ``side``."""
    return sum(
        (
            r
            for s, sd, t, r, _ in orders_
            if s == symbol and sd == side and t in ("stop", "stop_limit")
        ),
        Decimal(0),
    )


async def _ask_broker(url: str, timeout: float) -> tuple[list[BrokerPosition], list[BrokerOrder]]:
    broker = HttpBroker(url, timeout=timeout)
    try:
        # the whole question within the timeout, whatever the transport does
        return await asyncio.wait_for(
            asyncio.gather(broker.get_positions(), broker.get_open_orders()), timeout
        )
    finally:
        await broker.aclose()


def order_status(
    orders_: list[Order], broker: tuple[list[BrokerPosition], list[BrokerOrder]] | None
) -> dict[str, Any]:
    """The monitoring view: positions and their stops, UNKNOWN orders, disagreements.

    With the broker's answer, positions and live stops are the broker's (the truth), and
    where the journal disagrees it is a problem (a fill the journal missed, an order the
    broker no longer has open)."""
    journal = _journal_positions(orders_)
    live = [o for o in orders_ if o.state in (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED)]
    disagreements: list[str] = []
    if broker is None:
        positions = journal
        working = [
            (o.symbol, o.intent.side, o.intent.order_type, o.remaining, o.client_order_id)
            for o in live
        ]
    else:
        b_positions, b_orders = broker
        positions = {p.symbol: p.quantity for p in b_positions if p.quantity != 0}
        working = [
            (o.symbol, o.side, o.order_type, o.remaining, o.client_order_id)  # less OCO reductions
            for o in b_orders
        ]
        for sym in sorted(set(positions) | set(journal)):
            j, b = journal.get(sym, Decimal(0)), positions.get(sym, Decimal(0))
            if j != b:
                disagreements.append(
                    f"{sym}: the journal holds {dec(j)}, the broker {dec(b)} (a fill or close "
                    "the journal has not seen: run `atb orders reconcile`)"
                )
        open_at_broker = {o.client_order_id for o in b_orders}
        for o in live:
            if o.client_order_id not in open_at_broker:
                disagreements.append(
                    f"order {o.client_order_id} is {o.state.value} in the journal but not open "
                    "at the broker (filled or cancelled there: run `atb orders reconcile`)"
                )
    out = []
    for sym, q in sorted(positions.items()):
        cover = _stops(working, sym, "sell" if q > 0 else "buy")
        out.append(
            {
                "symbol": sym,
                "quantity": dec(q),
                "stop_quantity": dec(cover),
                "protected": cover == abs(q),  # exact: more would flip the position
            }
        )
    unknown = [o.client_order_id for o in orders_ if o.state is OrderState.UNKNOWN]
    unprotected = [p["symbol"] for p in out if not p["protected"]]
    stray = [  # stops that would open or grow a position (none without a position)
        cid
        for sym, side, type_, _, cid in working
        if type_ in ("stop", "stop_limit")
        and (positions.get(sym, Decimal(0)) == 0 or (positions[sym] > 0) == (side == "buy"))
    ]
    return {
        "ok": not unknown and not unprotected and not disagreements and not stray,
        "unknown_orders": unknown,
        "unprotected_positions": unprotected,
        "stray_stops": stray,
        "disagreements": disagreements,
        "positions": out,
        "open_orders": sum(1 for o in orders_ if o.state.value not in _FINAL),
        "emergency_stops": sum(
            1 for o in live if o.client_order_id.startswith(EMERGENCY_STOP_PREFIX)
        ),
    }


@orders.command("status", short_help="For monitoring: UNKNOWN orders, unprotected positions.")
@click.option("--broker-url", default=None, metavar="URL", help=BROKER_URL_HELP)
@click.option("--no-broker", is_flag=True, help="Do not ask the broker: the journal only.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=BROKER_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="How long the broker may take to answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
@wal_errors
def status_cmd(
    ctx: click.Context, broker_url: str | None, no_broker: bool, timeout: float, as_json: bool
) -> None:
    """For monitoring: asks the broker (within --timeout) for its positions and open
    orders, and checks them against the journal (pending entries included).

    Exit 0: every position has stops covering it, no order is UNKNOWN, the journal and the
    broker agree, trading is not halted by the operator... and the broker answered. Exit 1:
    an order is UNKNOWN, a position is unprotected, or the journal and the broker disagree.
    Exit 3: could not check: the broker did not answer (the journal's own view is still
    shown, labelled), or the database could not be read. Exit 2: no log, or not the log's
    database. With --no-broker the broker is not asked, the output says so, and the exit
    code is the journal's (0 or 1). A halt (`atb orders halt`) is shown, not an error.

    --json prints {ok, checked_broker, broker_url, broker_error, halted, unknown_orders,
    unprotected_positions, stray_stops, disagreements, positions: [{symbol, quantity,
    stop_quantity, protected}], open_orders, emergency_stops, database_error, exit_code}.
    A position is protected only when its stops on the reducing side cover it exactly; a
    stop that would open or grow a position is listed in stray_stops (exit 1).

    \b
    Examples:
      atb orders status
      atb orders status --json | jq .unprotected_positions
      atb orders status --no-broker
    """
    url = DEFAULT_BROKER_URL if no_broker else resolve_broker_url(broker_url)
    shown = mask_url(url)  # printed, and in --json: never the broker's password
    got, _, _, outage = read_orders(ctx)
    broker_error: str | None = None
    answer = None
    if not no_broker:
        try:
            answer = asyncio.run(_ask_broker(url, timeout))
        except (BrokerError, TimeoutError) as exc:
            text = (
                exc.message if isinstance(exc, BrokerError) else f"no answer within {timeout:g} s"
            )
            broker_error = f"the broker at {shown} did not answer: {one_line(mask_text(text, url))}"
    st = order_status(got, answer)
    halt = read_halt(get_config(ctx).directory)
    code = 0
    if outage is not None or broker_error is not None:
        code = EXIT_UNCHECKED
    if not st["ok"]:
        code = EXIT_PROBLEM
    doc = {
        **st,
        "checked_broker": answer is not None,
        "broker_url": None if no_broker else shown,
        "broker_error": broker_error,
        "halted": None if halt is None else halt.to_dict(),
        "database_error": outage,
        "exit_code": code,
    }
    if as_json:
        echo_json(doc)
    else:
        head = {0: "OK", EXIT_PROBLEM: "PROBLEM", EXIT_UNCHECKED: "NOT CHECKED"}[code]
        click.echo(
            f"{head}: {st['open_orders']} open order(s), {len(st['positions'])} position(s), "
            f"{len(st['unknown_orders'])} unknown, {len(st['unprotected_positions'])} unprotected"
        )
        if no_broker:
            click.echo("  broker: not asked (--no-broker): positions and stops are the journal's")
        elif broker_error is not None:
            click.echo(f"  broker: NOT CHECKED: {broker_error}; below: the journal's own view")
        else:
            click.echo(f"  broker: asked {shown}: positions and stops are the broker's")
        if outage is not None:
            click.echo(f"  database: NOT READ: {outage}; below: the log's pending orders only")
        if halt is not None:
            click.echo(f"  trading: HALTED: {halt.describe()}")
        for cid in st["unknown_orders"]:
            click.echo(f"  UNKNOWN order {cid}: run `atb orders reconcile`")
        for line in st["disagreements"]:
            click.echo(f"  DISAGREE {line}")
        for p in st["positions"]:
            mark = "ok" if p["protected"] else "NOT EXACTLY PROTECTED"
            click.echo(f"  {p['symbol']}: {p['quantity']} (stops {p['stop_quantity']}) {mark}")
        for cid in st["stray_stops"]:
            click.echo(f"  STOP {cid} would open or grow a position: run `atb orders reconcile`")
    ctx.exit(code)


@orders.command("verify", short_help="Verify the tamper-evident audit chain of order events.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@wal_errors
def verify_cmd(ctx: click.Context, as_json: bool) -> None:
    """Recompute the hash chain over every order event and check the anchors, then the
    orders and fills tables against the hashed events.

    Exit 0 when intact; 1 with "first broken link at seq N (expected ..., found ...)" when
    a row was changed or removed, or an anchor names rows cut off the end, or with one
    line per order or fill row that differs from its hashed events ("fill K of order C:
    price is ... in the fills table but ... in its hashed fill event (seq N, audit seq M):
    the row was changed"; a row deleted or added); 2 when there is no log or its database
    is missing; 3 when the database cannot be read.

    --json prints {ok, events, anchors, last_seq, last_confirmed_anchor, first_broken_seq,
    problems, digest_entries, orders_checked, fills_checked, format1_events,
    format1_seqs}. The log's digest file (order-audit.digest) is compared too: a rewrite of
    both tables is detected by it. Events of chain format 1 (journaled before the schema's
    revision 0005) do not cover their orders' and fills' contents: they are counted.

    \b
    Examples:
      atb orders verify
      atb orders verify --json
    """
    config = get_config(ctx)
    what = "read the audit trail"
    source = resolve(ctx, config, what=what)
    db = open_database(source, config, what=what)
    try:
        report = verify_audit(db, digest=digest_path(config.directory))
    except WALDatabaseError as exc:
        raise AtbError(f"cannot {what}: {exc}", EXIT_UNCHECKED) from None
    except Exception as exc:  # SQLAlchemy and the driver: one line, never a traceback
        raise AtbError(
            f"cannot {what} from {source.shown_url}: {describe_error(exc, source.url)}",
            EXIT_UNCHECKED,
        ) from None
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
