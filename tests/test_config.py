"""``WALConfig``: defaults, every variable, every rejection, and no password ever printed."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

import wal.config
from wal.config import ENV_VARS, WALConfig, mask_url
from wal.errors import WALConfigError
from wal.log.options import StorageOptions

SECRET = "s3cr3t-pw"
PG_URL = f"postgresql+psycopg://trader:{SECRET}@db.internal:5432/atb"

DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "directory": Path("data/wal"),
    "sync_interval": 5.0,
    "max_retries": 10,
    "retention_hours": 168.0,
    "fsync": "always",
    "fsync_interval_ms": 10.0,
    "max_segment_bytes": 64 * 1024 * 1024,
    "pending_alert_threshold": 1000,
    "pending_alert_age_seconds": 300.0,
    "batch_size": 500,
    "idempotency_cache_size": 100_000,
    "breaker_failure_threshold": 5,
    "breaker_cooldown_seconds": 10.0,
    "backoff_base_seconds": 0.5,
    "backoff_max_seconds": 60.0,
    "preallocate": "zero",
    "max_entry_bytes": 4 * 1024 * 1024,
    "recovery": "tolerate_tail",
    "db_timeout_ms": 2000,
    "apply_mode": "behind",
    "metrics_port": None,
    "metrics_address": "127.0.0.1",
    "database_url": "sqlite:///data/atb.db",
}

# (variable, text, field, parsed value): one good value of every variable
GOOD = [
    ("WAL_ENABLED", "false", "enabled", False),
    ("WAL_DIR", "/var/lib/atb/wal", "directory", Path("/var/lib/atb/wal")),
    ("WAL_SYNC_INTERVAL", "2.5", "sync_interval", 2.5),
    ("WAL_MAX_RETRIES", "3", "max_retries", 3),
    ("WAL_RETENTION_HOURS", "0", "retention_hours", 0.0),
    ("WAL_FSYNC", "interval", "fsync", "interval"),
    ("WAL_FSYNC_INTERVAL_MS", "25", "fsync_interval_ms", 25.0),
    ("WAL_MAX_SEGMENT_BYTES", "1048576", "max_segment_bytes", 1048576),
    ("WAL_PENDING_ALERT_THRESHOLD", "0", "pending_alert_threshold", 0),
    ("WAL_PENDING_ALERT_AGE", "60", "pending_alert_age_seconds", 60.0),
    ("WAL_BATCH_SIZE", "1", "batch_size", 1),
    ("WAL_IDEMPOTENCY_CACHE_SIZE", "0", "idempotency_cache_size", 0),
    ("WAL_BREAKER_FAILURES", "2", "breaker_failure_threshold", 2),
    ("WAL_BREAKER_COOLDOWN", "0.25", "breaker_cooldown_seconds", 0.25),
    ("WAL_BACKOFF_BASE", "0.1", "backoff_base_seconds", 0.1),
    ("WAL_BACKOFF_MAX", "5", "backoff_max_seconds", 5.0),
    ("WAL_RECOVERY", "strict", "recovery", "strict"),
    ("WAL_PREALLOCATE", "off", "preallocate", "off"),
    ("WAL_MAX_ENTRY_BYTES", "65536", "max_entry_bytes", 65536),
    ("WAL_DB_TIMEOUT_MS", "250", "db_timeout_ms", 250),
    ("WAL_APPLY", "inline", "apply_mode", "inline"),
    ("WAL_METRICS_PORT", "9464", "metrics_port", 9464),
    ("WAL_METRICS_ADDR", "0.0.0.0", "metrics_address", "0.0.0.0"),
    ("DATABASE_URL", PG_URL, "database_url", PG_URL),
]

# (variable, bad text, a word the "accepted" part must contain)
BAD = [
    ("WAL_ENABLED", "maybe", "true/false"),
    ("WAL_ENABLED", "2", "true/false"),
    ("WAL_SYNC_INTERVAL", "0", "> 0"),
    ("WAL_SYNC_INTERVAL", "-1", "> 0"),
    ("WAL_SYNC_INTERVAL", "nan", "> 0"),
    ("WAL_SYNC_INTERVAL", "inf", "> 0"),
    ("WAL_SYNC_INTERVAL", "five", "> 0"),
    ("WAL_MAX_RETRIES", "0", ">= 1"),
    ("WAL_MAX_RETRIES", "2.5", ">= 1"),
    ("WAL_RETENTION_HOURS", "-1", ">= 0"),
    ("WAL_RETENTION_HOURS", "1e300", "<= 876000"),  # a cutoff before year 1
    ("WAL_RETENTION_HOURS", "nan", ">= 0"),
    ("WAL_FSYNC", "sometimes", "unsafe_never"),
    ("WAL_FSYNC", "ALWAYS", "always"),
    ("WAL_FSYNC_INTERVAL_MS", "0", "> 0"),
    ("WAL_FSYNC_INTERVAL_MS", "60001", "60000"),
    ("WAL_MAX_SEGMENT_BYTES", "4095", ">= 4096"),
    ("WAL_MAX_SEGMENT_BYTES", "64MiB", ">= 4096"),
    ("WAL_PENDING_ALERT_THRESHOLD", "-1", ">= 0"),
    ("WAL_PENDING_ALERT_AGE", "0", "> 0"),
    ("WAL_BATCH_SIZE", "0", ">= 1"),
    ("WAL_IDEMPOTENCY_CACHE_SIZE", "-5", ">= 0"),
    ("WAL_BREAKER_FAILURES", "0", ">= 1"),
    ("WAL_BREAKER_COOLDOWN", "-1", "> 0"),
    ("WAL_BACKOFF_BASE", "0", "> 0"),
    ("WAL_BACKOFF_MAX", "x", "> 0"),
    ("WAL_RECOVERY", "yolo", "skip_corrupt"),
    ("WAL_PREALLOCATE", "yes", "zero | fallocate | off"),
    ("WAL_MAX_ENTRY_BYTES", "100", ">= 1024"),
    ("WAL_DB_TIMEOUT_MS", "0", ">= 1"),
    ("WAL_DB_TIMEOUT_MS", "1.5", ">= 1"),
    ("WAL_APPLY", "later", "behind | inline"),
    ("WAL_APPLY", "BEHIND", "behind | inline"),
    ("WAL_METRICS_PORT", "65536", "0..65535"),
    ("WAL_METRICS_PORT", "http", "0..65535"),
    ("WAL_METRICS_ADDR", " ", "address"),
    ("DATABASE_URL", "not a url", "SQLAlchemy URL"),
]


def test_defaults_are_the_documented_ones() -> None:
    cfg = WALConfig.from_env({})
    assert {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} == DEFAULTS
    assert cfg == WALConfig()


def test_every_field_has_a_variable_and_a_test() -> None:
    names = {f.name for f in dataclasses.fields(WALConfig)}
    assert set(ENV_VARS) == names == {g[2] for g in GOOD}
    assert set(ENV_VARS.values()) == {g[0] for g in GOOD}
    # the module's documentation table names every variable
    doc = wal.config.__doc__ or ""
    assert all(f"``{var}``" in doc for var in ENV_VARS.values())


@pytest.mark.parametrize(("var", "text", "name", "value"), GOOD)
def test_each_variable_is_read(var: str, text: str, name: str, value: Any) -> None:
    cfg = WALConfig.from_env({var: text})
    assert getattr(cfg, name) == value
    assert type(getattr(cfg, name)) is type(value)
    # only that field changed
    others = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != name}
    assert others == {k: v for k, v in DEFAULTS.items() if k != name}


@pytest.mark.parametrize(
    ("text", "value"),
    [(t, True) for t in ("true", "1", "yes", "on", "TRUE", " On ")]
    + [(t, False) for t in ("false", "0", "no", "off", "False", "NO")],
)
def test_booleans(text: str, value: bool) -> None:
    assert WALConfig.from_env({"WAL_ENABLED": text}).enabled is value


@pytest.mark.parametrize(("var", "text", "accepted"), BAD)
def test_bad_value_names_variable_value_and_what_is_accepted(
    var: str, text: str, accepted: str
) -> None:
    with pytest.raises(WALConfigError) as info:
        WALConfig.from_env({var: text})
    err = info.value
    assert err.name == var
    assert accepted in err.accepted
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"{var}=")
    assert repr(text) in message or text in message


@pytest.mark.parametrize("var", sorted(ENV_VARS.values()))
def test_empty_value_is_an_error_not_the_default(var: str) -> None:
    # a blank DATABASE_URL from a broken template must not fall back to the SQLite default
    with pytest.raises(WALConfigError) as info:
        WALConfig.from_env({var: "  "})
    assert info.value.name == var


def test_backoff_max_below_base_is_refused() -> None:
    with pytest.raises(WALConfigError) as info:
        WALConfig.from_env({"WAL_BACKOFF_BASE": "2", "WAL_BACKOFF_MAX": "1"})
    assert info.value.name == "WAL_BACKOFF_MAX"
    with pytest.raises(WALConfigError, match="backoff_max_seconds"):
        WALConfig(backoff_base_seconds=2.0, backoff_max_seconds=1.0)


def test_overrides_win_over_the_environment() -> None:
    env = {"WAL_DIR": "/from/env", "WAL_FSYNC": "interval", "WAL_MAX_RETRIES": "3"}
    cfg = WALConfig.from_env(env, directory="/from/cli", max_retries=7)
    assert cfg.directory == Path("/from/cli")
    assert cfg.max_retries == 7
    assert cfg.fsync == "interval"
    with pytest.raises(TypeError, match="no field"):
        WALConfig.from_env({}, dirctory="/typo")


def test_overrides_and_direct_construction_are_validated_by_field_name() -> None:
    with pytest.raises(WALConfigError) as info:
        WALConfig.from_env({}, max_retries=0)
    assert info.value.name == "max_retries"
    with pytest.raises(WALConfigError, match=r"^fsync="):
        WALConfig(fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(WALConfigError, match="enabled"):
        WALConfig(enabled=1)  # type: ignore[arg-type]  # an int is not a bool
    with pytest.raises(WALConfigError, match="directory"):
        WALConfig(directory="")  # type: ignore[arg-type]
    # ints are taken where floats are expected; str paths become Paths
    cfg = WALConfig(sync_interval=2, directory="x")  # type: ignore[arg-type]
    assert cfg.sync_interval == 2.0 and type(cfg.sync_interval) is float
    assert cfg.directory == Path("x")


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAL_BATCH_SIZE", "42")
    assert WALConfig.from_env().batch_size == 42


def test_frozen() -> None:
    cfg = WALConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_retries = 3  # type: ignore[misc]
    assert dataclasses.replace(cfg, max_retries=3).max_retries == 3


def test_unknown_wal_variable_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="wal"):
        WALConfig.from_env({"WAL_FSYNC_MODE": "always"})
    assert "WAL_FSYNC_MODE" in caplog.text


def test_storage_options() -> None:
    cfg = WALConfig.from_env(
        {
            "WAL_FSYNC": "interval",
            "WAL_FSYNC_INTERVAL_MS": "20",
            "WAL_MAX_SEGMENT_BYTES": "8192",
            "WAL_RECOVERY": "strict",
        }
    )
    assert cfg.storage_options() == StorageOptions(
        fsync="interval", fsync_interval_ms=20.0, max_segment_bytes=8192, recovery="strict"
    )
    assert WALConfig().storage_options() == StorageOptions()


def test_password_never_shown() -> None:
    cfg = WALConfig.from_env({"DATABASE_URL": PG_URL})
    assert cfg.database_url == PG_URL  # the real value is kept for connecting
    d = cfg.to_dict()
    assert d["database_url"] == "postgresql+psycopg://trader:***@db.internal:5432/atb"
    assert d["directory"] == "data/wal"
    assert SECRET not in repr(cfg) and SECRET not in str(cfg) and SECRET not in str(d)
    # a rejected URL is not echoed with its password either
    bad = f"postgresql://trader:{SECRET}@db:notaport/atb"
    with pytest.raises(WALConfigError) as info:
        WALConfig.from_env({"DATABASE_URL": bad})
    assert SECRET not in str(info.value)
    assert info.value.name == "DATABASE_URL"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("sqlite:///data/atb.db", "sqlite:///data/atb.db"),
        ("sqlite://", "sqlite://"),
        ("postgresql://trader@db/atb", "postgresql://trader@db/atb"),
        (PG_URL, "postgresql+psycopg://trader:***@db.internal:5432/atb"),
        ("postgresql://u:p%40ss@h/db?password=x", "postgresql://u:***@h/db?password=***"),
        (
            "host=db user=trader password=secret dbname=atb",
            "host=db user=trader password=*** dbname=atb",
        ),
        ("weird://u:secret@h:notaport/x", "weird://u:***@h:notaport/x"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
