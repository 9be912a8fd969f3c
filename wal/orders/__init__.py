"""Orders on the write-ahead log: an intent journal, idempotent submit and retry, a paper broker.

Layer rule: it may import the foundation modules, ``wal.config``, ``wal.log``, ``wal.db``,
``wal.sync`` and the public face ``wal``; never ``wal.tools`` or ``cli``.

::

    om = OrderManager(ddb, broker, risk=RiskLimits(max_order_notional=Decimal("50000")))
    await om.start()                          # resolves what a crash left unfinished
    order = await om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal("10"),
                                        order_type="limit", limit_price=Decimal("187.25")))
    order.client_order_id, order.state        # uuid4().hex, OrderState.ACCEPTED / FILLED / ...

Every intent is journaled (fsynced in the log) before the broker hears of it; a timeout is
UNKNOWN, never a failure, and is resolved by looking the order up by its client id. See
``docs/orders.md``: the states, the transition table, the retry rules per broker dedup scope
and what survives which crash.

Modules: :mod:`~wal.orders.states` (states, transitions), :mod:`~wal.orders.models`
(intent, order, fill, event), :mod:`~wal.orders.validation` (syntax and risk limits),
:mod:`~wal.orders.broker` (the ``Broker`` protocol), :mod:`~wal.orders.faults`,
:mod:`~wal.orders.paper` (``PaperBroker``), :mod:`~wal.orders.server` (its HTTP face),
:mod:`~wal.orders.http_broker` (``HttpBroker``), :mod:`~wal.orders.journal_reads` (the journal
read back with pending entries), :mod:`~wal.orders.journal` (writing, the audit chain),
:mod:`~wal.orders.positions` (``PositionBook``: positions and daily P&L from the fills),
the ``OrderManager`` in three layers: :mod:`~wal.orders.base` (state, reads, halting, one
journaled transition), :mod:`~wal.orders.fills` (the broker's status and fills journaled,
the reconciler's tools) and :mod:`~wal.orders.manager` (submit, retries, startup recovery,
cancel); :mod:`~wal.orders.reconcile_model` (the reconciler's config, result, ids, rules),
:mod:`~wal.orders.stops` (``PositionReconciler``: orphan positions, emergency stops) and
:mod:`~wal.orders.reconcile` (``StartupReconciler``: the journal made to agree with the
broker at start: fetch, phase 1 orders, phase 2 in ``stops``), and :mod:`~wal.orders.audit`
(``verify_audit``: the tamper-evident event chain, and the orders and fills tables checked
against it by :mod:`~wal.orders.audit_contents`).
"""

from wal.orders.audit import AuditReport, verify_audit
from wal.orders.broker import (
    BROKER_STATUS,
    Broker,
    BrokerOrder,
    BrokerPosition,
    ClientIdRules,
    DedupScope,
    OrderFillsLookup,
    map_status,
)
from wal.orders.errors import (
    BrokerError,
    BrokerProtocolError,
    BrokerRejectedError,
    BrokerUnavailable,
    DuplicateClientOrderId,
    FillError,
    IllegalTransitionError,
    OrderError,
    OrderRejected,
    ReconciliationFatalError,
    RejectReason,
    TradingHalted,
)
from wal.orders.faults import Fault, FaultPlan, FaultRule
from wal.orders.http_broker import HttpBroker
from wal.orders.journal import OrderJournal
from wal.orders.manager import DUPLICATE_ANSWER, OrderManager, RecoveryResult, RetryPolicy
from wal.orders.models import Fill, Order, OrderEvent, OrderIntent, new_client_order_id
from wal.orders.paper import PaperBroker, SimulatedTimeout
from wal.orders.reconcile import (
    FilledTrade,
    ReconcilerConfig,
    ReconciliationResult,
    StartupReconciler,
)
from wal.orders.states import (
    FINAL_STATES,
    TRANSITIONS,
    EventKind,
    OrderState,
    check_transition,
    is_final,
)
from wal.orders.validation import RiskLimits, RiskView, check_risk, validate_intent

__all__ = [
    "BROKER_STATUS",
    "AuditReport",
    "FilledTrade",
    "ReconciliationFatalError",
    "ReconciliationResult",
    "ReconcilerConfig",
    "StartupReconciler",
    "TradingHalted",
    "verify_audit",
    "FINAL_STATES",
    "TRANSITIONS",
    "Broker",
    "BrokerError",
    "BrokerOrder",
    "BrokerPosition",
    "BrokerProtocolError",
    "BrokerRejectedError",
    "BrokerUnavailable",
    "DUPLICATE_ANSWER",
    "ClientIdRules",
    "DedupScope",
    "DuplicateClientOrderId",
    "EventKind",
    "Fault",
    "FaultPlan",
    "FaultRule",
    "Fill",
    "FillError",
    "HttpBroker",
    "IllegalTransitionError",
    "Order",
    "OrderError",
    "OrderEvent",
    "OrderFillsLookup",
    "OrderIntent",
    "OrderJournal",
    "OrderManager",
    "OrderRejected",
    "OrderState",
    "PaperBroker",
    "RecoveryResult",
    "RejectReason",
    "RetryPolicy",
    "RiskLimits",
    "RiskView",
    "SimulatedTimeout",
    "check_risk",
    "check_transition",
    "is_final",
    "map_status",
    "new_client_order_id",
    "validate_intent",
]
