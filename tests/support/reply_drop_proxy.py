"""A TCP proxy in front of the paper broker process that forwards a request and drops its reply.

The broker acted (an order placed, a cancel done) and the client never hears it: its
connection dies after the request went through. ``ReplyDropProxy(upstream_port, rate=0.15,
seed=...)`` listens on 127.0.0.1 (``.url``); each HTTP request whose first line starts with
one of ``prefixes`` (by default ``POST /v2/orders`` and ``DELETE /v2/orders``) is, with
probability ``rate`` (seeded), forwarded whole to the broker, and when the broker's reply
arrives it is thrown away and both sockets are closed. ``dropped`` counts them. Everything
else is forwarded byte for byte.

HTTP/1.1 clients (httpx) send one request at a time on a connection, so the first bytes the
broker sends after a doomed request are its reply.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading

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
        self.upstream = ("127.0.0.1", upstream_port)
        self.rate = rate
        self.prefixes = prefixes
        self.dropped = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, name="drop-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            doomed = threading.Event()
            with self._lock:
                self._conns += [client, server]
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, up, doomed, client, server), daemon=True
                ).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        upstream: bool,
        doomed: threading.Event,
        client: socket.socket,
        server: socket.socket,
    ) -> None:
        try:
            while data := src.recv(65536):
                if upstream and data.startswith(self.prefixes):
                    with self._lock:
                        drop = self._rng.random() < self.rate
                    if drop:
                        doomed.set()  # before the request leaves: its reply finds it set
                elif not upstream and doomed.is_set():
                    with self._lock:
                        self.dropped += 1
                    break  # the broker answered (it acted); the client never learns it
                dst.sendall(data)
        except OSError:
            pass
        for s in (client, server):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
