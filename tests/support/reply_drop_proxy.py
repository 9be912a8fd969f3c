"""A TCP proxy in front of the paper broker process that forwards a request and drops its reply.

The broker acted (an order placed, a cancel done) and the client never hears it: its
connection dies after the request went through. ``ReplyDropProxy(upstream_port, rate=0.15,
seed=...)`` listens on 127.0.0.1 (``.url``); each HTTP request whose first line starts with
one of ``prefixes`` (by default ``POST /v2/orders`` and ``DELETE /v2/orders``) is, with
probability ``rate`` (seeded), forwarded whole to the broker, and when the broker's reply
arrives it is thrown away and both sockets are closed (``cut_proxy.CutProxy``). ``dropped``
counts them. Everything else is forwarded byte for byte.
"""

from __future__ import annotations

import random
import threading

from cut_proxy import CutProxy, Verdict

__all__ = ["ReplyDropProxy"]

DEFAULT_PREFIXES = (b"POST /v2/orders", b"DELETE /v2/orders")


class ReplyDropProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        rate: float = 0.15,
        seed: int = 0,
        prefixes: tuple[bytes, ...] = DEFAULT_PREFIXES,
    ) -> None:
        self.rate = rate
        self.prefixes = prefixes
        self.dropped = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._proxy = CutProxy(("127.0.0.1", upstream_port), self._judge, self._count)
        self.port = self._proxy.port
        self.url = f"http://127.0.0.1:{self.port}"

    def _judge(self, data: bytes) -> Verdict:
        if not data.startswith(self.prefixes):
            return Verdict.FORWARD
        with self._lock:
            drop = self._rng.random() < self.rate
        return Verdict.DROP_REPLY if drop else Verdict.FORWARD

    def _count(self) -> None:
        with self._lock:
            self.dropped += 1

    def close(self) -> None:
        self._proxy.close()
