"""What one origin has seen (connections, requests, body bytes) and the schedule of its shared
uplink: the counters tests assert on, kept apart from what the origin serves."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from locpick._demo.faults import RequestRecord


class Traffic:
    """Thread-safe counters of one origin plus its open connections (dropped when it stops)."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._bytes_sent = 0
        self._requests: list[RequestRecord] = []
        self._n_requests = 0
        self._connections = 0
        self._uplink_free = 0.0

    @property
    def bytes_sent(self) -> int:
        with self._lock:
            return self._bytes_sent

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def reset(self) -> None:
        """Zero bytes_sent, requests, connections and the request count (fail_first_n)."""
        with self._lock:
            self._bytes_sent = 0
            self._requests = []
            self._n_requests = 0
            self._connections = 0

    def count_request(self) -> int:
        """Number of requests before this one (since start or reset)."""
        with self._lock:
            n = self._n_requests
            self._n_requests += 1
            return n

    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._requests.append(rec)

    def add_sent(self, n: int) -> None:
        with self._lock:
            self._bytes_sent += n

    def uplink_turn(self, n: int, rate: float) -> float:
        """Reserve the shared uplink for ``n`` bytes; returns seconds to wait for the turn."""
        with self._lock:
            now = time.monotonic()
            free = max(self._uplink_free, now - 0.02)
            self._uplink_free = free + n / rate
            return max(0.0, free - now)

    def register(self, sock: socket.socket) -> None:
        """Count and hold a new connection; one arriving while the origin stops is dropped."""
        with self._lock:
            self._connections += 1
            self._conns.add(sock)
            stopping = self._stop.is_set()
        if stopping:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)

    def stopping(self) -> list[socket.socket]:
        """Set the stop event and return the open connections, atomically with ``register``."""
        with self._lock:
            self._stop.set()
            return list(self._conns)
