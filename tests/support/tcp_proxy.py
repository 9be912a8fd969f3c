"""A TCP proxy in front of a real PostgreSQL server that can lose a COMMIT's reply.

The ambiguous commit: the client sends COMMIT, the server commits, and the connection dies
before the reply arrives. The client cannot tell whether its transaction committed. Only an
applied-ledger row written in the same transaction answers that, which is what the tests check.

``drop_next_commit()`` arms the proxy once: the next simple-query ``COMMIT`` message
(``Q``, length 11, ``COMMIT\\0``; what psycopg 3 sends for ``commit()``) is forwarded to the
server, the server's reply (CommandComplete + ReadyForQuery, proof that it committed) is read
and thrown away, and both sockets are closed. ``fired`` is set when that happened.
``drop_next_commit(forward=False)`` cuts the connection instead of forwarding the COMMIT: the
server rolls back, and the client is exactly as unsure as in the first case.
"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["COMMIT_MESSAGE", "TCPProxy"]

COMMIT_MESSAGE = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class TCPProxy:
    """Listen on 127.0.0.1 (an ephemeral port); forward to ``upstream``: (host, port) or the
    path of a Unix socket."""

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        self.upstream = upstream
        self.fired = threading.Event()
        self._armed = False
        self._forward = True
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def drop_next_commit(self, *, forward: bool = True) -> None:
        with self._lock:
            self._armed = True
            self._forward = forward
            self.fired.clear()

    def _dial(self) -> socket.socket:
        if isinstance(self.upstream, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.upstream)
            return s
        return socket.create_connection(self.upstream)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                server = self._dial()
            except OSError:
                client.close()  # the server is down: the client sees a refused/reset connection
                continue
            doomed = threading.Event()  # set once a COMMIT was forwarded whose reply we drop
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
        dropped = False
        try:
            while data := src.recv(65536):
                if upstream:
                    with self._lock:
                        drop = self._armed and COMMIT_MESSAGE in data
                        forward = self._forward
                        if drop:
                            self._armed = False
                    if drop and not forward:
                        dropped = True  # the COMMIT never reaches the server: it rolls back
                        break
                    if drop:
                        doomed.set()  # before the COMMIT leaves: its reply will find it set
                elif doomed.is_set():
                    dropped = True  # the server answered the COMMIT: it committed
                    break  # and the client never learns it
                dst.sendall(data)
        except OSError:
            pass
        if dropped:
            self.fired.set()  # before the cut: the client's error must find it set
        for s in (client, server):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        """Stop listening and cut every connection."""
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def __enter__(self) -> TCPProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
