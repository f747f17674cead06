"""Bytes on the wire: a forwarder between the client and PostgreSQL that counts what each side sends.

The client connects to a loopback TCP port; every connection is relayed to the server's unix
socket by two threads, one per direction. What libpq sends (queries, COPY data, protocol
framing) is counted as it passes, so the count is what really travelled, not an estimate.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

_BUFFER = 1024 * 1024


def forwarded_uri(uri: str, port: int) -> str:
    """``uri`` (a ``pgmodels://`` URI over a unix socket) pointed at a :class:`Forwarder` on ``port``."""
    from psycopg.conninfo import conninfo_to_dict

    from mlflow_pgmodels._pg.uri import to_conninfo

    params = conninfo_to_dict(to_conninfo(uri))
    return f"pgmodels://{params.get('user', 'postgres')}@127.0.0.1:{port}/{params['dbname']}?sslmode=disable"


def server_socket(uri: str) -> str:
    """The unix socket file a ``pgmodels://`` URI with ``host=<dir>&port=<n>`` connects to."""
    from psycopg.conninfo import conninfo_to_dict

    from mlflow_pgmodels._pg.uri import to_conninfo

    params = conninfo_to_dict(to_conninfo(uri))
    return f"{params['host']}/.s.PGSQL.{params.get('port', 5432)}"


class Forwarder:
    """Listens on 127.0.0.1:``port`` and relays each connection to the unix socket ``target``.

    ``sent`` counts the bytes clients sent to the server, ``received`` those the server sent back,
    ``turns`` the round trips: the times a client spoke again after the server had answered it.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.sent = 0
        self.received = 0
        self.turns = 0
        self._answered: dict[socket.socket, bool] = {}  # client socket -> the server spoke last
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "Forwarder":
        self._accepting.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def reset(self) -> tuple[int, int]:
        """Start counting from zero; the counts until now (sent, received)."""
        with self._lock:
            counts = (self.sent, self.received)
            self.sent = self.received = self.turns = 0
        return counts

    def close(self) -> None:
        """Stop listening and cut every relayed connection."""
        self._listener.close()
        for sock in list(self._open):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.target)
            self._open += [client, server]
            self._answered[client] = True
            for src, dst, upstream in ((client, server, True), (server, client, False)):
                thread = threading.Thread(target=self._pump, args=(src, dst, upstream, client), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool, client: socket.socket) -> None:
        try:
            while data := src.recv(_BUFFER):
                # counted before it is passed on: once a side has the bytes, they are in the count
                with self._lock:
                    if upstream:
                        self.sent += len(data)
                        self.turns += self._answered[client]
                    else:
                        self.received += len(data)
                    self._answered[client] = not upstream
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
