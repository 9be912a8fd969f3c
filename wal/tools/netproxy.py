"""A tiny TCP forwarder on 127.0.0.1 that can cut the network: a real outage for the demo.

``atb demo --database-url postgresql://…`` connects to PostgreSQL through this proxy; to
simulate the database becoming unreachable it closes every connection and refuses new ones
(the client sees "connection refused" and resets, exactly as when a server or a network
goes away), then accepts again when the outage ends. It forwards bytes; it never reads them.
"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``(host, port)``; ``cut()`` and ``heal()`` the link."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._listen()

    def _listen(self) -> None:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self.port = srv.getsockname()[1]
        self._server = srv
        self._thread = threading.Thread(target=self._accept, args=(srv,), daemon=True)
        self._thread.start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return  # closed by cut() or close()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # the 5 s were for connecting: an idle link stays up
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """The outage: close every connection and stop listening (connections are refused)."""
        with self._lock:
            if self._server is not None:
                # shutdown first: a thread blocked in accept() keeps a closed socket listening
                with contextlib.suppress(OSError):
                    self._server.shutdown(socket.SHUT_RDWR)
                self._server.close()
                self._server = None
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._conns.clear()

    def heal(self) -> None:
        """The end of the outage: listen again on the same port."""
        with self._lock:
            if self._server is None:
                self._listen()

    def close(self) -> None:
        self.cut()
