"""The service's Prometheus metrics (``GET /metrics``), in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """Orders placed by status code, request latency, WebSocket clients and overflows,
    readiness, and the positions whose protection could not be placed."""

    def __init__(
        self,
        clients: Callable[[], int],
        overflows: Callable[[], int],
        ready: Callable[[], bool],
        unprotected: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.orders = Counter(
            "atb_service_orders_total",
            "POST /api/v1/orders answers by HTTP status",
            ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "atb_service_post_order_seconds",
            "POST /api/v1/orders latency",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        Gauge(
            "atb_service_ws_clients", "connected WebSocket clients", registry=self.registry
        ).set_function(lambda: float(clients()))
        Gauge(
            "atb_service_ws_overflows",
            "clients disconnected for falling behind (since start)",
            registry=self.registry,
        ).set_function(lambda: float(overflows()))
        Gauge("atb_service_ready", "1 when /readyz is 200", registry=self.registry).set_function(
            lambda: 1.0 if ready() else 0.0
        )
        Gauge(
            "atb_service_positions_unprotected",
            "stop-loss / take-profit children that could not be placed, and positions the "
            "startup reconciliation left unprotected (the list: /readyz's unprotected)",
            registry=self.registry,
        ).set_function(lambda: float(unprotected()))
