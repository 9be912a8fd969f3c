"""A TCP proxy in front of a real PostgreSQL server that can lose a COMMIT's reply.

The ambiguous commit: the client sends COMMIT, the server commits, and the connection dies
before the reply arrives. The client cannot tell whether its transaction committed. Only an
applied-ledger row written in the same transaction answers that, which is what the tests check.

``drop_next_commit()`` arms the proxy once: the next simple-query ``COMMIT`` message
(``Q``, length 11, ``COMMIT\\0``; what psycopg 3 sends for ``commit()``) is forwarded to the
server, the server's reply (CommandComplete + ReadyForQuery, proof that it committed) is read
and thrown away, and both sockets are closed (``cut_proxy.CutProxy``). ``fired`` is set when
that happened. ``drop_next_commit(forward=False)`` cuts the connection instead of forwarding
the COMMIT: the server rolls back, and the client is exactly as unsure as in the first case.
"""

from __future__ import annotations

import threading

from cut_proxy import CutProxy, Verdict

__all__ = ["COMMIT_MESSAGE", "TCPProxy"]

COMMIT_MESSAGE = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class TCPProxy:
    """Listen on 127.0.0.1 (an ephemeral port); forward to ``upstream``: (host, port) or the
    path of a Unix socket."""

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        self.fired = threading.Event()
        self._armed = False
        self._forward = True
        self._lock = threading.Lock()
        self._proxy = CutProxy(upstream, self._judge, self.fired.set)
        self.port: int = self._proxy.port

    def drop_next_commit(self, *, forward: bool = True) -> None:
        with self._lock:
            self._armed = True
            self._forward = forward
            self.fired.clear()

    def _judge(self, data: bytes) -> Verdict:
        with self._lock:
            if not (self._armed and COMMIT_MESSAGE in data):
                return Verdict.FORWARD
            self._armed = False
            return Verdict.DROP_REPLY if self._forward else Verdict.CUT

    def close(self) -> None:
        """Stop listening and cut every connection."""
        self._proxy.close()

    def __enter__(self) -> TCPProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
