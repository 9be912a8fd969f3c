"""Prometheus metrics of the log and its sync (``prometheus_client``).

Two ways to get them, with the same names:

* ``WALManager`` serves ``/metrics`` over HTTP while it runs when ``WAL_METRICS_PORT`` is set
  (bound to ``WAL_METRICS_ADDR``, 127.0.0.1 unless configured); figures are read at each
  scrape, and ``wal_fsync_seconds`` is a real histogram of this process's fsyncs.
* ``atb wal metrics`` prints the text exposition once (for node-exporter's textfile
  collector): the log's figures from a read-only open, plus the running process's published
  view (``manager-status.json``) when there is one.

==========================================  =========  =====================================
metric                                      type       meaning
==========================================  =========  =====================================
``wal_entries{status}``                     gauge      entries by status (pending, syncing,
                                                       completed, failed)
``wal_pending_entries``                     gauge      pending + syncing: not yet in the DB
``wal_failed_entries``                      gauge      dead letters (FAILED)
``wal_oldest_pending_age_seconds``          gauge      age of the oldest unapplied entry
                                                       (0 when nothing is pending)
``wal_log_bytes`` / ``wal_log_segments``    gauge      size of the log, segment files
``wal_next_lsn``                            gauge      the LSN the next record gets
``wal_torn_tail_bytes``                     gauge      bytes a normal open would cut
``wal_fsync_seconds``                       histogram  fsync latency (served endpoint only)
``wal_fsync_p50_seconds`` / ``_p99_``       gauge      over the last 4096 fsyncs
``wal_appended_entries_total``              counter    entries appended by this process
                                                       (served endpoint only)
``wal_applied_entries_total``               counter    entries applied to the database
``wal_duplicate_entries_total``             counter    entries the ledger already held
``wal_dead_letters_total``                  counter    entries that became FAILED
``wal_breaker_open``                        gauge      1 while the circuit breaker is not
                                                       closed (open or half-open)
``wal_breaker_state{state}``                gauge      1 for the current state
``wal_last_successful_apply_timestamp_s..`` gauge      Unix time of the last applied batch
``wal_log_write_failed``                    gauge      1 after the log failed (trading halts)
``wal_manager_view_age_seconds``            gauge      ``atb wal metrics`` only: age of the
                                                       published view (stale: process gone?)
``atb_trading_halted``                      gauge      1 while the operator's kill switch is
                                                       on (``atb orders halt``)
``atb_engine_alive``                        gauge      1 while the engine runs (its view is
                                                       current and its process exists)
``atb_database_reachable``                  gauge      1 when the database answered: the
                                                       engine's breaker is closed (served),
                                                       a read just worked (``atb wal
                                                       metrics``); absent when unknown
``atb_orders_unknown``                      gauge      ``atb wal metrics`` only: orders in
                                                       state UNKNOWN (the journal)
``atb_positions_unprotected``               gauge      ``atb wal metrics`` only: positions
                                                       whose stops do not cover them
==========================================  =========  =====================================

The served endpoint answers ``/metrics`` only (404 for any other path).

Counters of the manager count since the process started (Prometheus handles the resets).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from wal.sync.halt import read_halt

__all__ = ["FSYNC_BUCKETS", "MetricsServer", "figures_of", "render"]

log = logging.getLogger("wal.sync.manager")

# fsync latencies, seconds: 50 us (NVMe with a write cache) .. 2.5 s (a struggling disk)
FSYNC_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

_STATUSES = ("pending", "syncing", "completed", "failed")
_BREAKER_STATES = ("closed", "open", "half_open")


def figures_of(
    log_stats: dict[str, Any],
    manager: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One flat dict of figures from ``StorageStats.to_dict()`` and a manager's stats.

    ``extra`` (``atb wal metrics``): ``database_reachable``, ``orders_unknown``,
    ``positions_unprotected`` when it could read them. The operator's halt is read from the
    log's directory at each call: a switch thrown by another process is seen at once."""
    m = manager or {}
    x = extra or {}
    directory = log_stats.get("directory")
    halted = directory is not None and read_halt(directory) is not None
    alive = bool(m.get("running")) and not m.get("stale") and m.get("pid_alive") is not False
    reachable = x.get("database_reachable")
    if reachable is None and alive and m.get("breaker_state") is not None:
        reachable = m.get("breaker_state") == "closed"
    entries = dict(log_stats.get("entries") or {})
    rec = log_stats.get("recovery") or {}
    p50 = log_stats.get("fsync_p50_us")
    p99 = log_stats.get("fsync_p99_us")
    if p50 is None:
        p50, p99 = m.get("fsync_p50_us"), m.get("fsync_p99_us")
    last = m.get("last_sync_at")
    last_ts = None
    if isinstance(last, str):
        try:
            last_ts = datetime.fromisoformat(last).timestamp()
        except ValueError:
            last_ts = None
    return {
        "entries": {s: int(entries.get(s, 0)) for s in _STATUSES},
        "oldest_pending_age_seconds": log_stats.get("oldest_pending_age_seconds"),
        "bytes": log_stats.get("bytes", 0),
        "segments": log_stats.get("segments", 0),
        "next_lsn": log_stats.get("next_lsn", 0),
        "torn_tail_bytes": int(rec.get("torn_tail_bytes", 0) or 0),
        "fsync_p50_us": p50,
        "fsync_p99_us": p99,
        "applied_total": m.get("applied_total"),
        "duplicates_total": m.get("duplicates_total"),
        "failed_total": m.get("failed_total"),
        "breaker_state": m.get("breaker_state"),
        "last_apply_ts": last_ts,
        "log_failed": bool(m.get("log_failed") or log_stats.get("failed_write")),
        "view_age_seconds": m.get("age_seconds"),
        "trading_halted": halted,
        "engine_alive": alive,
        "database_reachable": reachable,
        "orders_unknown": x.get("orders_unknown"),
        "positions_unprotected": x.get("positions_unprotected"),
    }


class _FiguresCollector(Collector):
    """Turns ``read()`` (a ``figures_of`` dict, read at each collection) into metrics."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        f = self._read()
        e = f["entries"]
        g = GaugeMetricFamily("wal_entries", "Log entries by status.", labels=["status"])
        for s in _STATUSES:
            g.add_metric([s], e[s])
        yield g
        yield _gauge(
            "wal_pending_entries", "Entries not yet in the database.", e["pending"] + e["syncing"]
        )
        yield _gauge("wal_failed_entries", "Dead letters (FAILED entries).", e["failed"])
        age = f["oldest_pending_age_seconds"]
        yield _gauge(
            "wal_oldest_pending_age_seconds",
            "Age of the oldest unapplied entry (0: nothing pending).",
            age or 0.0,
        )
        yield _gauge("wal_log_bytes", "Total size of the segment files.", f["bytes"])
        yield _gauge("wal_log_segments", "Segment files.", f["segments"])
        yield _gauge("wal_next_lsn", "The LSN the next record gets.", f["next_lsn"])
        yield _gauge(
            "wal_torn_tail_bytes",
            "Bytes of a torn tail a normal open would cut.",
            f["torn_tail_bytes"],
        )
        for q in ("p50", "p99"):
            us = f[f"fsync_{q}_us"]
            if us is not None:
                yield _gauge(
                    f"wal_fsync_{q}_seconds", f"fsync latency {q} (last 4096 fsyncs).", us / 1e6
                )
        for key, name, doc in (
            ("applied_total", "wal_applied_entries", "Entries applied to the database."),
            ("duplicates_total", "wal_duplicate_entries", "Entries the ledger already held."),
            ("failed_total", "wal_dead_letters", "Entries that became FAILED."),
        ):
            if f[key] is not None:
                yield CounterMetricFamily(name, doc, value=f[key])
        state = f["breaker_state"]
        if state is not None:
            yield _gauge(
                "wal_breaker_open",
                "1 while the circuit breaker is not closed.",
                0 if state == "closed" else 1,
            )
            b = GaugeMetricFamily("wal_breaker_state", "Circuit breaker state.", labels=["state"])
            for s in _BREAKER_STATES:
                b.add_metric([s], 1 if s == state else 0)
            yield b
        if f["last_apply_ts"] is not None:
            yield _gauge(
                "wal_last_successful_apply_timestamp_seconds",
                "Unix time of the last applied batch.",
                f["last_apply_ts"],
            )
        yield _gauge(
            "wal_log_write_failed",
            "1 after a log write failed (trading halts).",
            1 if f["log_failed"] else 0,
        )
        if f["view_age_seconds"] is not None:
            yield _gauge(
                "wal_manager_view_age_seconds",
                "Age of the running process's published view.",
                f["view_age_seconds"],
            )
        yield _gauge(
            "atb_trading_halted",
            "1 while the operator's kill switch (atb orders halt) is on.",
            1 if f.get("trading_halted") else 0,
        )
        yield _gauge(
            "atb_engine_alive", "1 while the engine runs.", 1 if f.get("engine_alive") else 0
        )
        for key, name, doc in (
            ("database_reachable", "atb_database_reachable", "1 when the database answered."),
            ("orders_unknown", "atb_orders_unknown", "Orders in state UNKNOWN."),
            (
                "positions_unprotected",
                "atb_positions_unprotected",
                "Positions whose stops do not cover them.",
            ),
        ):
            if f.get(key) is not None:
                yield _gauge(name, doc, float(f[key]))


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never keeps the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (one line per scrape on stderr otherwise)."""


def _only_metrics(app: Callable[..., Any]) -> Callable[..., Any]:
    """``app`` on ``/metrics``; 404 for every other path (nothing else is served)."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: only /metrics is served here\n"]
        return app(environ, start_response)

    return serve


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    v = float(value)
    return GaugeMetricFamily(name, doc, value=v if math.isfinite(v) else 0.0)


def render(figures: dict[str, Any]) -> bytes:
    """The text exposition of ``figures`` (from ``figures_of``), once."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FiguresCollector(lambda: figures))
    return generate_latest(registry)


class MetricsServer:
    """``/metrics`` for a running manager: ``read()`` gives a ``figures_of`` dict per scrape.

    ``observe_fsync`` feeds the ``wal_fsync_seconds`` histogram, ``count_append`` the
    appended counter. ``port`` is the bound port (useful with port 0); ``close()`` stops it.
    """

    def __init__(self, read: Callable[[], dict[str, Any]], port: int, address: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_FiguresCollector(read))
        self._fsync = Histogram(
            "wal_fsync_seconds",
            "fsync latency of the log.",
            buckets=FSYNC_BUCKETS,
            registry=self.registry,
        )
        self._appended = Counter(
            "wal_appended_entries", "Entries appended by this process.", registry=self.registry
        )
        self._server = make_server(
            address,
            port,
            _only_metrics(make_wsgi_app(self.registry)),
            _ThreadingServer,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="wal-metrics", daemon=True
        )
        self._thread.start()
        self.address = address
        self.port: int = int(self._server.server_port)

    def observe_fsync(self, ns: int) -> None:
        self._fsync.observe(ns / 1e9)

    def count_append(self, _entry: object = None) -> None:
        self._appended.inc()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
