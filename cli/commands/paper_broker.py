"""``atb paper-broker serve``: the paper broker as its own process (HTTP, Alpaca v2 shape)."""

from __future__ import annotations

from pathlib import Path

import click
import orjson
import uvicorn

from cli._common import (
    AtbError,
    listen_socket,
    note_saved_prices,
    parse_prices,
    serve_until_stopped,
)
from wal.orders.broker import ClientIdRules, DedupScope
from wal.orders.faults import FaultPlan
from wal.orders.paper import PaperBroker
from wal.orders.server import Clock, create_app


@click.group("paper-broker")
def paper_broker() -> None:
    """A simulated broker with fault injection, for tests and dry runs.

    \b
    Examples:
      atb paper-broker serve --state data/paper.json
      atb paper-broker serve --port 0 --dedup-scope open_only --faults plan.json
    """


@paper_broker.command("serve", short_help="Serve the paper broker over HTTP.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="Port; 0 picks a free one (printed on start).",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Durable state file (0600), with FILE.changes beside it (every change fdatasynced).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of ids and faults.")
@click.option(
    "--dedup-scope",
    type=click.Choice([DedupScope.GLOBAL.value, DedupScope.OPEN_ONLY.value]),
    default="global",
    show_default=True,
    help="Refuse a reused client id forever (global) or while open (open_only).",
)
@click.option(
    "--visibility-window",
    type=float,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Declared lag before a new order is visible to lookups.",
)
@click.option(
    "--faults",
    "faults_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A FaultPlan as JSON (FaultPlan.to_dict).",
)
@click.option(
    "--tick",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="Step every price (seeded random walk, up to 1 %) this often; 0: never.",
)
@click.option(
    "--price",
    "prices",
    multiple=True,
    metavar="SYMBOL=PRICE",
    help="Starting market price, SYMBOL=positive price (repeatable; default 100). A saved "
    "--state keeps its own prices (said on stderr).",
)
def serve(
    host: str,
    port: int,
    state_path: Path | None,
    seed: int,
    dedup_scope: str,
    visibility_window: float,
    faults_path: Path | None,
    tick: float,
    prices: tuple[str, ...],
) -> None:
    """Serve a PaperBroker: POST /v2/orders, GET /v2/orders:by_client_order_id, ...

    Prints "listening on http://HOST:PORT" once it accepts connections. Binds to
    127.0.0.1 unless told otherwise: it has no authentication.

    \b
    Examples:
      atb paper-broker serve --state data/paper.json
      atb paper-broker serve --port 0 --price AAPL=187.25
    """
    start_prices = parse_prices(prices)  # a usage error (exit 2) names a bad one
    try:
        plan = (
            FaultPlan.from_dict(orjson.loads(faults_path.read_bytes()))
            if faults_path
            else FaultPlan(seed=seed)
        )
        broker = PaperBroker(
            rules=ClientIdRules(
                dedup_scope=DedupScope(dedup_scope), visibility_window_seconds=visibility_window
            ),
            faults=plan,
            seed=seed,
            state_path=state_path,
            prices=start_prices,
        )
    except (ValueError, ArithmeticError, OSError) as exc:
        raise AtbError(f"cannot start the paper broker: {exc}") from None
    if state_path is not None:
        note_saved_prices(start_prices, broker.price, state_path)
    sock = listen_socket(host, port)  # TCP_NODELAY: no 40 ms wait behind headers
    bound = sock.getsockname()[1]
    config = uvicorn.Config(create_app(broker, Clock(tick)), log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    serve_until_stopped(server, sock, f"http://{host}:{bound}")  # exit 0 on SIGTERM
