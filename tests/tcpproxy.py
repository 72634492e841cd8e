"""A TCP proxy on loopback that tests can break the way networks break.

Between a client (a LISTEN connection, a worker's database pool) and a real server
(PostgreSQL), so the failures are the client's real ones:

- :meth:`TcpProxy.blackhole`: every connection open now, and every one made until
  :meth:`TcpProxy.restore`, goes silent: bytes are taken and dropped, nothing comes
  back and nothing is closed. To the client it is a half-open connection (a NAT or a
  firewall that forgot it, a peer that lost power): its socket stays open and writable.
- :meth:`TcpProxy.cut`: every connection is closed, and new ones are closed as soon as
  they are accepted (a server gone, or restarted) until :meth:`TcpProxy.restore`.

>>> with TcpProxy(("127.0.0.1", 5432)) as proxy:          # doctest: +SKIP
...     url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

CHUNK = 65536


class _Pair:
    """A client's connection and the proxy's own to the server."""

    def __init__(self, client: socket.socket, server: socket.socket, silent: bool) -> None:
        self.client = client
        self.server = server
        self.silent = silent  #: bytes are dropped both ways (a blackhole)

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; see the module docstring."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._mode = "pass"  # pass, blackhole, cut
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._closed = False
        self.accepted = 0  #: connections accepted so far
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def blackhole(self) -> None:
        with self._lock:
            self._mode = "blackhole"
            for pair in self._pairs:
                pair.silent = True

    def cut(self) -> None:
        with self._lock:
            self._mode = "cut"
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()

    def restore(self) -> None:
        """New connections pass again (silent ones stay silent until closed)."""
        with self._lock:
            self._mode = "pass"

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            with self._lock:
                mode = self._mode
            if mode == "cut":
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = _Pair(client, server, silent=mode == "blackhole")
            with self._lock:
                self._pairs.append(pair)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(pair, source, sink), name="tcp-proxy-pump", daemon=True
                ).start()

    def _pump(self, pair: _Pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                if not pair.silent:
                    sink.sendall(data)
        except OSError:
            pass
        if not pair.silent:  # one side ended: so does the other (a blackhole tells nobody)
            pair.close()
