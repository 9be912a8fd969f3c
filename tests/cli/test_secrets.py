"""No password in anything ``atb`` prints: text, ``--json``, errors, ``-v`` logs.

Every command that names the database or the broker runs against a database URL holding a
password (to a dead port: the errors are where drivers quote URLs) and a broker URL holding
one; the password must appear nowhere in stdout or stderr, whatever way it is written
(``user:password@``, an unencoded ``@`` in it, ``?sslpassword=``, a libpq DSN).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers_log import make_entry
from orders_helpers import make_rig

from cli.main import atb
from wal import WALStorage, masking

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(autouse=True)
def forget() -> Iterator[None]:
    saved = getattr(masking, "_remembered", frozenset())
    yield
    masking._remembered = saved


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    # what one `atb` process knows: no secret remembered from an earlier command of the test
    masking._remembered = frozenset()
    return CliRunner().invoke(atb, args, env=env, catch_exceptions=False)


def assert_hidden(r: Result, secrets: list[str], what: str) -> None:
    out = r.stdout + r.stderr
    assert "Traceback" not in out, (what, out)
    for s in secrets:
        assert s not in out, (what, s, out)


# (database URL, what must never be printed)
DEAD_DATABASES = [
    ("postgresql://trader:hunter2@127.0.0.1:1/atb", ["hunter2"]),
    ("postgresql://trader:h@nter2@127.0.0.1:1/atb", ["nter2"]),
    ("postgresql://trader@127.0.0.1:1/atb?sslpassword=hunter2", ["hunter2"]),
    ("host=127.0.0.1 port=1 user=trader password = hunter2", ["hunter2"]),
    ("host=127.0.0.1 port=1 user=trader password='hun ter2'", ["hun ter2"]),
]

WAL_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["sync", "--yes"],
    ["sync", "--yes", "--json"],
    ["replay", "--since", "1", "--yes"],
    ["replay", "--since", "1", "--dry-run", "--json"],
    ["metrics"],
]
ORDERS_COMMANDS = [
    ["list"],
    ["list", "--json"],
    ["status", "--no-broker"],
    ["status", "--no-broker", "--json"],
    ["verify"],
    ["halt", "--reason", "x"],
]


@pytest.mark.parametrize(("url", "secrets"), DEAD_DATABASES, ids=[s for s, _ in DEAD_DATABASES])
def test_no_command_prints_the_database_password(
    tmp_path: Path, url: str, secrets: list[str]
) -> None:
    with WALStorage(tmp_path / "wal") as log:
        for i in range(3):
            log.append(make_entry(i))
    env = {"WAL_DB_TIMEOUT_MS": "300"}
    runs: list[tuple[list[str], dict[str, str]]] = []
    for args in WAL_COMMANDS:
        runs.append((["wal", "--dir", "wal", "--database-url", url, *args], env))
        runs.append((["wal", "--dir", "wal", *args], {**env, "DATABASE_URL": url}))
    runs.append((["-v", "wal", "--dir", "wal", "--database-url", url, "sync", "--yes"], env))
    for args in ORDERS_COMMANDS:
        runs.append((["orders", "--dir", "wal", "--database-url", url, *args], env))
    for args in (["config", "show"], ["config", "show", "--json"]):
        runs.append(([*args, "--database-url", url], env))
        runs.append((args, {**env, "DATABASE_URL": url}))
    for args in (["db", "current"], ["db", "upgrade"]):
        runs.append((args, {**env, "DATABASE_URL": url}))
    for args, e in runs:
        assert_hidden(invoke(args, e), secrets, " ".join(args))


BROKERS = [
    ("http://trader:hunter2@127.0.0.1:1", ["hunter2"]),
    ("http://trader:h@nter2@127.0.0.1:1", ["nter2"]),
    ("http://127.0.0.1:1/?api_key=hunter2", ["hunter2"]),
]

BROKER_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["reconcile"],
    ["reconcile", "--json"],
    ["reconcile", "--dry-run"],
    ["flatten", "--yes"],
    ["flatten", "--dry-run"],
    ["cancel", "abc", "--yes"],
]


@pytest.mark.parametrize(("broker", "secrets"), BROKERS, ids=[s for s, _ in BROKERS])
def test_no_orders_command_prints_the_broker_password(
    tmp_path: Path, broker: str, secrets: list[str]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'atb.db'}"
    make_rig(tmp_path, url=db_url).close()  # the engine's log and database, a deposit applied
    base = ["orders", "--dir", "wal", "--database-url", db_url]
    seen_broker_error = False
    for args in BROKER_COMMANDS:
        for how in ("env", "option"):
            if how == "env":
                r = invoke([*base, *args], {"ATB_BROKER_URL": broker})
            else:
                r = invoke([*base, args[0], "--broker-url", broker, *args[1:]])
            assert_hidden(r, secrets, f"{' '.join(args)} ({how})")
            seen_broker_error |= "127.0.0.1:1" in r.stdout + r.stderr
    assert seen_broker_error  # the broker was named (masked), so the check looked at it
    r = invoke([*base, "status", "--json"], {"ATB_BROKER_URL": broker})
    assert '"broker_url": "http://' in r.stdout and "127.0.0.1:1" in r.stdout
