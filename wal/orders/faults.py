"""``FaultPlan``: what the paper broker does wrong, and when.

Faults are chosen per broker operation (the ``Broker`` method names), either for given call
numbers (``on(op, fault, nth=2)``: the 2nd call; ``times=3``: the first three calls) or at
random with a seed (``randomly(op, {fault: probability})``), so that a run replays exactly.
A plan is plain data: ``to_dict``/``from_dict`` carry it to a paper broker in another
process (``atb paper-broker serve --faults plan.json`` or ``PUT /_paper/faults``).

The faults (``Fault``):

=======================  ===============================================================
timeout_before_accept    submit, cancel: the request times out; the broker never saw it
timeout_after_accept     submit: the broker accepted the order; cancel: the broker cancelled
                         it; either way the reply is lost (timeout)
server_error             any operation: a 5xx after the broker did nothing
reject                   submit: a clear reject with ``reject_reason``
duplicate_id             submit: the order is accepted, the reply says "duplicate client id"
                         (a request that arrived twice)
not_found                lookup by client id: "not found" although it exists (visibility lag)
fetch_failure            the list operations (open/recent orders, positions, fills): a 5xx
unknown_status           lookup and lists: the order's status is a string nobody knows
=======================  ===============================================================

``partial_fills`` (fractions summing to 1, e.g. ``0.3, 0.3, 0.4``) makes every fill arrive in
that many executions. ``dedup_scope`` lives in the broker's ``ClientIdRules``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from wal.money import exact

__all__ = ["Fault", "FaultPlan", "FaultRule"]


class Fault(StrEnum):
    TIMEOUT_BEFORE_ACCEPT = "timeout_before_accept"
    TIMEOUT_AFTER_ACCEPT = "timeout_after_accept"
    SERVER_ERROR = "server_error"
    REJECT = "reject"
    DUPLICATE_ID = "duplicate_id"
    NOT_FOUND = "not_found"
    FETCH_FAILURE = "fetch_failure"
    UNKNOWN_STATUS = "unknown_status"


OPERATIONS = frozenset(
    {
        "submit_order",
        "get_order_by_client_id",
        "cancel_order",
        "get_open_orders",
        "get_recent_orders",
        "get_positions",
        "get_fills",
    }
)


@dataclass(frozen=True)
class FaultRule:
    """``fault`` on calls ``first..first+times-1`` of ``op`` (1-based)."""

    op: str
    fault: Fault
    first: int = 1
    times: int = 1

    def hits(self, call: int) -> bool:
        return self.first <= call < self.first + self.times


@dataclass
class FaultPlan:
    """Deterministic faults for a ``PaperBroker`` (see the module docstring)."""

    seed: int = 0
    rules: list[FaultRule] = field(default_factory=list)
    random_faults: dict[str, dict[Fault, float]] = field(default_factory=dict)
    partial_fills: tuple[Decimal, ...] = ()
    reject_reason: str = "insufficient buying power"
    # how long the HTTP server holds a "timed out" request before answering 504; longer than
    # the client's timeout, so the client really times out on its socket
    timeout_hang_seconds: float = 1.0
    _calls: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    @exact  # the fractions' sum is checked exactly
    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        for op in list(self.random_faults) + [r.op for r in self.rules]:
            if op not in OPERATIONS:
                raise ValueError(f"unknown broker operation {op!r} in a fault plan")
        if self.partial_fills:
            fr = tuple(Decimal(str(f)) for f in self.partial_fills)
            if any(f <= 0 for f in fr) or sum(fr) != 1:
                raise ValueError(f"partial_fills must be positive and sum to 1, got {fr}")
            self.partial_fills = fr

    def on(self, op: str, fault: Fault, *, nth: int = 1, times: int = 1) -> FaultPlan:
        """Inject ``fault`` on calls ``nth .. nth+times-1`` of ``op``; returns self (chains)."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown broker operation {op!r}")
        self.rules.append(FaultRule(op, Fault(fault), nth, times))
        return self

    def randomly(self, op: str, faults: Mapping[Fault, float]) -> FaultPlan:
        """Inject each fault on ``op`` with its probability (seeded); returns self."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown broker operation {op!r}")
        self.random_faults[op] = {Fault(f): float(p) for f, p in faults.items()}
        return self

    def decide(self, op: str) -> Fault | None:
        """Count one call of ``op``; the fault for it, if any (rules first, then chance)."""
        n = self._calls[op] = self._calls.get(op, 0) + 1
        for rule in self.rules:
            if rule.op == op and rule.hits(n):
                return rule.fault
        table = self.random_faults.get(op)
        if table:
            roll = self._rng.random()
            for fault, p in table.items():
                if roll < p:
                    return fault
                roll -= p
        return None

    def calls(self, op: str) -> int:
        """How many calls of ``op`` the plan has seen."""
        return self._calls.get(op, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "rules": [
                {"op": r.op, "fault": r.fault.value, "first": r.first, "times": r.times}
                for r in self.rules
            ],
            "random_faults": {
                op: {f.value: p for f, p in t.items()} for op, t in self.random_faults.items()
            },
            "partial_fills": [format(f, "f") for f in self.partial_fills],
            "reject_reason": self.reject_reason,
            "timeout_hang_seconds": self.timeout_hang_seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FaultPlan:
        return cls(
            seed=int(d.get("seed", 0)),
            rules=[
                FaultRule(
                    str(r["op"]), Fault(r["fault"]), int(r.get("first", 1)), int(r.get("times", 1))
                )
                for r in d.get("rules", [])
            ],
            random_faults={
                str(op): {Fault(f): float(p) for f, p in t.items()}
                for op, t in d.get("random_faults", {}).items()
            },
            partial_fills=tuple(Decimal(str(f)) for f in d.get("partial_fills", [])),
            reject_reason=str(d.get("reject_reason", "insufficient buying power")),
            timeout_hang_seconds=float(d.get("timeout_hang_seconds", 1.0)),
        )
