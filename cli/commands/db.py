"""``atb db upgrade | current | downgrade``: the database schema's migrations (Alembic)."""

from __future__ import annotations

import click

from cli._common import AtbError, WalContext, get_config, wal_errors
from wal.config import mask_url
from wal.db import migrate
from wal.db.versioning import HEAD


@click.group("db")
@click.option(
    "--database-url", default=None, metavar="URL", help="The database (overrides DATABASE_URL)."
)
@click.pass_context
def db(ctx: click.Context, database_url: str | None) -> None:
    """The database's schema revision and its migrations (shipped in the package).

    \b
    Examples:
      atb db current
      atb db upgrade
      atb db downgrade 0001
    """
    ctx.obj = WalContext(database_url=database_url)


@db.command("current", short_help="Print the database's schema revision and the code's.")
@click.pass_context
@wal_errors
def current(ctx: click.Context) -> None:
    """Print the database's revision and the one this code needs; exit 1 if they differ.

    \b
    Examples:
      atb db current
      atb db --database-url postgresql+psycopg://atb@db/atb current
    """
    url = get_config(ctx).database_url
    rev, ours = migrate.current(url)
    shown = rev or ("none (tables from before migrations)" if ours else "none (empty)")
    click.echo(f"database {mask_url(url)}: revision {shown}; this code needs {HEAD}")
    if rev != HEAD and (rev is not None or ours):
        raise AtbError("the schema is not the code's: run `atb db upgrade`")


@db.command("upgrade", short_help="Migrate the database to the code's schema.")
@click.option("--revision", default="head", show_default=True, help="The target revision.")
@click.pass_context
@wal_errors
def upgrade(ctx: click.Context, revision: str) -> None:
    """Apply the migrations up to REVISION (each in its own transaction); idempotent.

    A database made before migrations (the baseline's tables) is adopted first.

    \b
    Examples:
      atb db upgrade
      atb db upgrade --revision 0002
    """
    url = get_config(ctx).database_url
    r = migrate.upgrade(url, revision)
    if r.before == r.after:
        click.echo(f"database {mask_url(url)} is at revision {r.after}: nothing to do")
    else:
        click.echo(f"database {mask_url(url)}: revision {r.before or 'none'} -> {r.after}")


@db.command("downgrade", short_help="Migrate the database back to REVISION.")
@click.argument("revision")
@click.pass_context
@wal_errors
def downgrade(ctx: click.Context, revision: str) -> None:
    """Undo the migrations above REVISION (never below the baseline, 0001).

    \b
    Examples:
      atb db downgrade 0001
    """
    url = get_config(ctx).database_url
    try:
        r = migrate.downgrade(url, revision)
    except RuntimeError as exc:
        raise AtbError(str(exc)) from None
    click.echo(f"database {mask_url(url)}: revision {r.before or 'none'} -> {r.after}")
