"""Hostile servers for the security tests: endless bodies, endless headers, and TLS origins."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from fixtures_net import Site


class RawServer:
    """A loopback TCP server that answers every connection with ``talk(sock)`` in a thread.

    ``sent`` counts the bytes ``talk`` reported through ``self.count``.
    """

    def __init__(self, talk: Callable[[RawServer, socket.socket], None]) -> None:
        self._talk = talk
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.stop_event = threading.Event()
        self.sent = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def count(self, n: int) -> None:
        with self._lock:
            self.sent += n

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/img.raw"

    def _accept(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            conn.recv(65536)  # the request
            self._talk(self, conn)
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_event.set()
        self._sock.close()
        self._thread.join(timeout=5)


def endless_body(server: RawServer, conn: socket.socket) -> None:
    """HTTP/1.0 200 without Content-Length, then bytes until the client goes away."""
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
    chunk = b"Z" * 65536
    while not server.stop_event.is_set():
        conn.sendall(chunk)
        server.count(len(chunk))


def endless_headers(server: RawServer, conn: socket.socket) -> None:
    """A status line, then header lines that never end."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    while not server.stop_event.is_set():
        conn.sendall(line)
        server.count(len(line))


class TLSOrigin(Site):
    """An HTTPS origin on 127.0.0.1 serving ``data`` at /img.raw with a given server context."""

    def __init__(self, data: bytes, context: ssl.SSLContext) -> None:
        super().__init__({"/img.raw": data}, context=context)

    @property
    def url(self) -> str:
        return self.base + "/img.raw"


def dripping_headers(server: RawServer, conn: socket.socket) -> None:
    """A status line, then one header byte every 0.2 s: no read ever times out."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while not server.stop_event.wait(0.2):
        conn.sendall(b"a")
        server.count(1)
