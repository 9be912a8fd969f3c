"""``atb serve``: the order service in the engine's process; ``atb serve token ...``."""

from __future__ import annotations

import dataclasses
import logging
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click
import orjson
import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from cli._common import (
    EXIT_UNCHECKED,
    EXIT_UNREADABLE,
    AtbError,
    NonEmptyPath,
    WalContext,
    get_config,
    listen_socket,
    note_saved_prices,
    parse_prices,
    serve_until_stopped,
    short_path,
    wal_errors,
)
from wal import DurableDatabaseManager
from wal.db import DatabaseManager
from wal.db.classify import describe_error
from wal.db.versioning import ensure_schema
from wal.errors import WALError, printable
from wal.masking import mask_url
from wal.orders import (
    ClientIdRules,
    DedupScope,
    FaultPlan,
    PaperBroker,
    ReconcilerConfig,
    RetryPolicy,
    RiskLimits,
)
from wal.service.app import create_app
from wal.service.config import ServiceConfig
from wal.service.runtime import ServiceRuntime
from wal.service.tokens import TokenStore, valid_trader


@click.group("serve", invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port; 0 picks a free one (printed on start).",
)
@click.option(
    "--dir",
    "directory",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    default=None,
    help="The log directory (overrides WAL_DIR; default data/wal).",
)
@click.option(
    "--database-url", default=None, metavar="URL", help="The database (overrides DATABASE_URL)."
)
@click.option(
    "--paper-state",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=None,
    help="The paper broker's durable state file (0600, fsynced; default: next to WAL_DIR).",
)
@click.option(
    "--paper-faults",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A FaultPlan as JSON (FaultPlan.to_dict) for the paper broker (tests, drills).",
)
@click.option(
    "--paper-balance",
    default=None,
    metavar="AMOUNT",
    help="Credit each trader's paper account once (default SERVICE_PAPER_BALANCE, else 100000).",
)
@click.option(
    "--price",
    "prices",
    multiple=True,
    metavar="SYMBOL=PRICE",
    help="A paper market's starting price, SYMBOL=positive price (repeatable; default 100). "
    "A saved paper state keeps its own prices (said on stderr).",
)
@click.option(
    "--tick",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Step the paper prices (random walk) at every fill poll; 0: never.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    directory: Path | None,
    database_url: str | None,
    paper_state: Path | None,
    paper_faults: Path | None,
    paper_balance: str | None,
    prices: tuple[str, ...],
    tick: float,
) -> None:
    """Serve the order API, its event stream and the status page (the paper broker).

    Runs in this process, which owns the log. Prints "listening on http://HOST:PORT" once
    it accepts connections; /readyz is 503 until the startup reconciliation succeeded.

    \b
    Examples:
      atb db upgrade
      atb serve token create --trader alice
      atb serve --port 8080 --paper-state data/paper.json
    """
    ctx.obj = WalContext(directory=directory, database_url=database_url)
    if ctx.invoked_subcommand is not None:
        return
    config = get_config(ctx)
    start_prices = parse_prices(prices)  # a usage error (exit 2) names a bad one
    if paper_state is not None and not paper_state.parent.is_dir():
        raise AtbError(
            f"--paper-state {short_path(str(paper_state))}: its directory "
            f"{short_path(str(paper_state.parent))} does not exist (create it, or name a file "
            "in an existing directory); nothing was started",
            EXIT_UNREADABLE,
        )
    try:
        svc = ServiceConfig.from_env()
        if paper_balance is not None:
            svc = _with_balance(svc, paper_balance)
        elif svc.paper_balance is None:
            svc = _with_balance(svc, "100000")
        risk = RiskLimits.from_env()
        retry = RetryPolicy.from_env()
        faults = (
            FaultPlan.from_dict(orjson.loads(paper_faults.read_bytes())) if paper_faults else None
        )
        # durable next to the log by default: a restarted service finds its orders there
        state_path = paper_state or config.directory.parent / "paper-broker.json"
        paper = PaperBroker(
            # in-process: seen at once; it refuses a reused client id forever (a resend is safe)
            rules=ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0.0),
            faults=faults,
            state_path=state_path,
            prices=start_prices,
        )
    except (WALError, ValueError, ArithmeticError, OSError) as exc:
        raise AtbError(f"cannot start the service: {printable(exc)}") from None
    note_saved_prices(start_prices, paper.price, state_path)
    try:
        db = DatabaseManager(config.database_url)
        ensure_schema(db.engine, db.safe_url)  # an empty one is created; one behind: refused
    except WALError as exc:
        raise AtbError(f"cannot start: {exc}") from None
    except SQLAlchemyError as exc:  # unreachable, refused, a bad port or host, no such file
        raise AtbError(
            f"cannot start: database {mask_url(config.database_url)} did not answer: "
            f"{describe_error(exc)} (is it running? check DATABASE_URL or --database-url); "
            "nothing was started",
            EXIT_UNCHECKED,
        ) from None
    try:
        ddb = DurableDatabaseManager(db, config=config)
    except WALError as exc:  # the log locked by its writer, unreadable, ...
        db.dispose()
        raise AtbError(f"cannot start: {exc}") from None
    sock = listen_socket(host, port)  # TCP_NODELAY: no 40 ms wait behind headers
    bound = sock.getsockname()[1]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ddb.start()
    try:
        b = svc.reconcile_backoff
        rt = ServiceRuntime(
            ddb,
            paper,
            svc,
            risk=risk,
            retry=retry,
            reconciler=ReconcilerConfig(fetch_backoff=(b, 2 * b, 4 * b)),
            paper=paper,
            venue="paper",
            paper_tick=tick,
        )
        app = create_app(rt)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                ws="websockets-sansio",
                timeout_graceful_shutdown=5,  # a stuck client never keeps the engine up
            )
        )

        serve_until_stopped(server, sock, f"http://{host}:{bound}")
    finally:
        # the log closed (its last writes synced, its lock released), the connections closed
        ddb.stop()
        ddb.db.dispose()


def _with_balance(svc: ServiceConfig, raw: str) -> ServiceConfig:
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"--paper-balance {raw!r} is not an amount") from None
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"--paper-balance {raw!r} must be a positive amount")
    return dataclasses.replace(svc, paper_balance=amount)


@serve.group("token")
def token() -> None:
    """Traders' bearer tokens (stored hashed; a token is shown once, when it is made).

    \b
    Examples:
      atb serve token create --trader alice
      atb serve token list
      atb serve token revoke 3f9a0c1d2e4b5a69
    """


def _store(ctx: click.Context) -> TokenStore:
    config = get_config(ctx)
    db = DatabaseManager(config.database_url)
    ensure_schema(db.engine, db.safe_url)
    return TokenStore(db.engine)


@token.command("create", short_help="Make a token for a trader (printed once).")
@click.option("--trader", "trader_id", required=True, help="The trader's id.")
@click.pass_context
@wal_errors
def create(ctx: click.Context, trader_id: str) -> None:
    """Print a new bearer token for TRADER: only its SHA-256 is stored, keep it now.

    \b
    Examples:
      atb serve token create --trader alice
    """
    try:
        valid_trader(trader_id)
    except ValueError as exc:
        raise AtbError(str(exc)) from None
    click.echo(_store(ctx).create(trader_id))


@token.command("list", short_help="List tokens (ids and traders; never the tokens).")
@click.option("--trader", "trader_id", default=None, help="Only this trader's.")
@click.pass_context
@wal_errors
def list_tokens(ctx: click.Context, trader_id: str | None) -> None:
    """List the tokens' ids, traders and states (the tokens themselves are not kept).

    \b
    Examples:
      atb serve token list
      atb serve token list --trader alice
    """
    for t in _store(ctx).list(trader_id):
        state = f"revoked {t.revoked_at.isoformat()}" if t.revoked_at else "live"
        click.echo(f"{t.token_id}  {t.trader_id}  created {t.created_at.isoformat()}  {state}")


@token.command("revoke", short_help="Revoke a token by its id.")
@click.argument("token_id")
@click.pass_context
@wal_errors
def revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke the token with id TOKEN_ID (the part after `atb_`).

    \b
    Examples:
      atb serve token revoke 3f9a0c1d2e4b5a69
    """
    if not _store(ctx).revoke(token_id):
        raise AtbError(f"no live token with id {token_id!r} (see `atb serve token list`)")
    click.echo(f"revoked {token_id}")
