"""``WALConfig``: every setting of the log and its sync, read from ``WAL_*`` variables.

Each field has a default, an environment variable and a rule for what it accepts:

==============================  ===============================  ============================
field                           variable                         default
==============================  ===============================  ============================
enabled                         ``WAL_ENABLED``                  ``True``
directory                       ``WAL_DIR``                      ``data/wal``
sync_interval                   ``WAL_SYNC_INTERVAL``            ``5.0`` seconds
max_retries                     ``WAL_MAX_RETRIES``              ``10``
retention_hours                 ``WAL_RETENTION_HOURS``          ``168`` (one week)
fsync                           ``WAL_FSYNC``                    ``always``
fsync_interval_ms               ``WAL_FSYNC_INTERVAL_MS``        ``10``
max_segment_bytes               ``WAL_MAX_SEGMENT_BYTES``        64 MiB
preallocate                     ``WAL_PREALLOCATE``              ``zero``
max_entry_bytes                 ``WAL_MAX_ENTRY_BYTES``          4 MiB
pending_alert_threshold         ``WAL_PENDING_ALERT_THRESHOLD``  ``1000``
pending_alert_age_seconds       ``WAL_PENDING_ALERT_AGE``        ``300``
batch_size                      ``WAL_BATCH_SIZE``               ``500``
idempotency_cache_size          ``WAL_IDEMPOTENCY_CACHE_SIZE``   ``100000``
breaker_failure_threshold       ``WAL_BREAKER_FAILURES``         ``5``
breaker_cooldown_seconds        ``WAL_BREAKER_COOLDOWN``         ``10.0``
backoff_base_seconds            ``WAL_BACKOFF_BASE``             ``0.5``
backoff_max_seconds             ``WAL_BACKOFF_MAX``              ``60.0``
recovery                        ``WAL_RECOVERY``                 ``tolerate_tail``
db_timeout_ms                   ``WAL_DB_TIMEOUT_MS``            ``2000``
apply_mode                      ``WAL_APPLY``                    ``behind``
metrics_port                    ``WAL_METRICS_PORT``             unset (no ``/metrics``)
metrics_address                 ``WAL_METRICS_ADDR``             ``127.0.0.1``
database_url                    ``DATABASE_URL``                 ``sqlite:///data/atb.db``
==============================  ===============================  ============================

A value that is not accepted raises ``WALConfigError`` naming the variable, the value and what
is accepted, before anything is opened. An empty value is an error too, not "unset": a blank
``DATABASE_URL`` from a broken deployment template must not silently fall back to the default
SQLite file while real money is being traded.

>>> cfg = WALConfig.from_env({"WAL_DIR": "/var/lib/atb/wal", "WAL_FSYNC": "interval"})
>>> cfg.directory, cfg.fsync, cfg.max_retries
(PosixPath('/var/lib/atb/wal'), 'interval', 10)
>>> WALConfig.from_env({"WAL_ENABLED": "maybe"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
wal.errors.WALConfigError: WAL_ENABLED='maybe' is not valid: expected one of true/false/...
>>> mask_url("postgresql+psycopg://trader:s3cret@db.internal/atb")
'postgresql+psycopg://trader:***@db.internal/atb'
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from wal.errors import WALConfigError
from wal.log.options import (
    FSYNC_MODES,
    MAX_RETENTION_HOURS,
    PREALLOCATE_MODES,
    RECOVERY_MODES,
    FsyncMode,
    PreallocateMode,
    RecoveryMode,
    StorageOptions,
)
from wal.masking import mask_url

__all__ = ["APPLY_MODES", "ENV_VARS", "ApplyMode", "WALConfig", "mask_url"]

ApplyMode = Literal["behind", "inline"]
APPLY_MODES: tuple[str, ...] = ("behind", "inline")

log = logging.getLogger("wal")

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_BOOL_ACCEPTED = "one of true/false/1/0/yes/no/on/off"


@dataclass(frozen=True, slots=True, repr=False)
class WALConfig:
    """The settings of the log, its sync to the database and the operator's alerts.

    Build it with ``WALConfig.from_env()`` (reads ``os.environ``), ``from_env(env_dict)`` or
    directly; keyword overrides win over the environment. Frozen: change a setting with
    ``dataclasses.replace``. ``repr`` and ``to_dict`` mask the database password.
    """

    # Log critical writes at all. False: operations go straight to the database (no safety net).
    enabled: bool = True
    # Where the segment files live. Keep it on a local disk (flock does not work over NFS).
    directory: Path = Path("data/wal")
    # Seconds between two background sync passes of pending entries into the database.
    sync_interval: float = 5.0
    # Attempts per entry for a permanent database error before it becomes FAILED (dead letter).
    max_retries: int = 10
    # Hours a COMPLETED entry stays in the log before compaction may drop it (168 = one week).
    retention_hours: float = 168.0
    # "always": acknowledged only after fdatasync (group commit). "interval": fdatasync every
    # fsync_interval_ms (a power loss loses that window). "unsafe_never": tests only.
    fsync: FsyncMode = "always"
    # The power-loss window of fsync="interval", in milliseconds.
    fsync_interval_ms: float = 10.0
    # A segment is sealed and a new one started before it would grow past this size.
    max_segment_bytes: int = 64 * 1024 * 1024
    # How a segment gets its space before appends (so an fsync need not commit a new size):
    # "zero" writes zeros ahead (fastest fsync measured here), "fallocate" reserves blocks,
    # "off" lets segments grow. A background thread prepares the next segment.
    preallocate: PreallocateMode = "zero"
    # The largest record one entry may make; a bigger one is refused at append (nothing
    # written), and reading a log never has to hold more than this per record.
    max_entry_bytes: int = 4 * 1024 * 1024
    # Alert (and `atb wal status` exits 1) when more entries than this wait for the database.
    pending_alert_threshold: int = 1000
    # Alert (and `atb wal status` exits 1) when the oldest pending entry is older than this.
    pending_alert_age_seconds: float = 300.0
    # Entries applied per database round trip during a sync.
    batch_size: int = 500
    # Recent idempotency keys remembered in memory (older ones are looked up in the log).
    idempotency_cache_size: int = 100_000
    # Consecutive transient database failures that open the circuit breaker.
    breaker_failure_threshold: int = 5
    # Seconds the open breaker waits before one trial sync (half-open).
    breaker_cooldown_seconds: float = 10.0
    # First retry delay after a transient failure; doubles per failure (with jitter).
    backoff_base_seconds: float = 0.5
    # Upper bound of the retry delay.
    backoff_max_seconds: float = 60.0
    # What opening does with a defect: "tolerate_tail" cuts a torn last record and refuses any
    # other defect; "strict" refuses all; "skip_corrupt" salvages (explicit repair only).
    recovery: RecoveryMode = "tolerate_tail"
    # How long one database call of the apply path may wait, in ms: the SQLite busy timeout,
    # PostgreSQL's connect (rounded up to seconds), lock and statement timeouts. During an
    # outage a critical call costs at most the log's fsync plus this before it falls back to
    # the log (PENDING); the breaker opens after breaker_failure_threshold such failures.
    db_timeout_ms: int = 2000
    # When a critical call's database effect is applied. "behind": the call returns once its
    # entry is durable in the log (acknowledged; reads include it) and the sync thread applies
    # the backlog in batches, one transaction each. "inline": the call also waits for its own
    # apply (the database row exists when it returns; two fsyncs per call).
    apply_mode: ApplyMode = "behind"
    # Serve Prometheus metrics on http://metrics_address:metrics_port/metrics while the
    # WALManager runs. None: off. 0: any free port (``WALManager.metrics_port`` says which).
    metrics_port: int | None = None
    # The address /metrics binds to; loopback unless configured (the figures are not secret,
    # but nothing outside the host needs them by default).
    metrics_address: str = "127.0.0.1"
    # The database the log is synced into (SQLAlchemy URL). Masked wherever it is printed.
    database_url: str = "sqlite:///data/atb.db"

    def __post_init__(self) -> None:
        if isinstance(self.directory, str) and self.directory.strip():
            object.__setattr__(self, "directory", Path(self.directory))
        for f in fields(self):
            value = getattr(self, f.name)
            checked = _SPECS[f.name].check(f.name, value)
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise WALConfigError(
                "backoff_max_seconds",
                self.backoff_max_seconds,
                f"a number >= backoff_base_seconds ({self.backoff_base_seconds})",
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> WALConfig:
        """Read every ``WAL_*`` variable (and ``DATABASE_URL``) from ``env`` (default
        ``os.environ``); ``overrides`` (field names) win over the environment.

        Raises ``WALConfigError`` naming the first variable with a bad value.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, spec in _SPECS.items():
            raw = source.get(spec.env)
            if raw is not None:
                values[name] = spec.parse(spec.env, raw)
        known = {spec.env for spec in _SPECS.values()} | _OTHER_VARS
        for var in source:
            if var.startswith("WAL_") and var not in known and not var.startswith("WAL_TEST"):
                log.warning("ignoring unknown variable %s (a typo?)", var)
        unknown = set(overrides) - set(_SPECS)
        if unknown:
            raise TypeError(f"WALConfig has no field {', '.join(sorted(unknown))}")
        values.update(overrides)
        defaults = {f.name: f.default for f in fields(cls)}
        base = values.get("backoff_base_seconds", defaults["backoff_base_seconds"])
        top = values.get("backoff_max_seconds", defaults["backoff_max_seconds"])
        if "backoff_max_seconds" not in overrides and isinstance(top, float) and top < base:
            # name the variable, not the field, when the environment set the bad pair
            raise WALConfigError("WAL_BACKOFF_MAX", top, f"a number >= WAL_BACKOFF_BASE ({base})")
        return cls(**values)

    def storage_options(self) -> StorageOptions:
        """The ``StorageOptions`` for ``WALStorage`` that these settings describe."""
        return StorageOptions(
            fsync=self.fsync,
            fsync_interval_ms=self.fsync_interval_ms,
            max_segment_bytes=self.max_segment_bytes,
            recovery=self.recovery,
            preallocate=self.preallocate,
            max_entry_bytes=self.max_entry_bytes,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready value; ``database_url`` with its password masked."""
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        d["directory"] = str(self.directory)
        d["database_url"] = mask_url(self.database_url)
        return d

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"WALConfig({inner})"


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class _Spec:
    """How one field is read from its variable and what it accepts."""

    env: str
    parse_raw: Callable[[str], Any]  # ValueError when the text is not of the type
    valid: Callable[[Any], bool]
    accepted: str
    secret: bool = False

    def shown(self, value: object) -> object:
        return mask_url(value) if self.secret and isinstance(value, str) else value

    def parse(self, name: str, raw: str) -> Any:
        text = raw.strip()
        if not text:  # "unset" is never spelled as an empty value: a broken template is
            raise WALConfigError(name, raw, f"a value, not an empty one: {self.accepted}")
        try:
            value = self.parse_raw(text)
            return self.check(name, value)
        except (ValueError, TypeError, OverflowError):  # WALConfigError is a ValueError too
            raise WALConfigError(name, self.shown(raw), self.accepted) from None

    def check(self, name: str, value: Any) -> Any:
        """``value`` normalized (ints accepted where floats are); raise if not accepted."""
        if self.parse_raw is float and type(value) is int:
            value = float(value)
        if not self.valid(value):
            raise WALConfigError(name, self.shown(value), self.accepted)
        return value


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(text)


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_num(v: Any) -> bool:
    return type(v) is float and math.isfinite(v)


def _choice(v: Any, options: tuple[str, ...]) -> bool:
    return isinstance(v, str) and v in options


def _is_url(v: Any) -> bool:
    if not isinstance(v, str) or not v.strip():
        return False
    from sqlalchemy.engine import make_url

    try:
        make_url(v)
    except Exception:  # sqlalchemy raises ArgumentError (and ValueError for a bad port)
        return False
    return True


def _int_spec(env: str, low: int) -> _Spec:
    return _Spec(env, int, lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def _num_spec(
    env: str, *, low: float = 0.0, strict: bool = True, high: float | None = None
) -> _Spec:
    def ok(v: Any) -> bool:
        if not _is_num(v):
            return False
        if (v <= low) if strict else (v < low):
            return False
        return high is None or v <= high

    rel = ">" if strict else ">="
    accepted = f"a number {rel} {low:g}" + (f" and <= {high:g}" if high is not None else "")
    return _Spec(env, float, ok, accepted)


_SPECS: dict[str, _Spec] = {
    "enabled": _Spec("WAL_ENABLED", _parse_bool, lambda v: type(v) is bool, _BOOL_ACCEPTED),
    "directory": _Spec(
        "WAL_DIR",
        Path,
        lambda v: isinstance(v, Path) and (v.is_dir() or not v.exists()),
        "the path of a directory (not a file)",
    ),
    "sync_interval": _num_spec("WAL_SYNC_INTERVAL"),
    "max_retries": _int_spec("WAL_MAX_RETRIES", 1),
    "retention_hours": _num_spec("WAL_RETENTION_HOURS", strict=False, high=MAX_RETENTION_HOURS),
    "fsync": _Spec("WAL_FSYNC", str, lambda v: _choice(v, FSYNC_MODES), " | ".join(FSYNC_MODES)),
    "fsync_interval_ms": _num_spec("WAL_FSYNC_INTERVAL_MS", high=60_000),
    "max_segment_bytes": _int_spec("WAL_MAX_SEGMENT_BYTES", 4096),
    "preallocate": _Spec(
        "WAL_PREALLOCATE",
        str,
        lambda v: _choice(v, PREALLOCATE_MODES),
        " | ".join(PREALLOCATE_MODES),
    ),
    "max_entry_bytes": _int_spec("WAL_MAX_ENTRY_BYTES", 1024),
    "pending_alert_threshold": _int_spec("WAL_PENDING_ALERT_THRESHOLD", 0),
    "pending_alert_age_seconds": _num_spec("WAL_PENDING_ALERT_AGE"),
    "batch_size": _int_spec("WAL_BATCH_SIZE", 1),
    "idempotency_cache_size": _int_spec("WAL_IDEMPOTENCY_CACHE_SIZE", 0),
    "breaker_failure_threshold": _int_spec("WAL_BREAKER_FAILURES", 1),
    "breaker_cooldown_seconds": _num_spec("WAL_BREAKER_COOLDOWN"),
    "backoff_base_seconds": _num_spec("WAL_BACKOFF_BASE"),
    "backoff_max_seconds": _num_spec("WAL_BACKOFF_MAX"),
    "recovery": _Spec(
        "WAL_RECOVERY", str, lambda v: _choice(v, RECOVERY_MODES), " | ".join(RECOVERY_MODES)
    ),
    "db_timeout_ms": _int_spec("WAL_DB_TIMEOUT_MS", 1),
    "apply_mode": _Spec(
        "WAL_APPLY", str, lambda v: _choice(v, APPLY_MODES), " | ".join(APPLY_MODES)
    ),
    "metrics_port": _Spec(
        "WAL_METRICS_PORT",
        int,
        lambda v: v is None or (_is_int(v) and 0 <= v <= 65535),
        "a TCP port 0..65535 (0: any free port; unset: no metrics endpoint)",
    ),
    "metrics_address": _Spec(
        "WAL_METRICS_ADDR",
        str,
        lambda v: isinstance(v, str) and bool(v.strip()),
        "an address to bind, such as 127.0.0.1 or 0.0.0.0",
    ),
    "database_url": _Spec(
        "DATABASE_URL",
        str,
        _is_url,
        "a SQLAlchemy URL such as sqlite:///data/atb.db or postgresql+psycopg://user@host/db",
        secret=True,
    ),
}

#: field name -> environment variable, for documentation and the CLI.
ENV_VARS: dict[str, str] = {name: spec.env for name, spec in _SPECS.items()}
# WAL_* variables read elsewhere, not typos: the CLI's log format (cli/_logging.py)
_OTHER_VARS = frozenset(
    {
        "WAL_LOG_FORMAT",  # the CLI's log format
        "WAL_CRASH_POINT",  # wal.crashpoints: the crash tests' named kill points
        # the test suite's own switches (CI exports WAL_REQUIRE_PG=1): not settings, not typos
        "WAL_REQUIRE_PG",
        "WAL_REQUIRE_BROWSER",
        "WAL_STRESS",
        "WAL_HYPOTHESIS_PROFILE",
        "WAL_SOAK_COUNTS",
        "WAL_ORDERS_KILLS",
        "WAL_ORDERS_KILL_SEED",
        "WAL_SIGKILL_KILLS",
        "WAL_SIGKILL_SEED",
    }
)
