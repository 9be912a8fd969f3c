"""``atb config show``: the effective settings, and where each one came from."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from cli._common import AtbError, NonEmptyPath, echo_json, one_line
from cli.commands.orders import DEFAULT_BROKER_URL
from wal.config import ENV_VARS, WALConfig, mask_url
from wal.errors import WALConfigError

# the settings of the CLI itself, beside WALConfig's: (name, variable, default, meaning)
_CLI_SETTINGS = (
    ("broker_url", "ATB_BROKER_URL", DEFAULT_BROKER_URL, "the broker `atb orders` asks"),
    ("log_format", "WAL_LOG_FORMAT", "text", "text | json: the format of log lines on stderr"),
)


@click.group()
def config() -> None:
    """The settings `atb` and the library use (WAL_* variables, DATABASE_URL, ...).

    \b
    Examples:
      atb config show
      atb config show --json
    """


@config.command("show", short_help="The effective settings and where each came from.")
@click.option(
    "--dir",
    "directory",
    type=NonEmptyPath(path_type=Path),
    default=None,
    help="As `atb wal --dir`: shown as the source of the directory.",
)
@click.option("--database-url", default=None, metavar="URL", help="As `atb wal --database-url`.")
@click.option("--json", "as_json", is_flag=True, help="Print {settings: [...]} as JSON.")
def show(directory: Path | None, database_url: str | None, as_json: bool) -> None:
    """Print every setting with its effective value and where it came from: `default`, the
    environment variable that set it (`env WAL_DIR`), or an option (`--dir`). Secrets are
    masked: a database URL's password, any password in the broker URL. A bad value stops
    with one line naming the variable (exit 1), as every command does.

    --json prints {"settings": [{name, variable, value, source}]} (values as strings;
    null when unset).

    \b
    Examples:
      atb config show
      atb config show --json | jq '.settings[] | select(.source != "default")'
    """
    overrides: dict[str, Any] = {}
    if directory is not None:
        overrides["directory"] = directory
    if database_url is not None:
        overrides["database_url"] = database_url
    try:
        cfg = WALConfig.from_env(**overrides)
    except WALConfigError as exc:
        raise AtbError(str(exc)) from None
    rows: list[dict[str, Any]] = []
    shown = cfg.to_dict()  # the database password masked
    for f in fields(WALConfig):
        var = ENV_VARS[f.name]
        if f.name in overrides:
            source = "--dir" if f.name == "directory" else "--database-url"
        elif os.environ.get(var) is not None:
            source = f"env {var}"
        else:
            source = "default"
        value = shown[f.name]
        rows.append(
            {
                "name": f.name,
                "variable": var,
                "value": None if value is None else str(value),
                "source": source,
            }
        )
    for name, var, default, _meaning in _CLI_SETTINGS:
        raw = os.environ.get(var)
        rows.append(
            {
                "name": name,
                "variable": var,
                "value": mask_url(raw if raw is not None else default),
                "source": "default" if raw is None else f"env {var}",
            }
        )
    if as_json:
        echo_json({"settings": rows})
        return
    width = max(len(r["name"]) for r in rows)
    vwidth = min(48, max(len(str(r["value"])) for r in rows))
    for r in rows:
        value = "-" if r["value"] is None else one_line(r["value"])
        click.echo(f"{r['name']:<{width}}  {value:<{vwidth}}  ({r['source']})")
