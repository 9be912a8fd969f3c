"""A TCP proxy on 127.0.0.1 that can let a request through and lose its reply.

The shared part of the tests' network faults (``reply_drop_proxy.ReplyDropProxy`` in front of
the paper broker, ``tcp_proxy.TCPProxy`` in front of PostgreSQL). For each chunk the client
sends, ``judge(chunk)`` answers:

* ``FORWARD``: send it on;
* ``DROP_REPLY``: send it on, then throw the server's first answer away and cut both sockets
  (the server acted; the client never learns it);
* ``CUT``: cut both sockets without sending it (the server never sees the request).

``on_drop()`` is called once a reply was thrown away (or a request cut), before the sockets
close, so the client's error always finds it done. Everything else is forwarded byte for byte.
Clients that send one request at a time on a connection (HTTP/1.1, the PostgreSQL simple
query protocol) get exactly their request's reply dropped.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import threading
from collections.abc import Callable

__all__ = ["CutProxy", "Verdict"]


class Verdict(enum.Enum):
    FORWARD = "forward"
    DROP_REPLY = "drop-reply"
    CUT = "cut"


class CutProxy:
    """Listen on 127.0.0.1 (``.port``, an ephemeral port); forward to ``upstream``, a
    (host, port) or the path of a Unix socket, asking ``judge`` about every client chunk."""

    def __init__(
        self,
        upstream: tuple[str, int] | str,
        judge: Callable[[bytes], Verdict],
        on_drop: Callable[[], None],
    ) -> None:
        self.upstream = upstream
        self._judge = judge
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="cut-proxy", daemon=True).start()

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
                client.close()  # the server is down: the client sees a reset connection
                continue
            doomed = threading.Event()  # set once a request went through whose reply we drop
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
                    verdict = self._judge(data)
                    if verdict is Verdict.CUT:
                        dropped = True  # the request never reaches the server
                        break
                    if verdict is Verdict.DROP_REPLY:
                        doomed.set()  # before the request leaves: its reply finds it set
                elif doomed.is_set():
                    dropped = True  # the server answered (it acted)
                    break  # and the client never learns it
                dst.sendall(data)
        except OSError:
            pass
        if dropped:
            self._on_drop()  # before the cut: the client's error must find it counted
        for s in (client, server):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        """Stop listening and cut every connection."""
        with contextlib.suppress(OSError):
            # a close alone leaves the accept() blocked in the other thread accepting: the
            # shutdown wakes it (EINVAL on Linux), so no connection gets through after close
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
