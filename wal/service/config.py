"""``ServiceConfig``: the order service's settings, from the environment.

==========================  ============================  =========================================
field                       variable                      default
==========================  ============================  =========================================
rate_limit                  ``ORDER_RATE_LIMIT``          100 new orders per minute per trader
ws_queue                    ``SERVICE_WS_QUEUE``          1000 events waiting per WebSocket client
poll_interval               ``SERVICE_POLL_INTERVAL``     0.5 s between fill polls of open orders
paper_balance               ``SERVICE_PAPER_BALANCE``     unset; paper mode credits each trader once
reconcile_backoff           ``SERVICE_RECONCILE_BACKOFF`` 1 s: the reconciler's fetches wait 1, 2, 4
==========================  ============================  =========================================

A value that is not accepted raises ``WALConfigError`` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from wal.errors import WALConfigError

__all__ = ["ServiceConfig"]


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise WALConfigError(name, raw, "a positive integer")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise WALConfigError(name, raw, "seconds >= 0")
    return value


@dataclass(frozen=True)
class ServiceConfig:
    """The service's settings (module docstring)."""

    rate_limit: int = 100  # new orders per minute per trader (the note's figure)
    ws_queue: int = 1000  # a client further behind than this is disconnected
    poll_interval: float = 0.5
    paper_balance: Decimal | None = None
    reconcile_backoff: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        e = os.environ if env is None else env
        raw = e.get("SERVICE_PAPER_BALANCE")
        paper: Decimal | None = None
        if raw:
            try:
                paper = Decimal(raw)
            except InvalidOperation:
                paper = Decimal(-1)
            if not paper.is_finite() or paper <= 0:
                raise WALConfigError("SERVICE_PAPER_BALANCE", raw, "a positive amount")
        return cls(
            rate_limit=_int(e, "ORDER_RATE_LIMIT", 100),
            ws_queue=_int(e, "SERVICE_WS_QUEUE", 1000),
            poll_interval=_float(e, "SERVICE_POLL_INTERVAL", 0.5),
            paper_balance=paper,
            reconcile_backoff=_float(e, "SERVICE_RECONCILE_BACKOFF", 1.0),
        )
